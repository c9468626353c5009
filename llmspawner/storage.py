"""A user's place on the shared PVC: the one slug function, subPaths, volumes and mounts.

Every user works in their own folder ``users/<slug>`` of one shared PersistentVolumeClaim
(default ``llm-storage``) and sees only that folder, mounted at ``/storage/users/<slug>``, plus
the shared base models, read-only, at ``/storage/models``. The user's workload
(:func:`llmspawner.workload.build_workload`), from which both the user's server and the batch
queue's Jobs are built, takes its volumes, mounts and owner init container from here, so both
see the same folder as the same user.

All functions are pure: no I/O, no mutation of their arguments.
"""

from __future__ import annotations

import importlib.util
import os
import posixpath
import sys
from dataclasses import dataclass


def _load_kubespawner_slugs():
    """Return kubespawner's ``slugs`` module without importing the ``kubespawner`` package.

    ``import kubespawner.slugs`` runs ``kubespawner/__init__.py``, which imports the whole
    spawner (jupyterhub, tornado, kubernetes_asyncio: about 6 s of CPU on a loaded 2-core
    machine). ``llmspawner queue submit`` in a user's pod and the queue's config-check worker
    need only the slug rules, which ``kubespawner/slugs.py`` holds with no import but the
    standard library and ``escapism``. So the rules stay kubespawner's own code (one place per
    rule): where the package is already imported (the hub) its module is used; otherwise the
    same file is loaded on its own, as ``llmspawner._kubespawner_slugs``.
    Source: https://github.com/jupyterhub/kubespawner/blob/main/kubespawner/slugs.py

    Returns:
        The module (``safe_slug``, ``is_valid_object_name``, ...).

    Raises:
        ImportError: naming kubespawner, if it is not installed.
    """
    loaded = sys.modules.get("kubespawner.slugs")
    if loaded is not None:
        return loaded
    name = "llmspawner._kubespawner_slugs"
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec("kubespawner")  # finds, does not import, a top-level package
    locations = list(package.submodule_search_locations or []) if package else []
    if not locations:
        raise ImportError(
            "llmspawner.storage needs kubespawner (its slugs module)", name="kubespawner"
        )
    spec = importlib.util.spec_from_file_location(name, os.path.join(locations[0], "slugs.py"))
    if spec is None or spec.loader is None:  # pragma: no cover - an installed kubespawner has it
        raise ImportError("kubespawner has no slugs.py", name="kubespawner")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


_slugs = _load_kubespawner_slugs()
safe_slug = _slugs.safe_slug
is_valid_object_name = _slugs.is_valid_object_name

#: Where the shared PVC's folders appear inside a pod.
STORAGE_ROOT = "/storage"
#: Folder (relative to the PVC root) that holds one sub-folder per user.
USERS_DIR = "users"
#: Folder (relative to the PVC root) with base models shared read-only by everyone.
MODELS_DIR = "models"
#: Name of the pod volume that refers to the shared PVC.
VOLUME_NAME = "llm-storage"


def user_slug(username: str) -> str:
    """Return the Kubernetes-safe, stable slug of a JupyterHub username.

    This is the only place where a user's name becomes a name in Kubernetes (folder, label
    value, object-name part). It is kubespawner's ``safe_slug`` (the ``slug_scheme="safe"``
    of kubespawner >= 7): a name that already is a valid DNS-1123 label (lower-case
    letters, digits and ``-``, starting with a letter, at most 63 characters, no ``--``) is
    kept as it is; any other name is lower-cased, stripped to ``[a-z0-9-]`` and given a
    ``---<8 hex digits of sha256>`` suffix, so that two different names never share a slug.
    See https://jupyterhub-kubespawner.readthedocs.io/en/latest/templates.html#safe-scheme

    Args:
        username: the hub's (already normalised) username, any Unicode string.

    Returns:
        A valid DNS-1123 label (also a valid label value), never empty, ``.`` or ``..``.
        The value for a given name never changes between releases (tests pin it).

    Raises:
        ValueError: if ``username`` is empty.
    """
    if not username:
        raise ValueError("username must not be empty")
    slug = safe_slug(username)
    # kubespawner guarantees this; a broken upgrade must never let a bad name through.
    if not is_valid_object_name(slug):  # pragma: no cover - guarded by pinned tests
        raise ValueError(f"slug {slug!r} of {username!r} is not a DNS-1123 label")
    return slug


