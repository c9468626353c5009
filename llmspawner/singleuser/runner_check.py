"""Does the installed LlamaBoard still start trainings the way llmspawner's shim relies on?

:mod:`llmspawner.training` keeps LlamaBoard's trainings from stalling on their stderr pipe
(https://github.com/hiyouga/LlamaFactory/issues/10180) by being the ``llamafactory-cli`` that
LlamaBoard finds first on its ``PATH``. That holds only while LLaMA-Factory's
``llamafactory/webui/runner.py`` (0.9.5) does what it does today:

1. ``Runner._launch`` starts the training as ``Popen(["llamafactory-cli", "train",
   save_cmd(args)], env=env, stderr=PIPE, text=True)``: the *name* ``llamafactory-cli``
   (looked up on ``PATH``, so the shim runs), ``train`` first, the config file third (the shim
   reads its ``output_dir`` for ``train.log``);
2. ``env`` is a copy of ``os.environ`` (``deepcopy(os.environ)``), so the shim's ``PATH``
   reaches it;
3. no ``stdout=`` (the training's stdout is LlamaBoard's own, the pod's log; the shim makes
   only stderr safe);
4. ``Runner.monitor`` shows progress and the loss curve from ``get_trainer_info`` (the files
   ``running_log.txt`` and ``trainer_log.jsonl`` of the output folder,
   ``llamafactory/webui/control.py``), not from the pipe, so a page that comes back shows the
   run.

:func:`runner_problems` reads the source with :mod:`ast` (never imports it: importing the
runner imports torch, transformers and gradio) and :func:`check` turns problems into one
:class:`RunnerChanged` message, which :func:`llmspawner.singleuser.llamaboard._command` raises
at LlamaBoard's start (the user sees it in the page, the admin in the server's log).
``LLMSPAWNER_LLAMABOARD_RUNNER_CHECK=warn`` makes it a warning instead (a newer LLaMA-Factory
that fixed the bug upstream, PR #10584, checked by hand).
"""

from __future__ import annotations

import ast
import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

#: The environment variable that turns a failed check into a warning (``warn``).
CHECK_ENV = "LLMSPAWNER_LLAMABOARD_RUNNER_CHECK"
#: The LLaMA-Factory release the check was written against.
CHECKED_VERSION = "0.9.5"
#: The files of the output folder LlamaBoard's page reads (llamafactory/extras/constants.py).
PROGRESS_FILES = {"RUNNING_LOG": "running_log.txt", "TRAINER_LOG": "trainer_log.jsonl"}


class RunnerChanged(RuntimeError):
    """The installed LlamaBoard no longer starts trainings as the shim relies on."""


def _method(tree: ast.Module, cls: str, name: str) -> ast.FunctionDef | None:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == name:
                    return item
    return None


def _calls(node: ast.AST, name: str) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(node)
        if isinstance(n, ast.Call)
        and (
            (isinstance(n.func, ast.Name) and n.func.id == name)
            or (isinstance(n.func, ast.Attribute) and n.func.attr == name)
        )
    ]


def _mentions_environ(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Attribute)
        and n.attr == "environ"
        and isinstance(n.value, ast.Name)
        and n.value.id == "os"
        for n in ast.walk(node)
    )


