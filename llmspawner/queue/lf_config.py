"""Validate a user's LLaMA-Factory training config and prepare it to run as a queue job.

A job runs ``llamafactory-cli train config.yaml`` in a pod that sees only the user's own folder
(``/storage/users/<slug>``, read-write) and the shared base models (``/storage/models``,
read-only); see :mod:`llmspawner.storage`. That pod is what keeps users apart; this module
refuses, when the job is submitted, every config that could only fail or surprise later, and
lists all its problems at once, each naming the field and what is allowed.

The rules (decisions are marked *decided*):

- **Keys** must be arguments of ``llamafactory-cli train``: LLaMA-Factory parses the config with
  ``HfArgumentParser.parse_dict`` and refuses other keys ("Some specified arguments are not used
  by the HfArgumentParser", ``llamafactory/hparams/parser.py``: ``_parse_args``). The names come
  from a table generated from the installed llamafactory (:mod:`.lf_arguments`, written by
  ``scripts/generate_lf_arguments.py``), so the hub need not import it.
- **stage** is one of LLaMA-Factory's stages except ``ppo`` (*decided*): PPO refuses any logger
  but wandb, tensorboard and trackio ("PPO only accepts wandb, tensorboard, or trackio logger.",
  ``hparams/parser.py`` in ``get_train_args``), and every queue job reports to MLflow.
- **Paths** (:data:`READ_PATH_KEYS`, :data:`WRITE_PATH_KEYS`) are resolved inside the user's
  folder; relative paths are relative to it and ``~`` is it. Models, adapters, datasets and
  other inputs may also be in the shared ``/storage/models`` (read-only); outputs never. Any
  other absolute path, ``~user`` and any ``..`` component are refused. ``output_dir`` is
  required and must be a sub-folder, not the user's folder itself.
- **Only paths, no hub ids** (*decided*): the cluster is often offline, so a job never downloads.
  ``model_name_or_path`` and the other ``*_name_or_path``/model keys (:data:`MODEL_KEYS`) that
  look like a Hugging Face Hub id ``org/name`` (two parts, not starting with ``.``, ``/`` or
  ``~``) are refused with a hint to write ``./org/name`` for a folder of that name; any other
  value is a path. ``dataset_dir: ONLINE`` and ``REMOTE:<repo>`` (hub datasets,
  ``llamafactory/data/parser.py``: ``get_dataset_list``) are refused for the same reason, as are
  ``push_to_hub: true`` and ``reward_model_type: api``.
- **Secrets** (:data:`SECRET_KEYS`: hub tokens, API keys) are refused (*decided*): the config is
  stored in the queue's database, in a ConfigMap and shown with the job.
- **Tracking**: ``report_to`` becomes ``mlflow`` (the pod's ``MLFLOW_*`` environment names the
  user's experiment). ``none`` or no value is replaced; ``tensorboard`` (local files) is kept next
  to it; any other reporter (``wandb``, ``all``, ...) is refused (*decided*: it needs a network
  and an account, and a silent replacement would hide that); ``use_swanlab: true`` likewise.
  ``run_name`` is always the job's name.
- **Resuming** (*decided*): a job whose pod is disrupted, deleted or preempted runs again in the
  same ``output_dir`` (:mod:`llmspawner.queue.control`), and LLaMA-Factory resumes from the
  newest ``checkpoint-*`` folder there unless ``overwrite_output_dir`` is set
  (``hparams/parser.py``, ``get_train_args``: ``resume_from_checkpoint = last_checkpoint`` when
  ``not getattr(training_args, "overwrite_output_dir", False)``). So ``overwrite_output_dir:
  false`` is dropped, and ``true`` (as LLaMA-Factory's own example configs have it) applies to
  the job's first attempt only: the training wrapper drops it when an earlier attempt of the
  same job started in that folder (:func:`llmspawner.training.first_attempt_only`), so a
  requeued attempt resumes. An ``output_dir`` that holds a finished model and no checkpoint
  makes LLaMA-Factory stop with "Output directory already exists and is not empty", which the
  log shows. Checkpoints: ``save_steps`` is set to :data:`DEFAULT_SAVE_STEPS` when the config
  has neither ``save_steps`` nor ``save_strategy`` (transformers' default is 500 steps); a
  ``save_strategy: "no"`` is kept (the job then restarts from scratch after a disruption).
- **do_train** defaults to ``true`` (*decided*): it is the ``train`` command; without it
  LLaMA-Factory's stages load the model and skip training. An explicit ``false`` is kept.
- ``trust_remote_code`` is allowed (*decided*): code can only come from a model folder that
  passed the path rules, and the job's pod runs with exactly the rights of the user's own
  server, where the user can run any code anyway.
- **register_model** (*decided*), the one key that is not LLaMA-Factory's: ``true`` or a name
  asks for the job's adapter to be registered in MLflow's model registry when the training
  succeeds, as a new version of the registered model :func:`registered_model_name`
  (``<user>-adapters``, or ``<user>-<name>``); ``false``/``null`` is dropped. The pod's
  training wrapper (:mod:`llmspawner.training`) takes it out before LLaMA-Factory reads the
  config and registers with the user's own token, so the user owns the model.
- Values must be plain YAML/JSON data (strings, numbers, booleans, null, lists, mappings).
- **Limits** (:mod:`.limits`, the one place): a config's size, its nesting and YAML aliases
  (refused: an alias bomb would blow up when the config is stored as JSON) are checked before
  it is parsed, and answered with :class:`~llmspawner.queue.limits.LimitExceeded` (not
  :class:`ConfigInvalid`); at most :data:`~llmspawner.queue.limits.MAX_LISTED_PROBLEMS`
  problems are listed (and "did you mean" hints computed), the rest counted.

All functions are pure: no I/O, no mutation of their arguments; :func:`check_config` runs
them in the queue's worker process (:func:`llmspawner.queue.limits.off_loop`).
"""

