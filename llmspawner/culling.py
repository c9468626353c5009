"""Idle culling per GPU profile: the decision hook for ``jupyterhub-idle-culler``.

The hub runs ``jupyterhub-idle-culler`` as a service (see :func:`culler_service`). Its
``cull_arbiter_hook`` (jupyterhub-idle-culler >= 2,
https://github.com/jupyterhub/jupyterhub-idle-culler#custom-culling-logic) decides per server;
ours applies the ``idle_timeout`` of the server's profile, so a GPU slice is given back after
30 minutes while a CPU server may idle for 8 hours. Profiles without ``idle_timeout`` use the
culler's ``--timeout``.

Why the culler's hook and not jupyter_server's ``shutdown_no_activity_timeout``: the culler
stops servers through the hub, so the pod is deleted and the hub's state stays right, and it
judges by the activity the hub records, which includes what the user's server reports on
purpose (a running training, see :mod:`llmspawner.singleuser.activity`) and leaves out
LlamaBoard's background polling. A server that shuts itself down would only be noticed by the
hub's poll, and jupyter_server's own idea of activity does not see a training run.

Pure except :func:`profile_arbiter`, which reads the platform settings the hub hands to the
culler's process (``LLMSPAWNER_PLATFORM``, :meth:`llmspawner.settings.LLMPlatform.from_env`)
and the profiles through the process-wide cache.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from . import profiles as profiles_mod
from .settings import LLMPlatform

log = logging.getLogger(__name__)

#: The culler's config file: sets ``c.IdleCuller.cull_arbiter_hook`` to :func:`profile_arbiter`.
CULLER_CONFIG_FILE = Path(__file__).with_name("culler_config.py")

#: Scopes jupyterhub-idle-culler needs to cull servers
#: (https://github.com/jupyterhub/jupyterhub-idle-culler#permissions).
CULLER_SCOPES = ("list:users", "read:users:activity", "read:servers", "delete:servers")


def idle_timeout_for(
    profiles: list[profiles_mod.Profile], server: Mapping, default: float
) -> float:
    """Seconds a server may be idle: its profile's ``idle_timeout``, else ``default``.

    Args:
        profiles: the validated profiles.
        server: the hub's server model (``user_options.profile``; missing: default profile).
        default: the culler's ``--timeout`` in seconds.
    """
    slug = (server.get("user_options") or {}).get("profile")
    try:
        profile = profiles_mod.find_profile(profiles, slug)
    except (KeyError, StopIteration):
        return default
    return float(profile.idle_timeout or default)


def should_cull(
    profiles: list[profiles_mod.Profile],
    *,
    inactive: timedelta | None,
    inactive_limit: float,
    server: Mapping,
) -> bool:
    """Whether a server idle for ``inactive`` is past its profile's idle timeout (pure)."""
    if inactive is None:
        return False
    return inactive.total_seconds() >= idle_timeout_for(profiles, server, inactive_limit)


def profile_arbiter(*, inactive, inactive_limit, server, **kwargs) -> bool:
    """``IdleCuller.cull_arbiter_hook``: :func:`should_cull` with the profiles of the
    platform settings the hub gave the culler's process
    (:meth:`~llmspawner.settings.LLMPlatform.from_env`), through the shared profiles cache
    (:meth:`~llmspawner.settings.LLMPlatform.profiles`: re-read within seconds when the files
    change, the last valid set kept on a broken edit). While no valid set was ever loaded,
    every server gets the culler's ``--timeout``.

    Raises:
        llmspawner.settings.SettingError: the settings handed to the process are invalid
            (then nothing is culled by this hook).
    """
    settings = LLMPlatform.from_env()
    try:
        loaded = settings.profiles(log)
    except profiles_mod.ProfileError as e:
        log.warning("idle culler: no valid GPU profiles (%s); using --timeout for all", e)
        loaded = []
    return should_cull(loaded, inactive=inactive, inactive_limit=inactive_limit, server=server)


def culler_service(
    *,
    timeout: int,
    cull_every: int,
    max_age: int = 0,
    cull_users: bool = False,
    environment: Mapping[str, str] | None = None,
    api_url: str | None = None,
) -> tuple[dict, dict]:
    """The ``c.JupyterHub.services`` entry and the role of the idle culler (pure).

    Args:
        timeout: seconds of inactivity after which a server without a profile timeout is
            culled (the culler's ``--timeout``).
        cull_every: seconds between culling passes (``--cull-every``).
        max_age: seconds after which a server is culled even if active; 0: never.
        cull_users: also delete users who have been inactive (needs ``admin:users``).
        environment: variables for the culler's process: the platform settings
            (:meth:`llmspawner.settings.LLMPlatform.to_env`), which its hook reads.
        api_url: the hub's API URL as the culler reaches it (``--url``); default the hub's
            ``$JUPYTERHUB_API_URL``. Under z2jh that names the hub's Service, which a pod may
            not reach through its own network policy, so the chart's culler uses
            ``http://localhost:8081/hub/api`` (z2jh's ``jupyterhub_config.py``).

    Returns:
        ``(service, role)``; the role holds exactly the scopes the culler needs.

    Raises:
        ValueError: for a non-positive ``timeout`` or ``cull_every``, or a negative ``max_age``.
    """
    for name, value, minimum in (
        ("timeout", timeout, 1),
        ("cull_every", cull_every, 1),
        ("max_age", max_age, 0),
    ):
        if not isinstance(value, int) or value < minimum:
            raise ValueError(
                f"idle culler {name} must be a whole number of seconds >= {minimum}, not {value!r}"
            )
    command = [
        sys.executable,
        "-m",
        "jupyterhub_idle_culler",
        f"--timeout={timeout}",
        f"--cull-every={cull_every}",
        f"--max-age={max_age}",
        f"--config={CULLER_CONFIG_FILE}",
    ]
    if cull_users:
        command.append("--cull-users")
    if api_url:
        command.append(f"--url={api_url}")
    service = {"name": "idle-culler", "command": command}
    if environment:
        service["environment"] = dict(environment)
    scopes = [*CULLER_SCOPES, *(["admin:users"] if cull_users else [])]
    role = {
        "name": "idle-culler",
        "description": "Cull idle servers (llmspawner: per-profile idle timeouts)",
        "scopes": scopes,
        "services": ["idle-culler"],
    }
    return service, role