def user_subpath(username: str) -> str:
    """Return the user's folder relative to the root of the shared PVC, ``users/<slug>``."""
    return posixpath.join(USERS_DIR, user_slug(username))


def user_home(username: str) -> str:
    """Return the user's folder as seen inside a pod, ``/storage/users/<slug>``.

    It is the working directory and ``HOME`` of the user's server and of the user's Jobs.
    """
    return posixpath.join(STORAGE_ROOT, user_subpath(username))


def models_path() -> str:
    """Return where the shared base models appear inside a pod, ``/storage/models``."""
    return posixpath.join(STORAGE_ROOT, MODELS_DIR)


@dataclass(frozen=True)
class UserStorage:
    """What a pod needs to see one user's folder on the shared PVC.

    Attributes:
        volumes: Kubernetes ``Volume`` dicts (one, referring to the shared PVC).
        volume_mounts: ``VolumeMount`` dicts: the user's subPath read-write at
            :func:`user_home`, and ``models/`` read-only at :func:`models_path`.
        home: the user's folder inside the pod (working directory and ``HOME``).
    """

    volumes: list[dict]
    volume_mounts: list[dict]
    home: str


def build_user_storage(*, username: str, claim_name: str) -> UserStorage:
    """Build the volumes and mounts that show one user their own folder of the shared PVC.

    The PVC is mounted twice through ``subPath`` (never whole), so the user's processes cannot
    reach another user's folder: https://kubernetes.io/docs/concepts/storage/volumes/#using-subpath

    Args:
        username: the hub's normalised username.
        claim_name: name of the shared PersistentVolumeClaim (ReadWriteMany), e.g. ``llm-storage``.

    Returns:
        A :class:`UserStorage` with fresh lists (safe to extend).

    Raises:
        ValueError: if ``claim_name`` is not a valid Kubernetes object name, or ``username`` is
            empty.
    """
    if not is_valid_object_name(claim_name):
        raise ValueError(
            f"claim_name {claim_name!r} is not a valid PVC name (a DNS-1123 label: lower-case "
            "letters, digits and '-', starting with a letter, at most 63 characters)"
        )
    home = user_home(username)
    return UserStorage(
        volumes=[{"name": VOLUME_NAME, "persistentVolumeClaim": {"claimName": claim_name}}],
        volume_mounts=[
            {"name": VOLUME_NAME, "mountPath": home, "subPath": user_subpath(username)},
            {
                "name": VOLUME_NAME,
                "mountPath": models_path(),
                "subPath": MODELS_DIR,
                "readOnly": True,
            },
        ],
        home=home,
    )


#: Name of the init container that gives the user's folder to the user.
OWNER_INIT_CONTAINER = "llm-storage-owner"
_OWNER_MOUNT = "/mnt/user-folder"


def build_owner_init_container(*, username: str, image: str, uid: int, gid: int) -> dict:
    """Build the init container that makes the user's folder belong to ``uid:gid``.

    The kubelet creates a missing ``subPath`` folder itself, owned by root and mode 0755,
    whatever the pod's ``runAsUser``/``fsGroup``
    (https://github.com/kubernetes/kubernetes/issues/41638), so on a user's first start their
    home would not be writable. This container mounts only that folder and, when its owner
    is not yet ``uid:gid``, changes it (not recursively: the user's files are never touched).
    It runs as root with only the ``CHOWN`` capability. On NFS with ``root_squash`` the
    change is refused and the pod stops with chown's message in this container's log.

    Args:
        username: the hub's normalised username.
        image: an image with ``sh``, ``stat`` and ``chown`` (the user's own image is already
            pulled on the node).
        uid, gid: numeric owner and group of the user's processes (z2jh's ``singleuser.uid``
            and ``fsGid``: 1000 and 100).

    Returns:
        A container dict for ``spec.initContainers``.

    Raises:
        ValueError: if ``uid`` or ``gid`` is not a whole number >= 0.
    """
    for name, value in (("uid", uid), ("gid", gid)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a whole number >= 0, not {value!r}")
    owner = f"{uid}:{gid}"
    return {
        "name": OWNER_INIT_CONTAINER,
        "image": image,
        "command": [
            "sh",
            "-c",
            'test "$(stat -c %u:%g "$1")" = "$2" || chown "$2" "$1"',
            "sh",
            _OWNER_MOUNT,
            owner,
        ],
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]},
        },
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        "volumeMounts": [
            {"name": VOLUME_NAME, "mountPath": _OWNER_MOUNT, "subPath": user_subpath(username)}
        ],
    }