from __future__ import annotations

import difflib
import functools
import json
import posixpath
import re
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import yaml

from . import limits
from .lf_arguments import LLAMAFACTORY_VERSION, STAGES, TRAIN_ARGUMENTS

try:  # imported with this module: kubespawner's import takes seconds, not to be timed in a check
    from .. import storage as _storage
except ImportError:  # the user's image has no kubespawner (see models_path)
    _storage = None


def _storage_module():
    if _storage is None:
        from .. import storage  # raises ImportError naming kubespawner

        return storage
    return _storage


def models_path() -> str:
    """:func:`llmspawner.storage.models_path`. :mod:`llmspawner.storage` needs kubespawner,
    which the user's image, where ``llmspawner queue submit`` turns LlamaBoard's saved
    arguments into a config (with the pod's ``LLMSPAWNER_MODELS_DIR``), does not have: there
    this module imports without it, and only this call would fail."""
    return _storage_module().models_path()


def user_home(username: str) -> str:
    """:func:`llmspawner.storage.user_home` (see :func:`models_path`)."""
    return _storage_module().user_home(username)


#: Stages a queue job may run (LLaMA-Factory's, without ``ppo``; see the module docstring).
ALLOWED_STAGES = tuple(s for s in STAGES if s != "ppo")

#: Inputs: a path inside the user's folder or, read-only, inside ``/storage/models``.
READ_PATH_KEYS = (
    "model_name_or_path",
    "adapter_name_or_path",
    "adapter_folder",
    "dataset_dir",
    "media_dir",
    "ref_model",
    "ref_model_adapters",
    "reward_model",
    "reward_model_adapters",
    "new_special_tokens_config",
    "export_quantization_dataset",
    "kt_weight_path",
    "kt_expert_checkpoint_path",
    "hyper_parallel_args",
    "deepspeed",
    "fsdp_config",
    "accelerator_config",
    "generation_config",
)
#: Outputs (and ``resume_from_checkpoint``): a path inside the user's folder only.
WRITE_PATH_KEYS = (
    "output_dir",
    "logging_dir",
    "cache_dir",
    "tokenized_path",
    "export_dir",
    "offload_folder",
    "profiler_output_dir",
    "swanlab_logdir",
    "resume_from_checkpoint",
)
#: Keys whose value may also be an inline mapping instead of a path to a JSON/YAML file.
MAPPING_OR_PATH_KEYS = ("deepspeed", "fsdp_config", "accelerator_config")
#: Keys that name models; a value shaped like a hub id ``org/name`` is refused.
MODEL_KEYS = ("model_name_or_path", "adapter_name_or_path", "ref_model", "reward_model")
#: Keys holding comma-separated lists of paths (``ModelArguments.__post_init__`` splits them).
COMMA_LIST_KEYS = ("adapter_name_or_path",)
#: Keys that hold secrets; refused with any non-empty value.
SECRET_KEYS = (
    "hf_hub_token",
    "ms_hub_token",
    "om_hub_token",
    "hub_token",
    "swanlab_api_key",
    "swanlab_lark_secret",
    "swanlab_lark_webhook_url",
)
#: Keys a config must have.
REQUIRED_KEYS = ("model_name_or_path", "output_dir")
#: Kept unset so that a requeued job resumes from its last checkpoint (see "Resuming").
OVERWRITE_KEY = "overwrite_output_dir"
#: ``save_steps`` of a config with neither ``save_steps`` nor ``save_strategy``: a requeued
#: job loses at most this many steps (a LoRA checkpoint is small).
DEFAULT_SAVE_STEPS = 100
#: The queue's own key of a config (see the module docstring); not an argument of LLaMA-Factory.
REGISTER_KEY = "register_model"
#: The registered model a ``register_model: true`` job's adapter becomes a version of.
DEFAULT_MODEL_SUFFIX = "adapters"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: Reporters kept next to MLflow (they write local files only).
EXTRA_REPORTERS = ("tensorboard",)

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+$")


