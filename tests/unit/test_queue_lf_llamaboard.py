"""LlamaBoard's saved arguments and previewed command as queue configs (pure functions).

The comparison with LlamaBoard's own code is in
``tests/integration/test_llamaboard_saved_args.py``; here are the rules around it.
"""

from __future__ import annotations

import pytest
import yaml

from llmspawner.queue import lf_config, lf_llamaboard, limits
from llmspawner.queue.lf_config import ConfigInvalid

SAVED = {
    "top.model_name": "SmolLM2-135M-Instruct",
    "top.finetuning_type": "lora",
    "top.template": "default",
    "train.training_stage": "Supervised Fine-Tuning",
    "train.dataset": ["identity_demo"],
    "train.dataset_dir": "data",
    "train.learning_rate": "5e-5",
    "train.report_to": ["mlflow"],
    "train.extra_args": '{"optim": "adamw_torch"}',
}
HOME = "/storage/users/alice"


@pytest.mark.parametrize(
    "config, expected",
    [
        (SAVED, True),
        ({"top.model_name": "x"}, False),  # no train.* key
        ({"train.x": 1, "model_name_or_path": "m"}, False),  # a training config's key
        ({"stage": "sft"}, False),
        ({}, False),
    ],
)
def test_saved_arguments_are_recognised_by_their_element_ids(config, expected):
    assert lf_llamaboard.is_llamaboard_args(config) is expected


def test_saved_arguments_become_llamaboards_training_arguments():
    args = lf_llamaboard.from_llamaboard_args(SAVED, stamp="2026-12-01-10-00-00")
    assert args["stage"] == "sft"
    assert args["model_name_or_path"] == "/storage/models/SmolLM2-135M-Instruct"
    assert args["output_dir"] == "saves/SmolLM2-135M-Instruct/lora/queue_2026-12-01-10-00-00"
    assert args["learning_rate"] == 5e-5
    assert args["optim"] == "adamw_torch"
    assert args["lora_target"] == "all"
    assert "use_swanlab" not in args and "fp16" not in args  # False values dropped, as LlamaBoard


def test_the_model_path_comes_from_the_argument_then_the_preset_then_the_shared_folder():
    preset = {"path_dict": {"SmolLM2-135M-Instruct": "/storage/models/smol"}, "cache_dir": None}
    assert lf_llamaboard.from_llamaboard_args(SAVED, model_path="/m")["model_name_or_path"] == "/m"
    assert (
        lf_llamaboard.from_llamaboard_args(SAVED, user_config=preset)["model_name_or_path"]
        == "/storage/models/smol"
    )
    assert (
        lf_llamaboard.from_llamaboard_args(SAVED, user_config={"path_dict": {}})[
            "model_name_or_path"
        ]
        == "/storage/models/SmolLM2-135M-Instruct"
    )


@pytest.mark.parametrize(
    "change, field",
    [
        ({"top.model_name": ""}, "top.model_name"),
        ({"train.dataset": []}, "train.dataset"),
        ({"train.learning_rate": "fast"}, "train.learning_rate"),
        ({"train.training_stage": "Magic"}, "train.training_stage"),
        ({"train.extra_args": "{not json"}, "train.extra_args"),
    ],
)
def test_bad_saved_arguments_name_the_element(change, field):
    with pytest.raises(ConfigInvalid) as e:
        lf_llamaboard.from_llamaboard_args({**SAVED, **change})
    assert [p.field for p in e.value.problems] == [field]


def test_the_queue_makes_llamaboards_relative_paths_absolute_in_the_users_folder():
    saved = {
        **SAVED,
        "top.checkpoint_path": ["train_1", "train_2"],
        "train.ds_stage": "3",
        "train.ds_offload": False,
    }
    prepared = lf_config.check_config_now(
        yaml.safe_dump(saved), username="alice", stamp="2026-12-01-10-00-00"
    )
    assert prepared["dataset_dir"] == f"{HOME}/data"
    assert prepared["output_dir"] == (
        f"{HOME}/saves/SmolLM2-135M-Instruct/lora/queue_2026-12-01-10-00-00"
    )
    assert prepared["adapter_name_or_path"] == (
        f"{HOME}/saves/SmolLM2-135M-Instruct/lora/train_1,"
        f"{HOME}/saves/SmolLM2-135M-Instruct/lora/train_2"
    )
    assert prepared["deepspeed"] == f"{HOME}/llamaboard_cache/ds_z3_config.json"
    assert prepared["report_to"] == "mlflow" and "overwrite_output_dir" not in prepared