def runner_source_problems(runner: str, constants: str | None = None) -> list[str]:
    """What in ``runner.py`` (and ``extras/constants.py``) breaks the shim's assumptions
    (pure; the numbered rules of the module docstring).

    Args:
        runner: the text of ``llamafactory/webui/runner.py``.
        constants: the text of ``llamafactory/extras/constants.py``; ``None``: not checked.

    Returns:
        One sentence per problem; ``[]`` when every rule holds.
    """
    try:
        tree = ast.parse(runner)
    except SyntaxError as e:
        return [f"runner.py is not Python this interpreter reads ({e})"]
    problems = []
    launch = _method(tree, "Runner", "_launch")
    if launch is None:
        return ["Runner._launch is gone: LlamaBoard starts trainings some other way"]
    popens = _calls(launch, "Popen")
    if len(popens) != 1:
        return [f"Runner._launch makes {len(popens)} Popen calls, not one"]
    call = popens[0]
    argv = call.args[0] if call.args else None
    head = (
        [e.value if isinstance(e, ast.Constant) else None for e in argv.elts[:2]]
        if isinstance(argv, ast.List)
        else None
    )
    if head != ["llamafactory-cli", "train"] or len(argv.elts) != 3:
        problems.append(
            "Runner._launch no longer runs ['llamafactory-cli', 'train', <config>] by name "
            "(the shim first on PATH is not what runs)"
        )
    keywords = {k.arg: k.value for k in call.keywords}
    if "stdout" in keywords:
        problems.append(
            "Runner._launch now passes stdout= to Popen (the shim keeps only stderr from blocking)"
        )
    if "shell" in keywords:
        problems.append("Runner._launch now passes shell= to Popen")
    env = keywords.get("env")
    if env is not None:
        sources = [
            n.value
            for n in ast.walk(launch)
            if isinstance(n, ast.Assign)
            and isinstance(env, ast.Name)
            and any(isinstance(t, ast.Name) and t.id == env.id for t in n.targets)
        ]
        if not any(_mentions_environ(v) for v in sources) and not _mentions_environ(env):
            problems.append(
                "Runner._launch's env= is no longer a copy of os.environ (the shim's PATH "
                "would not reach the training)"
            )
    monitor = _method(tree, "Runner", "monitor")
    if monitor is None or not _calls(monitor, "get_trainer_info"):
        problems.append(
            "Runner.monitor no longer reads progress with get_trainer_info (the output "
            "folder's files): a page that comes back may not show the run"
        )
    if constants is not None:
        values = {}
        for node in ast.parse(constants).body:
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant)
            ):
                values[node.targets[0].id] = node.value.value
        for name, expected in PROGRESS_FILES.items():
            if values.get(name) != expected:
                problems.append(
                    f"extras/constants.py's {name} is {values.get(name)!r}, not {expected!r}"
                )
    return problems


def installed_sources() -> tuple[Path, str, str | None, str | None]:
    """``(runner.py path, its text, constants.py text or None, version or None)`` of the
    installed llamafactory, found without importing its modules (only the package's own
    ``__init__``, which reads its version).

    Raises:
        RunnerChanged: llamafactory is not installed, or its runner cannot be read.
    """
    try:
        spec = importlib.util.find_spec("llamafactory.webui.runner")
    except (ImportError, ValueError) as e:
        raise RunnerChanged(f"llamafactory's web UI cannot be found ({e})") from None
    if spec is None or not spec.origin:
        raise RunnerChanged("llamafactory's web UI (llamafactory.webui.runner) is not installed")
    path = Path(spec.origin)
    try:
        runner = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RunnerChanged(f"cannot read {path}: {e}") from None
    try:
        constants = (path.parent.parent / "extras" / "constants.py").read_text(encoding="utf-8")
    except OSError:
        constants = None
    try:
        from importlib.metadata import version

        installed = version("llamafactory")
    except Exception:  # noqa: BLE001 - the version is only part of the message
        installed = None
    return path, runner, constants, installed


def check(environ: Mapping[str, str]) -> list[str]:
    """Check the installed LlamaBoard's runner (I/O: reads its source).

    Args:
        environ: the server's environment; :data:`CHECK_ENV` ``warn`` logs instead of raising.

    Returns:
        The problems found (``[]`` when all is well; only with ``warn`` can it be non-empty).

    Raises:
        RunnerChanged: with one message naming the file, the installed and checked versions,
            each problem, and what to do.
    """
    try:
        path, runner, constants, installed = installed_sources()
        problems = runner_source_problems(runner, constants)
        where = f"{path} (llamafactory {installed or 'of unknown version'})"
    except RunnerChanged as e:
        problems, where = [str(e)], "llamafactory"
    if not problems:
        return []
    message = (
        f"LlamaBoard does not start trainings the way llmspawner's training shim relies on "
        f"(checked against llamafactory {CHECKED_VERSION}): {where}: "
        + "; ".join(problems)
        + ". Without the shim a training whose page is closed can stall once its stderr pipe "
        "is full (hiyouga/LlamaFactory#10180). Install llamafactory=="
        f"{CHECKED_VERSION} in the user image, or update llmspawner; {CHECK_ENV}=warn starts "
        "LlamaBoard anyway."
    )
    if environ.get(CHECK_ENV, "").strip().lower() == "warn":
        log.warning("%s", message)
        return problems
    raise RunnerChanged(message)