class ConfigProblem(NamedTuple):
    """One problem of a training config.

    Attributes:
        field: the config key (``config`` for the whole document).
        message: a sentence saying what is wrong and what is allowed.
    """

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ConfigInvalid(ValueError):
    """A training config has problems; ``str()`` lists them, one per line.

    Attributes:
        problems: the :class:`ConfigProblem` s, in the order of the config's keys, then the
            missing required keys; at most :data:`~llmspawner.queue.limits.MAX_LISTED_PROBLEMS`.
        total: how many problems there are (``len(problems)`` or more).
    """

    def __init__(self, problems: list[ConfigProblem], total: int | None = None):
        self.problems = list(problems)[: limits.MAX_LISTED_PROBLEMS]
        self.total = max(total or 0, len(problems))
        lines = [str(p) for p in self.problems]
        if self.total > len(self.problems):
            lines.append(f"... and {self.total - len(self.problems)} more")
        super().__init__("\n".join(lines))

    def __reduce__(self):  # pickled whole from the checks' worker process
        return ConfigInvalid, (self.problems, self.total)


def parse_config(text: str) -> dict:
    """Parse a training config written as YAML or JSON, within the limits of :mod:`.limits`.

    Args:
        text: the file's contents (JSON is read as JSON when it starts with ``{``).

    Returns:
        A new dict of the config's keys and values, in file order.

    Raises:
        LimitExceeded: larger than ``max_config_bytes``, nested deeper than
            ``max_config_depth``, a YAML alias, an over-long number (checked before parsing).
        ConfigInvalid: with one problem on field ``config`` when the text is not YAML/JSON, is
            empty or is not a mapping.
    """
    try:
        data = limits.load_config_text(text)
    except limits.LimitExceeded:
        raise
    except yaml.YAMLError as e:
        detail = " ".join(str(getattr(e, "problem", None) or e).split())
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            detail += f" (line {mark.line + 1}, column {mark.column + 1})"
        raise ConfigInvalid(
            [ConfigProblem("config", f"is not valid YAML or JSON: {detail}")]
        ) from None
    except RecursionError:  # cannot happen below max_config_depth; be sure anyway
        raise limits.LimitExceeded(
            400,
            f"the training config is nested too deeply; the limit (max_config_depth) is "
            f"{limits.MAX_CONFIG_DEPTH} levels",
            field="config",
            limit="max_config_depth",
        ) from None
    except ValueError as e:  # e.g. not encodable text, or an integer over 4300 digits
        detail = " ".join(str(e).split())[:200]
        raise ConfigInvalid(
            [ConfigProblem("config", f"is not valid YAML or JSON: {detail}")]
        ) from None
    if data is None:
        raise ConfigInvalid(
            [ConfigProblem("config", "is empty; it must be a mapping of LLaMA-Factory arguments")]
        )
    if not isinstance(data, dict):
        raise ConfigInvalid(
            [
                ConfigProblem(
                    "config",
                    f"must be a mapping of LLaMA-Factory arguments (key: value), not {_kind(data)}",
                )
            ]
        )
    return dict(data)


