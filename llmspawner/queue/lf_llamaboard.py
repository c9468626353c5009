"""LlamaBoard's saved arguments (and its previewed command) as a training config for the queue.

LlamaBoard's Train tab has two ways to keep a training set up in the browser:

- **Save arguments** writes ``llamaboard_config/<name>.yaml`` in the user's folder (and
  LlamaBoard writes the same as ``llamaboard_config.yaml`` into every run's output folder). It
  is *not* a training config: it is the form's values keyed by LlamaBoard's element ids,
  ``{"top.model_name": "...", "top.finetuning_type": "lora", "train.learning_rate": "5e-5",
  "train.dataset": ["identity_demo"], ...}``, without ``top.lang``, ``top.model_path``,
  ``train.output_dir`` and ``train.config_path`` (``Runner._build_config_dict``), written by
  ``Runner.save_args`` (``llamafactory/webui/runner.py``, LLaMA-Factory 0.9.5).
- **Preview command** shows ``llamafactory-cli train --key value ...`` (``gen_cmd`` in
  ``llamafactory/webui/common.py``) of the arguments a start would run; the same arguments go
  into ``saves/<model>/<method>/<run>/training_args.yaml`` when it starts (``save_cmd``), which
  the queue takes as it is.

:func:`from_llamaboard_args` turns the first into the arguments LlamaBoard would run
(``Runner._parse_train_args``, then ``_clean_cmd``, ported here without importing
llamafactory, which the hub does not have); :func:`from_command` reads the second. Both leave
LlamaBoard's relative paths (``data``, ``saves/...``, ``llamaboard_cache/...``) as they are:
:func:`llmspawner.queue.lf_config.prepare_config` makes every relative path absolute in the
user's folder (LlamaBoard runs there, so they mean the same files), and checks the result with
the queue's rules and limits like any other config.

What the saved arguments lack:

- the model's path: ``model_path`` when given, else the user's LlamaBoard preset
  (``llamaboard_cache/user_config.yaml``'s ``path_dict``, passed as ``user_config``; the CLI
  reads it in the user's server), else ``/storage/models/<model name>`` (the shared models
  folder, where the platform's models are named like LlamaBoard's model list);
- the output folder: ``output_dir`` when given, else ``saves/<model>/<method>/queue`` plus
  ``_<stamp>`` when a ``stamp`` is given (LlamaBoard's own folders are ``train_<date>``).

Not carried over: the vision settings of multimodal models (LlamaBoard adds them only for
the models of its ``MULTIMODAL_SUPPORTED_MODELS``; LLaMA-Factory's defaults apply, the same as
LlamaBoard's), and SwanLab's settings (queue jobs report to MLflow; ``use_swanlab`` is refused).
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Mapping
from typing import Any

from .lf_config import ConfigInvalid, ConfigProblem, models_path

#: LlamaBoard's stage names (``TRAINING_STAGES``, ``llamafactory/extras/constants.py``).
TRAINING_STAGES = {
    "Supervised Fine-Tuning": "sft",
    "Reward Modeling": "rm",
    "PPO": "ppo",
    "DPO": "dpo",
    "KTO": "kto",
    "Pre-Training": "pt",
}
#: ``PEFT_METHODS`` of LLaMA-Factory: adapters come as a list of checkpoint names.
PEFT_METHODS = ("lora", "oft")
#: LlamaBoard's folders, relative to the user's folder (``llamafactory/webui/common.py``).
SAVE_DIR = "saves"
CACHE_DIR = "llamaboard_cache"
#: Keys ``_clean_cmd`` keeps even when false or empty.
_NO_SKIP_KEYS = (
    "packing",
    "enable_thinking",
    "use_reentrant_gc",
    "double_quantization",
    "freeze_vision_tower",
    "freeze_multi_modal_projector",
)
_TABS = ("top.", "train.")
_REQUIRED = ("top.model_name", "top.finetuning_type", "train.training_stage", "train.dataset")


def is_llamaboard_args(config: Mapping) -> bool:
    """Whether a parsed config is LlamaBoard's saved arguments: its keys are LlamaBoard's
    element ids (``top.*``, ``train.*``), with at least one ``train.*``."""
    keys = [k for k in config if isinstance(k, str)]
    return (
        bool(keys)
        and len(keys) == len(config)
        and all(k.startswith(_TABS) for k in keys)
        and any(k.startswith("train.") for k in keys)
    )


def looks_like_command(text: str) -> bool:
    """Whether a text is LlamaBoard's previewed command (``llamafactory-cli train ...``,
    possibly inside its Markdown code fence)."""
    return _strip_fence(text).lstrip().startswith(("llamafactory-cli train", "lmf train"))


def _strip_fence(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if not line.strip().startswith("```")]
    return "\n".join(lines)


def _number(value: Any, field: str, kind=float):
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigInvalid(
            [
                ConfigProblem(
                    field, f"must be a number, not {value!r} (LlamaBoard's saved arguments)"
                )
            ]
        ) from None


def _save_dir(model_name: str, finetuning_type: str, name: str) -> str:
    """``get_save_dir`` of LlamaBoard: ``saves/<model>/<method>/<name>`` (spaces removed), or
    ``name`` itself when it is a path (has a ``/``)."""
    if "/" in name:
        return name
    parts = (p.replace(" ", "").strip() for p in (model_name, finetuning_type, name))
    return posixpath.join(SAVE_DIR, *parts)


def default_model_path(
    model_name: str, user_config: Mapping | None = None, models_dir: str | None = None
) -> str:
    """The model folder of a LlamaBoard model name: the preset's ``path_dict`` entry, else
    ``<models_dir>/<model name>`` (default the shared models folder, ``/storage/models``)."""
    path_dict = (user_config or {}).get("path_dict") or {}
    path = path_dict.get(model_name) if isinstance(path_dict, Mapping) else None
    if isinstance(path, str) and path.strip():
        return path.strip()
    return posixpath.join(models_dir or models_path(), model_name)


def from_llamaboard_args(
    saved: Mapping,
    *,
    model_path: str | None = None,
    output_dir: str | None = None,
    user_config: Mapping | None = None,
    stamp: str | None = None,
    models_dir: str | None = None,
) -> dict:
    """The training arguments LlamaBoard would run for its saved arguments.

    A port of ``Runner._parse_train_args`` followed by ``_clean_cmd`` (LLaMA-Factory 0.9.5,
    ``llamafactory/webui/runner.py`` and ``common.py``): the same keys, values and order as
    the ``training_args.yaml`` LlamaBoard writes when the Train tab's Start is pressed.

    Args:
        saved: the saved arguments (``{"top.model_name": ..., "train.learning_rate": ...}``).
        model_path: the base model's folder; default :func:`default_model_path`.
        output_dir: the output folder (a name becomes ``saves/<model>/<method>/<name>``);
            default ``queue`` or ``queue_<stamp>``.
        user_config: the user's ``llamaboard_cache/user_config.yaml`` (``path_dict``,
            ``cache_dir``), when known.
        stamp: appended to the default output folder's name, e.g. a date.
        models_dir: the shared models folder as the caller sees it (the pod's
            ``LLMSPAWNER_MODELS_DIR``); default :func:`llmspawner.storage.models_path`.

    Returns:
        A new dict of ``llamafactory-cli train`` arguments (paths as LlamaBoard writes them,
        relative to the user's folder).

    Raises:
        ConfigInvalid: a required entry is missing or a number is not a number, each problem
            naming the element id (e.g. ``train.learning_rate``).
    """
    missing = [k for k in _REQUIRED if saved.get(k) in (None, "", [])]
    if missing:
        raise ConfigInvalid(
            [
                ConfigProblem(k, "is missing or empty in LlamaBoard's saved arguments")
                for k in missing
            ]
        )
    defaults = _DEFAULTS

    def get(key: str):
        return saved[key] if key in saved else defaults.get(key)

    model_name = str(get("top.model_name"))
    finetuning_type = str(get("top.finetuning_type"))
    stage_name = get("train.training_stage")
    if stage_name not in TRAINING_STAGES:
        raise ConfigInvalid(
            [
                ConfigProblem(
                    "train.training_stage",
                    f"{stage_name!r} is not a LlamaBoard stage; allowed: "
                    + ", ".join(TRAINING_STAGES),
                )
            ]
        )
    dataset = get("train.dataset")
    dataset = ",".join(dataset) if isinstance(dataset, list) else str(dataset)
    extra_text = get("train.extra_args") or "{}"
    try:
        extra = json.loads(extra_text) if isinstance(extra_text, str) else dict(extra_text)
    except (ValueError, TypeError):
        raise ConfigInvalid(
            [ConfigProblem("train.extra_args", f"is not a JSON object: {extra_text!r}")]
        ) from None
    if not isinstance(extra, dict):
        raise ConfigInvalid([ConfigProblem("train.extra_args", "must be a JSON object")])
    out_name = output_dir or ("queue" if not stamp else f"queue_{stamp}")
    booster = get("top.booster")
    compute_type = get("train.compute_type")
    args: dict[str, Any] = dict(
        stage=TRAINING_STAGES[stage_name],
        do_train=True,
        model_name_or_path=model_path or default_model_path(model_name, user_config, models_dir),
        cache_dir=(user_config or {}).get("cache_dir"),
        preprocessing_num_workers=16,
        finetuning_type=finetuning_type,
        template=get("top.template"),
        rope_scaling=get("top.rope_scaling") if get("top.rope_scaling") != "none" else None,
        flash_attn="fa2" if booster == "flashattn2" else "auto",
        use_unsloth=(booster == "unsloth"),
        enable_liger_kernel=(booster == "liger_kernel"),
        dataset_dir=get("train.dataset_dir"),
        dataset=dataset,
        cutoff_len=get("train.cutoff_len"),
        learning_rate=_number(get("train.learning_rate"), "train.learning_rate"),
        num_train_epochs=_number(get("train.num_train_epochs"), "train.num_train_epochs"),
        max_samples=_number(get("train.max_samples"), "train.max_samples", int),
        per_device_train_batch_size=get("train.batch_size"),
        gradient_accumulation_steps=get("train.gradient_accumulation_steps"),
        lr_scheduler_type=get("train.lr_scheduler_type"),
        max_grad_norm=_number(get("train.max_grad_norm"), "train.max_grad_norm"),
        logging_steps=get("train.logging_steps"),
        save_steps=get("train.save_steps"),
        warmup_steps=get("train.warmup_steps"),
        neftune_noise_alpha=get("train.neftune_alpha") or None,
        packing=get("train.packing") or get("train.neat_packing"),
        neat_packing=get("train.neat_packing"),
        train_on_prompt=get("train.train_on_prompt"),
        mask_history=get("train.mask_history"),
        resize_vocab=get("train.resize_vocab"),
        use_llama_pro=get("train.use_llama_pro"),
        enable_thinking=get("train.enable_thinking"),
        report_to=get("train.report_to"),
        use_galore=get("train.use_galore"),
        use_apollo=get("train.use_apollo"),
        use_badam=get("train.use_badam"),
        use_swanlab=get("train.use_swanlab"),
        output_dir=_save_dir(model_name, finetuning_type, out_name),
        fp16=(compute_type == "fp16"),
        bf16=(compute_type == "bf16"),
        pure_bf16=(compute_type == "pure_bf16"),
        plot_loss=True,
        trust_remote_code=True,
        ddp_timeout=180000000,
        include_num_input_tokens_seen=True,
    )
    args.update(extra)
    checkpoints = get("top.checkpoint_path")
    if checkpoints:
        if finetuning_type in PEFT_METHODS:
            names = checkpoints if isinstance(checkpoints, list) else [checkpoints]
            args["adapter_name_or_path"] = ",".join(
                _save_dir(model_name, finetuning_type, c) for c in names
            )
        else:
            args["model_name_or_path"] = _save_dir(model_name, finetuning_type, str(checkpoints))
    if get("top.quantization_bit") not in (None, "none"):
        args["quantization_bit"] = _number(get("top.quantization_bit"), "top.quantization_bit", int)
        args["quantization_method"] = get("top.quantization_method")
        args["double_quantization"] = True  # not is_torch_npu_available(): the queue has GPUs
    if args["finetuning_type"] == "freeze":
        args["freeze_trainable_layers"] = get("train.freeze_trainable_layers")
        args["freeze_trainable_modules"] = get("train.freeze_trainable_modules")
        args["freeze_extra_modules"] = get("train.freeze_extra_modules") or None
    if args["finetuning_type"] == "lora":
        args["lora_rank"] = get("train.lora_rank")
        args["lora_alpha"] = get("train.lora_alpha")
        args["lora_dropout"] = get("train.lora_dropout")
        args["loraplus_lr_ratio"] = get("train.loraplus_lr_ratio") or None
        args["create_new_adapter"] = get("train.create_new_adapter")
        args["use_rslora"] = get("train.use_rslora")
        args["use_dora"] = get("train.use_dora")
        args["pissa_init"] = get("train.use_pissa")
        args["pissa_convert"] = get("train.use_pissa")
        args["lora_target"] = get("train.lora_target") or "all"
        args["additional_target"] = get("train.additional_target") or None
        if args["use_llama_pro"]:
            args["freeze_trainable_layers"] = get("train.freeze_trainable_layers")
    if args["stage"] == "ppo":
        reward = get("train.reward_model")
        if finetuning_type in PEFT_METHODS:
            names = reward if isinstance(reward, list) else [reward] if reward else []
            args["reward_model"] = ",".join(
                _save_dir(model_name, finetuning_type, r) for r in names
            )
        else:
            args["reward_model"] = _save_dir(model_name, finetuning_type, str(reward or ""))
        args["reward_model_type"] = "lora" if finetuning_type == "lora" else "full"
        args["ppo_score_norm"] = get("train.ppo_score_norm")
        args["ppo_whiten_rewards"] = get("train.ppo_whiten_rewards")
        args["top_k"] = 0
        args["top_p"] = 0.9
    elif args["stage"] in ("dpo", "kto"):
        args["pref_beta"] = get("train.pref_beta")
        args["pref_ftx"] = get("train.pref_ftx")
        args["pref_loss"] = get("train.pref_loss")
    if args["use_galore"]:
        for key in ("galore_rank", "galore_update_interval", "galore_scale", "galore_target"):
            args[key] = get(f"train.{key}")
    if args["use_apollo"]:
        for key in ("apollo_rank", "apollo_update_interval", "apollo_scale", "apollo_target"):
            args[key] = get(f"train.{key}")
    if args["use_badam"]:
        for key in (
            "badam_mode",
            "badam_switch_mode",
            "badam_switch_interval",
            "badam_update_ratio",
        ):
            args[key] = get(f"train.{key}")
    val_size = _number(get("train.val_size") or 0, "train.val_size")
    if val_size > 1e-6 and args["stage"] != "ppo":
        args["val_size"] = val_size
        args["eval_strategy"] = "steps"
        args["eval_steps"] = args["save_steps"]
        args["per_device_eval_batch_size"] = args["per_device_train_batch_size"]
    if get("train.ds_stage") not in (None, "none"):
        offload = "offload_" if get("train.ds_offload") else ""
        args["deepspeed"] = posixpath.join(
            CACHE_DIR, f"ds_z{get('train.ds_stage')}_{offload}config.json"
        )
    return clean(args)


def clean(args: Mapping) -> dict:
    """``_clean_cmd`` of LlamaBoard: drop ``None``, ``False`` and ``""`` values, except the keys
    LlamaBoard keeps (``packing``, ``enable_thinking``, ...)."""
    return {
        k: v
        for k, v in args.items()
        if k in _NO_SKIP_KEYS or (v is not None and v is not False and v != "")
    }


_OPTION = re.compile(r"^--([A-Za-z_][A-Za-z0-9_.]*)(?:=(.*))?$")


def _scalar(text: str) -> Any:
    """A command-line value as LlamaBoard printed it (``str(v)``): ``True``/``False``/``None``,
    integers, floats (``5e-05``), JSON mappings, else the text."""
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    if text == "None":
        return None
    if text.startswith("{"):
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _take_json_objects(body: str) -> tuple[str, dict[str, dict]]:
    """Replace each JSON object that starts a word (``gen_cmd`` prints mappings as
    ``json.dumps``, spaces and quotes included) by a placeholder word; return the text and
    ``{placeholder: object}``."""
    decoder = json.JSONDecoder()
    objects: dict[str, dict] = {}
    out, i = [], 0
    while True:
        j = body.find("{", i)
        if j < 0:
            out.append(body[i:])
            break
        if j > 0 and not body[j - 1].isspace():
            out.append(body[i : j + 1])
            i = j + 1
            continue
        try:
            obj, end = decoder.raw_decode(body, j)
        except (ValueError, RecursionError):
            out.append(body[i : j + 1])
            i = j + 1
            continue
        key = f"__llmspawner_json_{len(objects)}__"
        objects[key] = obj
        out.append(body[i:j] + key)
        i = end
    return "".join(out), objects


def from_command(text: str) -> dict:
    """The arguments of LlamaBoard's previewed command (``llamafactory-cli train \\ --k v ...``,
    with or without its Markdown fence); list values (``--report_to mlflow tensorboard``)
    become lists.

    Raises:
        ConfigInvalid: on field ``config`` when the text is not such a command, naming the
            first word that is not ``--key value``.
    """
    body = _strip_fence(text).replace("\\\n", " ").replace("`\n", " ")
    body, objects = _take_json_objects(body)
    try:
        words = shlex.split(body)
    except ValueError as e:
        raise ConfigInvalid([ConfigProblem("config", f"is not a command line: {e}")]) from None
    if words[:1] == ["lmf"]:
        words[0] = "llamafactory-cli"
    if words[:2] != ["llamafactory-cli", "train"]:
        raise ConfigInvalid(
            [ConfigProblem("config", "is not LlamaBoard's 'llamafactory-cli train ...' command")]
        )
    args: dict[str, Any] = {}
    key = None
    for word in words[2:]:
        match = _OPTION.match(word)
        if match:
            key = match.group(1)
            args[key] = None if match.group(2) is None else _scalar(match.group(2))
            continue
        if key is None:
            raise ConfigInvalid(
                [ConfigProblem("config", f"{word!r} in the command is not a --key value argument")]
            )
        value = objects[word] if word in objects else _scalar(word)
        if args[key] is None:
            args[key] = value
        elif isinstance(args[key], list):
            args[key].append(value)
        else:
            args[key] = [args[key], value]
    return {k: (True if v is None else v) for k, v in args.items()}


#: Default values of LlamaBoard's Train tab (``llamafactory/webui/components/train.py`` and
#: ``top.py``), for saved arguments written by another LlamaBoard version that lack a key.
_DEFAULTS: dict[str, Any] = {
    "top.template": "default",
    "top.rope_scaling": "none",
    "top.booster": "auto",
    "top.quantization_bit": "none",
    "top.quantization_method": "bnb",
    "top.checkpoint_path": None,
    "train.dataset_dir": "data",
    "train.learning_rate": "5e-5",
    "train.num_train_epochs": "3.0",
    "train.max_grad_norm": "1.0",
    "train.max_samples": "100000",
    "train.compute_type": "bf16",
    "train.cutoff_len": 2048,
    "train.batch_size": 2,
    "train.gradient_accumulation_steps": 8,
    "train.val_size": 0,
    "train.lr_scheduler_type": "cosine",
    "train.logging_steps": 5,
    "train.save_steps": 100,
    "train.warmup_steps": 0,
    "train.neftune_alpha": 0,
    "train.extra_args": '{"optim": "adamw_torch"}',
    "train.packing": False,
    "train.neat_packing": False,
    "train.train_on_prompt": False,
    "train.mask_history": False,
    "train.resize_vocab": False,
    "train.use_llama_pro": False,
    "train.enable_thinking": True,
    "train.report_to": "none",
    "train.freeze_trainable_layers": 2,
    "train.freeze_trainable_modules": "all",
    "train.freeze_extra_modules": "",
    "train.lora_rank": 8,
    "train.lora_alpha": 16,
    "train.lora_dropout": 0,
    "train.loraplus_lr_ratio": 0,
    "train.create_new_adapter": False,
    "train.use_rslora": False,
    "train.use_dora": False,
    "train.use_pissa": False,
    "train.lora_target": "",
    "train.additional_target": "",
    "train.pref_beta": 0.1,
    "train.pref_ftx": 0,
    "train.pref_loss": "sigmoid",
    "train.reward_model": None,
    "train.ppo_score_norm": False,
    "train.ppo_whiten_rewards": False,
    "train.use_galore": False,
    "train.use_apollo": False,
    "train.use_badam": False,
    "train.use_swanlab": False,
    "train.ds_stage": "none",
    "train.ds_offload": False,
}
