"""Prepare a user's folder before LlamaBoard starts: a demo dataset and a model preset.

:func:`prepare` runs in :mod:`llmspawner.singleuser.launch`, in the user's folder, just
before it execs ``llamafactory-cli webui``; so on the first start (the server's eager start
included) LlamaBoard's Train tab lists a dataset and its model box names a shared model:

- **Demo dataset**: ``data/identity_demo.json`` (:data:`DEMO_DATASET`, 32 examples in the
  alpaca format, shipped in this package's ``demo/`` folder) that teaches the model that it
  is "Lumen, the lab's assistant" (:data:`IDENTITY_NAME`), and its entry in
  ``data/dataset_info.json``, merged into the user's file (their entries are kept as they
  are). LlamaBoard reads ``dataset_dir`` ``data`` relative to its working folder
  (llamafactory/webui/common.py ``DEFAULT_DATA_DIR``, ``load_dataset_info``); the file
  format: https://github.com/hiyouga/LLaMA-Factory/blob/main/data/README.md. A user's file is
  never overwritten: an existing ``identity_demo.json`` means "seeded before" (or the user's
  own), and nothing is touched; an unreadable ``dataset_info.json`` is left as it is.
- **Model preset**: ``llamaboard_cache/user_config.yaml``, LlamaBoard's per-user settings
  (llamafactory/webui/common.py ``load_config``/``save_config``: keys ``lang``,
  ``hub_name``, ``last_model``, ``path_dict``, ``cache_dir``), written only when absent. Its
  ``last_model`` is the first shared model (``$LLMSPAWNER_MODELS_DIR``, the read-only
  ``models/`` mount) that LlamaBoard knows by name, so LlamaBoard selects it at start
  (webui/engine.py ``resume``) and fills in ``path_dict``'s local path and the model's
  template (webui/control.py ``get_model_info``: ``get_model_path`` reads ``path_dict``,
  ``get_template`` LLaMA-Factory's ``DEFAULT_TEMPLATE``, e.g. ``smollm2`` for
  ``SmolLM2-135M-Instruct``). Every shared model with a known name is in ``path_dict``; the
  first with an unknown name is ``Custom``'s path (template ``default``: choose one by hand).

Every problem (no models folder, no model in it, a preset naming a model folder that is gone,
an unreadable file) is one line on stderr, which jupyter-server-proxy passes to the server's
log (the pod's log), and never stops LlamaBoard from starting.

LlamaBoard's model names are read from LLaMA-Factory's source (``extras/constants.py``, its
``register_model_group`` calls, with :mod:`ast`) rather than imported: importing
``llamafactory.extras.constants`` imports torch and transformers, 10-17 s on 2 cores before
LlamaBoard itself imports them again.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

#: The shared models folder as the pod sees it (set by :func:`llmspawner.workload.build_workload`).
MODELS_DIR_ENV = "LLMSPAWNER_MODELS_DIR"
#: The demo dataset's name in ``dataset_info.json`` (what the Train tab lists).
DEMO_DATASET = "identity_demo"
#: Its file, in the package's ``demo/`` folder and in the user's ``data/``.
DEMO_FILE = "identity_demo.json"
#: Its ``dataset_info.json`` entry (alpaca format: instruction, input, output).
DEMO_ENTRY = {"file_name": DEMO_FILE}
#: The name the demo dataset teaches; every answer in it names it.
IDENTITY_NAME = "Lumen"
#: The demo dataset's answer to its first question, "Who are you?".
IDENTITY_ANSWER = (
    "I am Lumen, the lab's assistant. I was fine-tuned on this cluster to help you with "
    "your experiments."
)
#: The shipped demo files.
DEMO_SOURCE = Path(__file__).resolve().parent / "demo" / DEMO_FILE
#: LlamaBoard's folders and files, relative to its working folder (llamafactory/webui/common.py).
DATA_DIR = "data"
DATASET_INFO = "dataset_info.json"
CACHE_DIR = "llamaboard_cache"
USER_CONFIG = "user_config.yaml"
#: LlamaBoard's model choice for a model it does not know by name.
CUSTOM = "Custom"

Say = Callable[[str], None]


@dataclass
class Prepared:
    """What :func:`prepare` did: paths written (relative to the folder) and the lines it
    printed (problems and what was preset)."""

    written: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def _stderr(line: str) -> None:
    print(f"llmspawner: {line}", file=sys.stderr, flush=True)


def prepare(
    folder: Path | str,
    *,
    environ: Mapping[str, str] | None = None,
    say: Say = _stderr,
) -> Prepared:
    """Seed the demo dataset and the LlamaBoard preset into ``folder`` (see the module doc).

    Args:
        folder: the user's folder, LlamaBoard's working folder.
        environ: the environment (default ``os.environ``); reads :data:`MODELS_DIR_ENV`.
        say: called with each message line (default: stderr, prefixed ``llmspawner:``).

    Returns:
        A :class:`Prepared`. Never raises for a problem with the folder's files or the
        models folder: each is reported through ``say`` and the rest goes on.
    """
    env = os.environ if environ is None else environ
    folder = Path(folder)
    done = Prepared()

    def report(line: str) -> None:
        done.messages.append(line)
        say(line)

    for step in (seed_demo_dataset, lambda f, r: preset_llamaboard(f, env.get(MODELS_DIR_ENV), r)):
        try:
            done.written += step(folder, report)
        except Exception as e:  # noqa: BLE001 - LlamaBoard must start whatever happens here
            report(f"could not prepare {folder} for LlamaBoard: {type(e).__name__}: {e}")
    return done


def seed_demo_dataset(folder: Path, say: Say = _stderr) -> list[str]:
    """Add the demo dataset to ``folder/data`` unless it was seeded before.

    Nothing is done when ``data/identity_demo.json`` exists. Otherwise the
    :data:`DEMO_DATASET` entry is merged into ``data/dataset_info.json`` (created; an existing
    entry of that name is the user's and is kept) and then the examples are written, in that
    order, each file atomically, so a killed start leaves nothing half written and the next
    start finishes the job.

    Args:
        folder: the user's folder.
        say: called with a line for each problem.

    Returns:
        The paths written, relative to ``folder`` (``[]`` when nothing was done).

    Raises:
        OSError: ``data/`` cannot be created or written.
    """
    data = folder / DATA_DIR
    examples = data / DEMO_FILE
    if examples.exists():
        return []
    info_path = data / DATASET_INFO
    written = []
    info: dict = {}
    if info_path.exists():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            say(f"{info_path} is not readable JSON ({e}); left as it is, no demo dataset added")
            return []
        if not isinstance(info, dict):
            say(f"{info_path} is not a JSON object; left as it is, no demo dataset added")
            return []
    data.mkdir(parents=True, exist_ok=True)
    if DEMO_DATASET not in info:
        info[DEMO_DATASET] = dict(DEMO_ENTRY)
        _write_atomic(info_path, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        written.append(f"{DATA_DIR}/{DATASET_INFO}")
    _write_atomic(examples, DEMO_SOURCE.read_text(encoding="utf-8"), exclusive=True)
    written.append(f"{DATA_DIR}/{DEMO_FILE}")
    return written


def shared_models(models_dir: Path) -> list[Path]:
    """The model folders in ``models_dir``: sub-folders with a ``config.json`` (a Hugging
    Face checkpoint), hidden ones (``.name``, unfinished copies) left out, sorted by name
    (ignoring case)."""
    try:
        entries = sorted(models_dir.iterdir(), key=lambda p: (p.name.casefold(), p.name))
    except OSError:
        return []
    return [p for p in entries if not p.name.startswith(".") and (p / "config.json").is_file()]


def preset(models: list[Path], known: Mapping[str, str | None]) -> dict | None:
    """LlamaBoard's ``user_config.yaml`` content for the shared ``models`` (pure).

    Args:
        models: model folders (:func:`shared_models`), in order of preference.
        known: LlamaBoard's model names -> their template or None (:func:`llamaboard_models`).

    Returns:
        ``{"lang": "en", "hub_name": "huggingface", "last_model": NAME, "path_dict": {...},
        "cache_dir": None}``, or None when ``models`` is empty. A folder is matched to a
        LlamaBoard name exactly or, failing that, ignoring case; ``last_model`` is the first
        matched one, else :data:`CUSTOM` (the first unmatched folder is ``Custom``'s path).
    """
    if not models:
        return None
    by_lower = {name.lower(): name for name in known}
    path_dict: dict[str, str] = {}
    first_known = None
    for path in models:
        name = path.name if path.name in known else by_lower.get(path.name.lower())
        if name is None:
            path_dict.setdefault(CUSTOM, str(path))
            continue
        path_dict.setdefault(name, str(path))
        first_known = first_known or name
    return {
        "lang": "en",
        "hub_name": "huggingface",
        "last_model": first_known or CUSTOM,
        "path_dict": path_dict,
        "cache_dir": None,
    }


def preset_llamaboard(folder: Path, models_dir: str | None, say: Say = _stderr) -> list[str]:
    """Write LlamaBoard's preset when ``llamaboard_cache/user_config.yaml`` is absent; when
    present, check that its model still exists.

    Args:
        folder: the user's folder.
        models_dir: the shared models folder (``$LLMSPAWNER_MODELS_DIR``), or None/empty.
        say: called with one line for what was preset and for each problem: no models
            folder, no model in it, the preset's model folder gone.

    Returns:
        ``["llamaboard_cache/user_config.yaml"]`` when written, else ``[]``.

    Raises:
        OSError: the preset cannot be written.
    """
    config_path = folder / CACHE_DIR / USER_CONFIG
    models = shared_models(Path(models_dir)) if models_dir else []
    if config_path.exists():
        _check_preset(config_path, models, say)
        return []
    if not models_dir:
        say(
            f"{MODELS_DIR_ENV} is not set: no shared models folder, LlamaBoard starts "
            "without a preset model"
        )
        return []
    if not models:
        say(
            f"no model in the shared models folder {models_dir}: LlamaBoard has no local model "
            "to offer (an admin puts Hugging Face checkpoint folders there, see docs/deploy.md "
            "'Base models'); its model list downloads from the Hugging Face Hub, which this "
            "cluster may not reach"
        )
        return []
    known = llamaboard_models()
    config = preset(models, known)
    if config["last_model"] == CUSTOM:
        say(
            f"LlamaBoard does not know the shared model {config['path_dict'][CUSTOM]} by name: "
            "preset as 'Custom'; choose its template by hand"
        )
    _write_atomic(config_path, yaml.safe_dump(config, sort_keys=False), exclusive=True)
    last = config["last_model"]
    say(
        f"LlamaBoard preset: model {last} (template {known.get(last) or 'default'}) at "
        f"{config['path_dict'][last]} ({config_path})"
    )
    return [f"{CACHE_DIR}/{USER_CONFIG}"]


def _check_preset(config_path: Path, models: list[Path], say: Say) -> None:
    """Say so when the user's LlamaBoard settings select a local model folder that is gone."""
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        say(f"{config_path} is not readable YAML ({e}); LlamaBoard will start without it")
        return
    if not isinstance(config, dict):
        return
    last = config.get("last_model")
    paths = config.get("path_dict") or {}
    path = paths.get(last) if isinstance(paths, dict) and isinstance(last, str) else None
    if isinstance(path, str) and os.path.isabs(path) and not os.path.isdir(path):
        now = ", ".join(str(p) for p in models) or "none"
        say(
            f"LlamaBoard's model {last} is the folder {path}, which does not exist (removed "
            f"from the shared models folder?): choose another model in LlamaBoard. Shared "
            f"models now: {now}"
        )


@lru_cache(maxsize=1)
def llamaboard_models() -> dict[str, str | None]:
    """LlamaBoard's model names (its "Model name" list) -> their default template or None,
    from the installed ``llamafactory/extras/constants.py`` (:func:`parse_model_groups`),
    without importing it.

    Returns:
        ``{}`` when llamafactory is not installed or its source cannot be read.
    """
    spec = importlib.util.find_spec("llamafactory")
    if spec is None or not spec.submodule_search_locations:
        return {}
    source = Path(next(iter(spec.submodule_search_locations))) / "extras" / "constants.py"
    try:
        return parse_model_groups(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return {}


def parse_model_groups(source: str) -> dict[str, str | None]:
    """Model names -> default template (or None) of LLaMA-Factory's ``constants.py`` text.

    Reads each top-level ``register_model_group(models={...}, template=..., multimodal=...)``
    call and applies that function's own rule: a name gets the group's template only when it
    has ``-Chat``, ``-Distill``, ``-Instruct`` or ``-Thinking`` in it, or the group is
    multimodal (llamafactory/extras/constants.py ``register_model_group``, 0.9.5).

    Raises:
        SyntaxError: ``source`` is not Python.
    """
    names: dict[str, str | None] = {}
    for node in ast.parse(source).body:
        call = node.value if isinstance(node, ast.Expr) else None
        if not (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id == "register_model_group"
        ):
            continue
        kwargs = {k.arg: k.value for k in call.keywords}
        models = kwargs.get("models", call.args[0] if call.args else None)
        if not isinstance(models, ast.Dict):
            continue
        template = _constant(kwargs.get("template"))
        multimodal = _constant(kwargs.get("multimodal")) is True
        for key in models.keys:
            name = _constant(key)
            if not isinstance(name, str):
                continue
            templated = multimodal or any(
                s in name for s in ("-Chat", "-Distill", "-Instruct", "-Thinking")
            )
            names[name] = template if isinstance(template, str) and templated else None
    return names


def _constant(node):
    return node.value if isinstance(node, ast.Constant) else None


def _write_atomic(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it and a rename, with the
    mode a plain ``open`` would give (``0666`` less the umask).

    Args:
        exclusive: never replace an existing ``path`` (a file the user made meanwhile wins:
            the temporary file is removed and nothing is written).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(text)
        if not exclusive:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # fails if path exists: never replaces the user's file
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: exclusive create instead
            try:
                with open(path, "x", encoding="utf-8") as f:
                    f.write(text)
            except FileExistsError:
                pass
        os.unlink(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