def prepare_config(config: dict, *, username: str, job_name: str) -> dict:
    """Check a parsed training config and return the config the job runs.

    See the module docstring for the rules.

    Args:
        config: the parsed config (see :func:`parse_config`); not modified.
        username: the hub's normalised name of the job's owner (their folder is
            :func:`llmspawner.storage.user_home`).
        job_name: the job's name (:func:`llmspawner.queue.k8s_objects.job_name`), the MLflow
            run's name.

    Returns:
        A new dict, in the config's key order: paths made absolute, ``report_to``,
        ``run_name``, ``do_train`` and (when the config has no checkpoint setting)
        ``save_steps`` set, ``overwrite_output_dir`` kept only when ``true``. It can be
        stored as JSON.

    Raises:
        ConfigInvalid: listing every problem (see :class:`ConfigInvalid`).
    """
    if not isinstance(config, dict):
        raise ConfigInvalid(
            [
                ConfigProblem(
                    "config", f"must be a mapping of LLaMA-Factory arguments, not {_kind(config)}"
                )
            ]
        )
    home = user_home(username)
    problems: list[ConfigProblem] = []
    out: dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str):
            problems.append(ConfigProblem(str(key)[:100], "keys must be strings (argument names)"))
            continue
        message = _check_data(value)
        if key == REGISTER_KEY:
            message, value = _check_register(value, username)
            if message is not None:
                problems.append(ConfigProblem(key, message))
            elif value is not None:
                out[key] = value
            continue
        if message is None:
            # "did you mean" hints (difflib: slow) only for the problems that are listed
            hint = len(problems) < limits.MAX_LISTED_PROBLEMS
            message, value = _check_key(key, value, config, home, hint=hint)
        if message is not None:
            problems.append(ConfigProblem(key, message))
        elif value is not None or key not in SECRET_KEYS:
            out[key] = value
    for key in REQUIRED_KEYS:
        if config.get(key) is None:
            problems.append(ConfigProblem(key, _REQUIRED_HINTS[key].format(home=home)))
    if problems:
        raise ConfigInvalid(problems)
    out["report_to"] = _reporters(config.get("report_to"))
    out["run_name"] = job_name
    if out.get(OVERWRITE_KEY) is not True:
        out.pop(OVERWRITE_KEY, None)
    out.setdefault("do_train", True)
    if "save_steps" not in out and "save_strategy" not in out:
        out["save_steps"] = DEFAULT_SAVE_STEPS
    return out


def check_config_now(config: str | dict, *, username: str, stamp: str | None = None) -> dict:
    """Parse (text) or bound (an object), then check a config; return it prepared.

    The same as :func:`parse_config` then :func:`prepare_config`, with ``run_name`` empty
    and last: the job's name is known only once its row exists (:func:`name_run` sets it).
    LlamaBoard's saved arguments (``llamaboard_config/<name>.yaml``) and its previewed command
    (``llamafactory-cli train --key value ...``) are turned into the training config they stand
    for first (:mod:`.lf_llamaboard`; ``stamp`` names the default output folder
    ``saves/<model>/<method>/queue_<stamp>``), within the same limits.

    Raises:
        LimitExceeded: over a limit of :mod:`.limits` (before any parsing).
        ConfigInvalid: listing the problems.
    """
    from . import lf_llamaboard

    if isinstance(config, str) and lf_llamaboard.looks_like_command(config):
        limits.check_config_size(len(config.encode("utf-8", "surrogatepass")))
        parsed = lf_llamaboard.from_command(config)
        limits.check_config_object(parsed)
    elif isinstance(config, str):
        parsed = parse_config(config)
    else:
        limits.check_config_object(config)
        parsed = config
    if lf_llamaboard.is_llamaboard_args(parsed):
        parsed = lf_llamaboard.from_llamaboard_args(parsed, stamp=stamp)
    prepared = prepare_config(parsed, username=username, job_name="")
    del prepared["run_name"]
    prepared["run_name"] = ""
    return prepared


