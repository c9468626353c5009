"""A running training keeps the user's server alive: a Jupyter Server extension.

While a ``llamafactory-cli train`` process runs under the user's Jupyter server (LlamaBoard
starts one as its child when the user clicks "Start"; a terminal may start one too), this
extension marks the server as active every ``LLMSPAWNER_TRAINING_CHECK_INTERVAL`` seconds
(default 30). jupyterhub-singleuser reports the server's activity to the hub
(``JUPYTERHUB_ACTIVITY_INTERVAL``), so the idle culler leaves the server alone until the
training ends, with or without a browser attached. Afterwards normal idle rules apply.

Jupyter Server counts every ``web_app.settings`` key ending in ``_last_activity`` as activity
(``ServerApp.last_activity``, jupyter_server/serverapp.py); the key here is
``llmspawner_training_last_activity``.

Enabled by ``jupyter-config/jupyter_server_config.d/llmspawner.json`` (installed to
``etc/jupyter``), or ``--ServerApp.jpserver_extensions={"llmspawner.singleuser.activity": true}``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone

#: The ``web_app.settings`` key Jupyter Server reads as an activity source.
SETTINGS_KEY = "llmspawner_training_last_activity"
#: Environment variable: seconds between checks for a running training.
INTERVAL_ENV = "LLMSPAWNER_TRAINING_CHECK_INTERVAL"
DEFAULT_INTERVAL = 30.0


def is_training_command(cmdline: Sequence[str]) -> bool:
    """Whether a process command line is a LLaMA-Factory training run (pure).

    Matches ``llamafactory-cli train ...`` (also through ``python .../llamafactory-cli``),
    ``lmf train ...`` and ``python -m llamafactory.cli train ...``, and the ``torchrun``
    workers LLaMA-Factory starts for distributed training (``.../llamafactory/launcher.py``).
    """
    args = list(cmdline)
    names = [os.path.basename(a) for a in args]
    for i, name in enumerate(names):
        if name in ("llamafactory-cli", "lmf") and "train" in args[i + 1 : i + 2]:
            return True
        if (
            name == "llamafactory.cli"
            and i > 0
            and args[i - 1] == "-m"
            and "train" in args[i + 1 :]
        ):
            return True
        if name == "launcher.py" and "llamafactory" in args[i]:
            return True
    return False


def training_processes(root_pid: int) -> list[int]:
    """Process ids of training runs among the descendants of ``root_pid``.

    Returns:
        Sorted pids; empty when none runs (or ``root_pid`` is gone).
    """
    import psutil

    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if is_training_command(child.cmdline()):
                found.append(child.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return sorted(found)


def check_interval(environ) -> float:
    """Seconds between checks: ``LLMSPAWNER_TRAINING_CHECK_INTERVAL`` or 30 (bad values: 30)."""
    try:
        value = float(environ.get(INTERVAL_ENV, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value > 0 else DEFAULT_INTERVAL


def mark_active_if_training(settings: dict, root_pid: int, *, log=None, now=None) -> list[int]:
    """Set ``settings[SETTINGS_KEY]`` to now when a training runs under ``root_pid``.

    Returns:
        The training pids found.
    """
    pids = training_processes(root_pid)
    if pids:
        settings[SETTINGS_KEY] = now or datetime.now(timezone.utc)
        if log is not None:
            log.debug("Training running (pids %s): server marked active", pids)
    return pids


def _jupyter_server_extension_points() -> Iterable[dict]:
    return [{"module": "llmspawner.singleuser.activity"}]


def _load_jupyter_server_extension(serverapp) -> None:
    """Start the periodic check in the server's event loop."""
    from tornado.ioloop import PeriodicCallback

    interval = check_interval(os.environ)
    settings = serverapp.web_app.settings
    pid = os.getpid()

    def check():
        mark_active_if_training(settings, pid, log=serverapp.log)

    callback = PeriodicCallback(check, interval * 1000)
    callback.start()
    settings["llmspawner_training_check"] = callback  # keep a reference
    serverapp.log.info(
        "llmspawner: a running training counts as activity (checked every %s s)", interval
    )