def test_the_queues_rules_apply_to_saved_arguments_too():
    saved = {**SAVED, "train.report_to": ["wandb"], "train.extra_args": '{"hf_hub_token": "x"}'}
    with pytest.raises(ConfigInvalid) as e:
        lf_config.check_config_now(yaml.safe_dump(saved), username="alice")
    assert {p.field for p in e.value.problems} == {"report_to", "hf_hub_token"}
    outside = {**SAVED, "train.dataset_dir": "/etc"}
    with pytest.raises(ConfigInvalid) as e:
        lf_config.check_config_now(yaml.safe_dump(outside), username="alice")
    assert [p.field for p in e.value.problems] == ["dataset_dir"]


def test_saved_arguments_are_bounded_by_the_limits():
    with pytest.raises(limits.LimitExceeded) as e:
        lf_config.check_config_now("a: &x [1]\nb: *x\ntrain.dataset: [d]\n", username="alice")
    assert e.value.limit == "yaml_aliases"
    big = yaml.safe_dump({**SAVED, "train.extra_args": "{}" + " " * limits.MAX_CONFIG_BYTES})
    with pytest.raises(limits.LimitExceeded) as e:
        lf_config.check_config_now(big, username="alice")
    assert e.value.limit == "max_config_bytes"


COMMAND = """```bash
llamafactory-cli train \\
    --stage sft \\
    --do_train True \\
    --model_name_or_path /storage/models/SmolLM2-135M-Instruct \\
    --dataset_dir data \\
    --dataset identity_demo,more \\
    --learning_rate 5e-05 \\
    --num_train_epochs 3.0 \\
    --max_samples 100000 \\
    --packing False \\
    --report_to mlflow tensorboard \\
    --output_dir saves/SmolLM2-135M-Instruct/lora/train_1 \\
    --finetuning_type lora \\
    --template default \\
    --deepspeed {"zero_optimization": {"stage": 2}} \\
    --lora_target all
```"""


def test_the_previewed_command_becomes_its_arguments():
    assert lf_llamaboard.looks_like_command(COMMAND)
    args = lf_llamaboard.from_command(COMMAND)
    assert args == {
        "stage": "sft",
        "do_train": True,
        "model_name_or_path": "/storage/models/SmolLM2-135M-Instruct",
        "dataset_dir": "data",
        "dataset": "identity_demo,more",
        "learning_rate": 5e-05,
        "num_train_epochs": 3.0,
        "max_samples": 100000,
        "packing": False,
        "report_to": ["mlflow", "tensorboard"],
        "output_dir": "saves/SmolLM2-135M-Instruct/lora/train_1",
        "finetuning_type": "lora",
        "template": "default",
        "deepspeed": {"zero_optimization": {"stage": 2}},
        "lora_target": "all",
    }
    prepared = lf_config.check_config_now(COMMAND, username="alice")
    assert prepared["output_dir"] == f"{HOME}/saves/SmolLM2-135M-Instruct/lora/train_1"
    assert prepared["report_to"] == ["mlflow", "tensorboard"]


@pytest.mark.parametrize(
    "text",
    ["llamafactory-cli train stray --stage sft", "llamafactory-cli train --stage 'open"],
)
def test_a_broken_command_is_refused_naming_the_config(text):
    with pytest.raises(ConfigInvalid) as e:
        lf_config.check_config_now(text, username="alice")
    assert [p.field for p in e.value.problems] == ["config"]


def test_a_command_over_the_size_limit_is_refused_before_parsing():
    text = "llamafactory-cli train --stage " + "x" * limits.MAX_CONFIG_BYTES
    with pytest.raises(limits.LimitExceeded) as e:
        lf_config.check_config_now(text, username="alice")
    assert e.value.limit == "max_config_bytes"