def check_config_json(config: str | dict, *, username: str, stamp: str | None = None) -> str:
    """:func:`check_config_now` as JSON text (``run_name`` last), for :func:`name_run`."""
    return json.dumps(check_config_now(config, username=username, stamp=stamp))


async def check_config(config: str | dict, *, username: str) -> str:
    """:func:`check_config_json` in the queue's worker process, so the event loop never waits
    on parsing (:func:`llmspawner.queue.limits.off_loop`, within ``check_seconds``).

    Text comes back, not a dict: one object for the service's process to receive, however
    large the config (tens of thousands of objects would make its garbage collector pause
    the event loop, measured up to ~0.4 s).

    Raises:
        LimitExceeded: over a limit (503 ``check_seconds`` when the check ran out of time).
        ConfigInvalid: listing the problems.
    """
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime())  # LlamaBoard's date format
    return await limits.off_loop(
        functools.partial(check_config_json, config, username=username, stamp=stamp)
    )


#: The fields of a submit's JSON body (``POST api/jobs``).
SUBMIT_FIELDS = ("config", "profile", "priority")


class BadBody(ValueError):
    """A submit's body that is not a JSON object; the message is the sentence to answer."""


@dataclass(frozen=True)
class SubmitBody:
    """What :func:`check_submit_body` found in a submit's body (small: it crosses processes).

    Attributes:
        unknown: the first field not in :data:`SUBMIT_FIELDS` (sorted), or ``None``.
        has_config: the body has a ``config``.
        config_ok: that ``config`` is text or an object (the only kinds checked).
        profile: the ``profile`` text; ``None`` when absent or not text.
        priority: the ``priority`` text; ``None`` when absent or not text.
        priority_ok: ``priority`` is absent or text.
        checked: the config prepared as :func:`check_config_json` returns it, or the
            :class:`ConfigInvalid` / :class:`~llmspawner.queue.limits.LimitExceeded` its check
            raised; ``None`` when it was not checked (``config_ok`` false).
    """

    unknown: str | None
    has_config: bool
    config_ok: bool
    profile: str | None
    priority: str | None
    priority_ok: bool
    checked: str | Exception | None

    def prepared(self) -> str:
        """The prepared config text.

        Raises:
            ConfigInvalid, LimitExceeded: what its check raised.
        """
        if isinstance(self.checked, Exception):
            raise self.checked
        if self.checked is None:
            raise ValueError("the config was not checked")
        return self.checked


def check_submit_body(body: bytes, *, username: str, stamp: str | None = None) -> SubmitBody:
    """Decode a submit's JSON body within the limits and check its config: in one call, so
    that a submit costs the service one round trip to its worker process, not two.

    The config is checked whatever the other fields hold (the caller answers their errors
    first, as before); only what the answer needs comes back, never the body's other values.

    Raises:
        LimitExceeded: the body is too large or too deep (:func:`limits.load_json_body`).
        BadBody: the body is not JSON (with the decoder's message, not the body), or not a
            JSON object.
    """
    try:
        data = limits.load_json_body(body)
    except limits.LimitExceeded:
        raise
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError: would pickle the body
        raise BadBody(f"the body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadBody("the body must be a JSON object")
    unknown = sorted(set(data) - set(SUBMIT_FIELDS))
    config = data.get("config")
    config_ok = isinstance(config, str | dict)
    checked = None
    if config_ok:
        try:
            checked = check_config_json(config, username=username, stamp=stamp)
        except (ConfigInvalid, limits.LimitExceeded) as e:
            checked = e
    return SubmitBody(
        unknown=unknown[0] if unknown else None,
        has_config="config" in data,
        config_ok=config_ok,
        profile=profile if isinstance(profile := data.get("profile"), str) else None,
        priority=priority if isinstance(priority := data.get("priority"), str) else None,
        priority_ok=isinstance(data.get("priority", ""), str),
        checked=checked,
    )


async def check_submit(body: bytes, *, username: str) -> SubmitBody:
    """:func:`check_submit_body` in the queue's worker process (one round trip, within
    ``check_seconds``; see :func:`check_config`)."""
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime())  # LlamaBoard's date format
    return await limits.off_loop(
        functools.partial(check_submit_body, body, username=username, stamp=stamp)
    )


