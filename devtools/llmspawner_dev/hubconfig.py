"""The hub settings that only the emulated dev cluster needs (never a production hub's).

Applied by ``llmspawner_dev/jupyterhub_config.py`` *before* the repository's
``jupyterhub_config.py``; see there. Until issue 11 these lived in
``llmspawner.hubconfig.configure_dev`` behind ``LLMSPAWNER_DEV=1``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: The repository root (where ``jupyterhub_config.py`` and ``profiles/`` are).
REPO_ROOT = Path(__file__).resolve().parents[2]

#: The uid and gid of the dev stack's servers and Jobs (z2jh's ``singleuser.uid`` and
#: ``fsGid``, the images' jovyan:users).
DEV_UID, DEV_GID = 1000, 100

#: This folder's hub config file, the one ``jupyterhub -f`` is given by the dev stack.
DEV_CONFIG_FILE = Path(__file__).resolve().with_name("jupyterhub_config.py")

#: Environment variable naming the production config the dev config loads after its own.
BASE_CONFIG_ENV = "LLMSPAWNER_DEV_BASE_CONFIG"

#: The spawner of the dev stack (import string, as JupyterHub takes it).
DEV_SPAWNER = "llmspawner_dev.spawner.DevSpawner"


def base_config(env: Mapping[str, str] = os.environ) -> Path:
    """Return the production hub config to load after the dev settings.

    ``env[BASE_CONFIG_ENV]`` when set, else ``<repo>/jupyterhub_config.py``.

    Raises:
        FileNotFoundError: that file does not exist (message names it and the variable).
    """
    path = Path(env.get(BASE_CONFIG_ENV) or REPO_ROOT / "jupyterhub_config.py").resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{BASE_CONFIG_ENV}: the hub config {path} does not exist")
    return path


def _set_default(section, key: str, value) -> None:
    """Set ``section.key`` unless set already (e.g. by a test's config or command line)."""
    if key not in section:
        section[key] = value


def configure_dev(c) -> None:
    """Put the emulated cluster's settings into the traitlets config ``c`` (unset keys only).

    The user's server binds its pod IP (where pods share this machine's network namespace,
    devcluster's host mode, that keeps servers apart:
    :class:`~llmspawner_dev.spawner.DevSpawner`), starts with the same Python environment
    as the hub, and the hub waits long enough for a LlamaBoard-sized start on a CPU.
    """
    _set_default(c.JupyterHub, "spawner_class", DEV_SPAWNER)
    s = c.LLMSpawner
    _set_default(s, "image", "llmspawner/singleuser:dev")
    _set_default(s, "image_pull_policy", "IfNotPresent")
    # The image stands for a local Python environment, whose bin/ the kubelet puts on PATH.
    _set_default(s, "cmd", ["jupyterhub-singleuser"])
    # As z2jh's singleuser.uid/fsGid (and the image's jovyan, gid 100): servers and the
    # queue's Jobs run as uid 1000; the emulated kubelet applies it when it runs as root.
    _set_default(s, "uid", DEV_UID)
    _set_default(s, "gid", DEV_GID)
    _set_default(s, "fs_gid", DEV_GID)
    # No ``--ServerApp.allow_root``: a root kubelet runs servers as DEV_UID (above), one that
    # is not root runs them as its own user; a server as root would be a bug to see.
    _set_default(s, "start_timeout", 300)
    _set_default(s, "http_timeout", 120)
    # A test or a demo needs no grace: the process gets SIGTERM and a second to stop.
    _set_default(s, "delete_grace_period", 1)
    # Nothing in the dev stack reaches the Hugging Face Hub: the models are local
    # (models/SmolLM2-135M-Instruct, llmspawner_dev.models). LLMSPAWNER_HF_OFFLINE=0 allows it.
    if not os.environ.get("LLMSPAWNER_HF_OFFLINE"):
        _set_default(c.LLMPlatform, "hf_offline", True)