_NO_RUN_NAME = '"run_name": ""}'


def name_run(prepared: str, job_name: str) -> str:
    """The JSON text from :func:`check_config` with ``run_name`` set to the job's name."""
    if not prepared.endswith(_NO_RUN_NAME):
        raise ValueError("not a config from check_config (run_name must be last and empty)")
    return prepared[: -len(_NO_RUN_NAME)] + f'"run_name": {json.dumps(job_name)}}}'


_REQUIRED_HINTS = {
    "model_name_or_path": "is required: the folder of the base model, e.g. "
    "/storage/models/<name> (shared) or a folder in {home}/",
    "output_dir": "is required: a folder in {home}/ for the results, e.g. saves/my-run",
}


def _check_key(
    key: str, value: Any, config: dict, home: str, *, hint: bool = True
) -> tuple[str | None, Any]:
    """Return ``(problem message or None, value to run with)`` for one key."""
    if key not in TRAIN_ARGUMENTS:
        close = difflib.get_close_matches(key, TRAIN_ARGUMENTS, n=1) if hint else None
        hint = f"did you mean {close[0]}? " if close else ""
        return (
            (
                f"is not an argument of llamafactory-cli train (LLaMA-Factory "
                f"{LLAMAFACTORY_VERSION}); {hint}see llamafactory-cli train -h for the allowed ones"
            ),
            value,
        )
    if key == OVERWRITE_KEY:
        if value in (None, False):
            return None, None
        if value is True:  # first attempt only (llmspawner.training.first_attempt_only)
            return None, True
        return "must be true or false", value
    if key == "stage":
        allowed = ", ".join(ALLOWED_STAGES)
        if value == "ppo":
            return (
                (
                    "ppo cannot run in the queue: LLaMA-Factory's PPO reports only to wandb, "
                    f"tensorboard or trackio, and queue jobs report to MLflow; allowed: {allowed}"
                ),
                value,
            )
        if value not in ALLOWED_STAGES:
            return f"{value!r} is not a LLaMA-Factory stage; allowed: {allowed}", value
        return None, value
    if key in SECRET_KEYS:
        if value in (None, ""):
            return None, None
        return (
            (
                "must not be set: the config is stored and shown with the job, so it must not hold "
                "tokens or keys (jobs cannot reach the network anyway)"
            ),
            value,
        )
    if key == "report_to":
        return _check_reporters(value), value
    if key == "use_swanlab" and value:
        return "must be false: queue jobs report to MLflow only", value
    if key == "push_to_hub" and value:
        return (
            (
                "must be false: queue jobs cannot reach the Hugging Face Hub; the results stay in "
                "output_dir"
            ),
            value,
        )
    if key == "reward_model_type" and value == "api":
        return (
            "api calls a network service that queue jobs cannot reach; allowed: lora, full",
            value,
        )
    if key == "resume_from_checkpoint" and isinstance(value, bool):
        return None, value
    if key in READ_PATH_KEYS or key in WRITE_PATH_KEYS:
        if value is None:
            return None, value
        if key in MAPPING_OR_PATH_KEYS and isinstance(value, dict):
            return None, value
        if (
            key == "dataset_dir"
            and isinstance(value, str)
            and (value == "ONLINE" or value.startswith("REMOTE:"))
        ):
            return (
                (
                    f"{value!r} loads datasets from the Hugging Face Hub, which queue jobs cannot "
                    f"reach; allowed: a folder with dataset_info.json in {home}/ or "
                    f"{models_path()}/"
                ),
                value,
            )
        return _check_path(key, value, home)
    return None, value


def registered_model_name(username: str, value: bool | str) -> str:
    """The registered model of a job's ``register_model``: ``<user>-adapters`` for ``true``,
    ``<user>-<name>`` for a name (a name already starting with ``<user>-`` is kept)."""
    if value is True:
        return f"{username}-{DEFAULT_MODEL_SUFFIX}"
    name = str(value)
    return name if name.startswith(f"{username}-") else f"{username}-{name}"


def _check_register(value: Any, username: str) -> tuple[str | None, str | None]:
    """``(problem or None, the registered model's name or None)`` of ``register_model``."""
    if value is None or value is False:
        return None, None
    if value is True or (isinstance(value, str) and _MODEL_NAME.match(value)):
        return None, registered_model_name(username, value)
    return (
        (
            f"must be true (the registered model {username}-{DEFAULT_MODEL_SUFFIX}), false, or "
            f"a name of letters, digits, '.', '_' and '-' (up to 100, registered as "
            f"{username}-<name>), not {value!r}"
        ),
        None,
    )


def _check_path(key: str, value: Any, home: str) -> tuple[str | None, Any]:
    read_only_ok = key in READ_PATH_KEYS
    what = "a path (a string)"
    if key in MAPPING_OR_PATH_KEYS:
        what += " or a mapping"
    if not isinstance(value, str) or not value.strip():
        return f"must be {what}, not {value!r}", value
    items = [v.strip() for v in value.split(",")] if key in COMMA_LIST_KEYS else [value]
    resolved = []
    for item in items:
        message, path = _resolve(key, item, home, read_only_ok)
        if message is not None:
            return message, value
        resolved.append(path)
    if key == "output_dir" and resolved[0] == home:
        return (
            (
                f"must be a sub-folder of your folder {home}/, e.g. saves/my-run, not the "
                "folder itself"
            ),
            value,
        )
    return None, ",".join(resolved)


def _resolve(key: str, value: str, home: str, read_only_ok: bool) -> tuple[str | None, str]:
    """Resolve one path; return ``(problem message or None, absolute path)``."""
    models = models_path()
    allowed = f"a path in your folder {home}/ (relative paths are relative to it)"
    if read_only_ok:
        allowed += f" or, read-only, in {models}/"
    if not value:
        return f"must be a path, not an empty item; allowed: {allowed}", value
    if key in MODEL_KEYS and _HUB_ID.match(value):
        return (
            (
                f"{value!r} looks like a Hugging Face Hub id, but queue jobs cannot download "
                f"models; allowed: {allowed} (write ./{value} for a folder of that name in "
                "your folder)"
            ),
            value,
        )
    path = value
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    elif path.startswith("~"):
        return f"{value!r}: ~user paths are not allowed; allowed: {allowed}", value
    if ".." in path.split("/"):
        return f"{value!r} must not contain '..'; allowed: {allowed}", value
    if not path.startswith("/"):
        path = posixpath.join(home, path)
    path = "/" + posixpath.normpath(path).lstrip("/")
    if path == home or path.startswith(home + "/"):
        return None, path
    if path == models or path.startswith(models + "/"):
        if read_only_ok:
            return None, path
        return (
            f"{value!r} is in the shared models folder, which is read-only; allowed: {allowed}",
            value,
        )
    return f"{value!r} is outside your folder; allowed: {allowed}", value


def _check_reporters(value: Any) -> str | None:
    names = value if isinstance(value, list) else [value]
    allowed = f"mlflow, none, {', '.join(EXTRA_REPORTERS)} (jobs always report to MLflow)"
    for name in names:
        if name is None:
            continue
        if not isinstance(name, str):
            return f"must be a reporter name or a list of them, not {value!r}; allowed: {allowed}"
        if name not in ("mlflow", "none", *EXTRA_REPORTERS):
            return f"{name!r} is not available to queue jobs; allowed: {allowed}"
    return None


def _reporters(value: Any) -> str | list[str]:
    names = value if isinstance(value, list) else [value]
    extra = [n for n in EXTRA_REPORTERS if n in names]
    return ["mlflow", *extra] if extra else "mlflow"


def _check_data(value: Any) -> str | None:
    """Return a problem message when ``value`` is not plain JSON data."""
    if value is None or isinstance(value, str | bool | int | float):
        return None
    if isinstance(value, list):
        for item in value:
            message = _check_data(item)
            if message is not None:
                return message
        return None
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                return f"mapping keys must be strings, not {k!r}"
            message = _check_data(item)
            if message is not None:
                return message
        return None
    return (
        "must be plain data (a string, number, boolean, list or mapping), not a "
        f"{type(value).__name__}; quote it to make it a string"
    )


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), f"a {type(value).__name__}"
    )
