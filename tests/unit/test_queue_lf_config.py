"""Training config validation of the batch queue: every rule, with its exact message."""

import copy
import json

import pytest

from llmspawner.queue import lf_arguments
from llmspawner.queue.lf_config import (
    ConfigInvalid,
    parse_config,
    prepare_config,
)

HOME = "/storage/users/alice"
IN_HOME = f"a path in your folder {HOME}/ (relative paths are relative to it)"
READ = f"{IN_HOME} or, read-only, in /storage/models/"

BASE = {
    "model_name_or_path": "/storage/models/tiny-llama",
    "output_dir": "saves/run1",
}

EXAMPLE_YAML = """\
### model
model_name_or_path: /storage/models/tiny-llama
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_target: all

### dataset
dataset: alpaca_tiny
template: default
cutoff_len: 128

### output
output_dir: saves/tiny/lora/sft
logging_steps: 1
overwrite_output_dir: false
report_to: none  # choices: [none, wandb, tensorboard, swanlab, mlflow]

### train
per_device_train_batch_size: 2
learning_rate: 1.0e-4
max_steps: 3
"""


def prepare(config, username="alice", job_name="llm-job-alice-7"):
    return prepare_config(config, username=username, job_name=job_name)


def problems_of(config, username="alice"):
    with pytest.raises(ConfigInvalid) as e:
        prepare(config, username=username)
    return [tuple(p) for p in e.value.problems]


def test_example_is_prepared_to_run():
    config = parse_config(EXAMPLE_YAML)
    before = copy.deepcopy(config)
    out = prepare(config)
    assert config == before  # the input is not modified
    assert out == {
        "model_name_or_path": "/storage/models/tiny-llama",
        "trust_remote_code": True,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "dataset": "alpaca_tiny",
        "template": "default",
        "cutoff_len": 128,
        "output_dir": f"{HOME}/saves/tiny/lora/sft",
        "logging_steps": 1,
        "report_to": "mlflow",
        "per_device_train_batch_size": 2,
        "learning_rate": 1.0e-4,
        "max_steps": 3,
        "run_name": "llm-job-alice-7",
        "save_steps": 100,
    }
    assert list(out)[:3] == ["model_name_or_path", "trust_remote_code", "stage"]
    assert json.loads(json.dumps(out)) == out  # stored as JSON in the database


def test_json_config_is_accepted():
    assert parse_config('{"model_name_or_path": "m", "output_dir": "o"}') == {
        "model_name_or_path": "m",
        "output_dir": "o",
    }
    assert parse_config("{model_name_or_path: m}") == {"model_name_or_path": "m"}  # YAML flow


def test_defaults_do_train_and_keeps_an_explicit_false():
    assert prepare(BASE)["do_train"] is True
    assert prepare({**BASE, "do_train": False, "do_predict": True})["do_train"] is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty; it must be a mapping of LLaMA-Factory arguments"),
        ("# nothing\n", "is empty; it must be a mapping of LLaMA-Factory arguments"),
        (
            "- model_name_or_path: x\n",
            "must be a mapping of LLaMA-Factory arguments (key: value), not a list",
        ),
        ("just text", "must be a mapping of LLaMA-Factory arguments (key: value), not a string"),
        ("42", "must be a mapping of LLaMA-Factory arguments (key: value), not a number"),
        (
            "a: [1, 2\n",
            "is not valid YAML or JSON: did not find expected ',' or ']' (line 2, column 1)",
        ),
        ("a: \ud800\n", "is not valid YAML or JSON: 'utf-8' codec can't encode character"),
    ],
)
def test_parse_refuses(text, message):
    with pytest.raises(ConfigInvalid) as e:
        parse_config(text)
    [problem] = e.value.problems
    assert problem.field == "config"
    assert problem.message.startswith(message)
    assert str(e.value) == f"config: {problem.message}"


def test_prepare_refuses_a_non_mapping():
    assert problems_of(["x"]) == [
        ("config", "must be a mapping of LLaMA-Factory arguments, not a list")
    ]


# One case per rule: (extra config keys, expected (field, message)).
REFUSALS = [
    (
        {"lerning_rate": 1e-4},
        (
            "lerning_rate",
            (
                "is not an argument of llamafactory-cli train (LLaMA-Factory 0.9.5); did you mean "
                "learning_rate? see llamafactory-cli train -h for the allowed ones"
            ),
        ),
    ),
    (
        {"zzzz": 1},
        (
            "zzzz",
            (
                "is not an argument of llamafactory-cli train (LLaMA-Factory 0.9.5); see "
                "llamafactory-cli train -h for the allowed ones"
            ),
        ),
    ),
    (
        {"stage": "rlhf"},
        ("stage", "'rlhf' is not a LLaMA-Factory stage; allowed: pt, sft, rm, dpo, kto"),
    ),
    (
        {"stage": "ppo"},
        (
            "stage",
            (
                "ppo cannot run in the queue: LLaMA-Factory's PPO reports only to wandb, tensorboard "
                "or trackio, and queue jobs report to MLflow; allowed: pt, sft, rm, dpo, kto"
            ),
        ),
    ),
    (
        {"output_dir": "/tmp/out"},
        ("output_dir", f"'/tmp/out' is outside your folder; allowed: {IN_HOME}"),
    ),
    (
        {"output_dir": "/storage/users/bob/out"},
        ("output_dir", f"'/storage/users/bob/out' is outside your folder; allowed: {IN_HOME}"),
    ),
    (
        {"output_dir": "/storage/users/alice-x/out"},
        ("output_dir", f"'/storage/users/alice-x/out' is outside your folder; allowed: {IN_HOME}"),
    ),
    (
        {"output_dir": "../bob/out"},
        ("output_dir", f"'../bob/out' must not contain '..'; allowed: {IN_HOME}"),
    ),
    (
        {"output_dir": "/storage/users/alice/../bob"},
        ("output_dir", f"'/storage/users/alice/../bob' must not contain '..'; allowed: {IN_HOME}"),
    ),
    (
        {"output_dir": "~bob/out"},
        ("output_dir", f"'~bob/out': ~user paths are not allowed; allowed: {IN_HOME}"),
    ),
    (
        {"output_dir": "/storage/models/mine"},
        (
            "output_dir",
            (
                "'/storage/models/mine' is in the shared models folder, which is read-only; "
                f"allowed: {IN_HOME}"
            ),
        ),
    ),
    (
        {"output_dir": "."},
        (
            "output_dir",
            (
                f"must be a sub-folder of your folder {HOME}/, e.g. saves/my-run, not the folder "
                "itself"
            ),
        ),
    ),
    (
        {"output_dir": "~"},
        (
            "output_dir",
            (
                f"must be a sub-folder of your folder {HOME}/, e.g. saves/my-run, not the folder "
                "itself"
            ),
        ),
    ),
    ({"output_dir": ""}, ("output_dir", "must be a path (a string), not ''")),
    ({"output_dir": 5}, ("output_dir", "must be a path (a string), not 5")),
    (
        {"logging_dir": "/var/log/x"},
        ("logging_dir", f"'/var/log/x' is outside your folder; allowed: {IN_HOME}"),
    ),
    (
        {"cache_dir": "/storage/models/cache"},
        (
            "cache_dir",
            (
                "'/storage/models/cache' is in the shared models folder, which is read-only; "
                f"allowed: {IN_HOME}"
            ),
        ),
    ),
    (
        {"resume_from_checkpoint": "/storage/models/ckpt"},
        (
            "resume_from_checkpoint",
            (
                "'/storage/models/ckpt' is in the shared models folder, which is read-only; "
                f"allowed: {IN_HOME}"
            ),
        ),
    ),
    (
        {"model_name_or_path": "Qwen/Qwen2.5-0.5B"},
        (
            "model_name_or_path",
            (
                "'Qwen/Qwen2.5-0.5B' looks like a Hugging Face Hub id, but queue jobs cannot "
                f"download models; allowed: {READ} (write ./Qwen/Qwen2.5-0.5B for a folder of that "
                "name in your folder)"
            ),
        ),
    ),
    (
        {"model_name_or_path": "/opt/models/llama"},
        ("model_name_or_path", f"'/opt/models/llama' is outside your folder; allowed: {READ}"),
    ),
    (
        {"model_name_or_path": "/storage/users/bob/model"},
        (
            "model_name_or_path",
            f"'/storage/users/bob/model' is outside your folder; allowed: {READ}",
        ),
    ),
    (
        {"adapter_name_or_path": "saves/a/1, org/adapter"},
        (
            "adapter_name_or_path",
            (
                "'org/adapter' looks like a Hugging Face Hub id, but queue jobs cannot download "
                f"models; allowed: {READ} (write ./org/adapter for a folder of that name in your "
                "folder)"
            ),
        ),
    ),
    (
        {"adapter_name_or_path": "saves/a/b,"},
        ("adapter_name_or_path", f"must be a path, not an empty item; allowed: {READ}"),
    ),
    (
        {"adapter_name_or_path": ["saves/a/b"]},
        ("adapter_name_or_path", "must be a path (a string), not ['saves/a/b']"),
    ),
    (
        {"dataset_dir": "ONLINE"},
        (
            "dataset_dir",
            (
                "'ONLINE' loads datasets from the Hugging Face Hub, which queue jobs cannot reach; "
                f"allowed: a folder with dataset_info.json in {HOME}/ or /storage/models/"
            ),
        ),
    ),
    (
        {"dataset_dir": "REMOTE:org/data"},
        (
            "dataset_dir",
            (
                "'REMOTE:org/data' loads datasets from the Hugging Face Hub, which queue jobs cannot "
                f"reach; allowed: a folder with dataset_info.json in {HOME}/ or /storage/models/"
            ),
        ),
    ),
    (
        {"dataset_dir": "/data"},
        ("dataset_dir", f"'/data' is outside your folder; allowed: {READ}"),
    ),
    (
        {"deepspeed": "/etc/ds.json"},
        ("deepspeed", f"'/etc/ds.json' is outside your folder; allowed: {READ}"),
    ),
    ({"deepspeed": 3}, ("deepspeed", "must be a path (a string) or a mapping, not 3")),
    (
        {"hub_token": "hf_secret"},
        (
            "hub_token",
            (
                "must not be set: the config is stored and shown with the job, so it must not hold "
                "tokens or keys (jobs cannot reach the network anyway)"
            ),
        ),
    ),
    (
        {"hf_hub_token": "hf_secret"},
        (
            "hf_hub_token",
            (
                "must not be set: the config is stored and shown with the job, so it must not hold "
                "tokens or keys (jobs cannot reach the network anyway)"
            ),
        ),
    ),
    (
        {"report_to": "wandb"},
        (
            "report_to",
            (
                "'wandb' is not available to queue jobs; allowed: mlflow, none, tensorboard (jobs "
                "always report to MLflow)"
            ),
        ),
    ),
    (
        {"report_to": ["mlflow", "all"]},
        (
            "report_to",
            (
                "'all' is not available to queue jobs; allowed: mlflow, none, tensorboard (jobs "
                "always report to MLflow)"
            ),
        ),
    ),
    (
        {"report_to": 1},
        (
            "report_to",
            (
                "must be a reporter name or a list of them, not 1; allowed: mlflow, none, "
                "tensorboard (jobs always report to MLflow)"
            ),
        ),
    ),
    ({"use_swanlab": True}, ("use_swanlab", "must be false: queue jobs report to MLflow only")),
    (
        {"push_to_hub": True},
        (
            "push_to_hub",
            (
                "must be false: queue jobs cannot reach the Hugging Face Hub; the results stay in "
                "output_dir"
            ),
        ),
    ),
    (
        {"reward_model_type": "api"},
        (
            "reward_model_type",
            "api calls a network service that queue jobs cannot reach; allowed: lora, full",
        ),
    ),
    (
        {"run_name": __import__("datetime").date(2025, 1, 2)},
        (
            "run_name",
            (
                "must be plain data (a string, number, boolean, list or mapping), not a date; "
                "quote it to make it a string"
            ),
        ),
    ),
    (
        {"lr_scheduler_kwargs": {1: 2}},
        ("lr_scheduler_kwargs", "mapping keys must be strings, not 1"),
    ),
    ({1: "x"}, ("1", "keys must be strings (argument names)")),
]


@pytest.mark.parametrize(("extra", "problem"), REFUSALS, ids=[str(p[0]) for _, p in REFUSALS])
def test_refusal(extra, problem):
    assert problems_of({**BASE, **extra}) == [problem]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (
            "model_name_or_path",
            (
                "is required: the folder of the base model, e.g. /storage/models/<name> (shared) or "
                f"a folder in {HOME}/"
            ),
        ),
        ("output_dir", f"is required: a folder in {HOME}/ for the results, e.g. saves/my-run"),
    ],
)
def test_required(key, message):
    config = {k: v for k, v in BASE.items() if k != key}
    assert problems_of(config) == [(key, message)]
    assert problems_of({**config, key: None}) == [(key, message)]


def test_every_problem_is_listed_at_once_in_key_order():
    config = {
        "stage": "ppo",
        "model_name_or_path": "Qwen/Qwen2",
        "lerning_rate": 1,
        "output_dir": "/storage/models/x",
        "report_to": "wandb",
    }
    with pytest.raises(ConfigInvalid) as e:
        prepare(config)
    assert [p.field for p in e.value.problems] == [
        "stage",
        "model_name_or_path",
        "lerning_rate",
        "output_dir",
        "report_to",
    ]
    assert str(e.value) == "\n".join(f"{p.field}: {p.message}" for p in e.value.problems)
    assert problems_of({"stage": "x"}) == [
        ("stage", "'x' is not a LLaMA-Factory stage; allowed: pt, sft, rm, dpo, kto"),
        (
            "model_name_or_path",
            (
                "is required: the folder of the base model, e.g. /storage/models/<name> (shared) or "
                f"a folder in {HOME}/"
            ),
        ),
        ("output_dir", f"is required: a folder in {HOME}/ for the results, e.g. saves/my-run"),
    ]


@pytest.mark.parametrize(
    ("key", "value", "resolved"),
    [
        ("output_dir", "saves/x", f"{HOME}/saves/x"),
        ("output_dir", "./saves//x/", f"{HOME}/saves/x"),
        ("output_dir", "~/saves/x", f"{HOME}/saves/x"),
        ("output_dir", f"{HOME}/saves/x", f"{HOME}/saves/x"),
        ("output_dir", "//storage/users/alice/x", f"{HOME}/x"),
        (
            "model_name_or_path",
            "/storage/models/Qwen/Qwen2.5-0.5B",
            "/storage/models/Qwen/Qwen2.5-0.5B",
        ),
        ("model_name_or_path", "./Qwen/Qwen2.5-0.5B", f"{HOME}/Qwen/Qwen2.5-0.5B"),
        ("model_name_or_path", "my-model", f"{HOME}/my-model"),
        ("model_name_or_path", "models/org/name", f"{HOME}/models/org/name"),
        ("model_name_or_path", "/storage/models", "/storage/models"),
        (
            "adapter_name_or_path",
            "saves/a/b, /storage/models/lora",
            f"{HOME}/saves/a/b,/storage/models/lora",
        ),
        ("dataset_dir", "data", f"{HOME}/data"),
        ("dataset_dir", "/storage/models/datasets", "/storage/models/datasets"),
        ("deepspeed", "ds/z3.json", f"{HOME}/ds/z3.json"),
        ("deepspeed", {"zero_optimization": {"stage": 3}}, {"zero_optimization": {"stage": 3}}),
        ("resume_from_checkpoint", "saves/x/checkpoint-10", f"{HOME}/saves/x/checkpoint-10"),
        ("resume_from_checkpoint", True, True),
        ("cache_dir", None, None),
        ("hub_token", None, "<absent>"),
        ("hub_token", "", "<absent>"),
    ],
)
def test_paths_are_resolved(key, value, resolved):
    out = prepare({**BASE, key: value})
    assert out.get(key, "<absent>") == resolved


def test_paths_of_a_user_with_a_lossy_slug():
    home = "/storage/users/bob-smith-example-org---da50e6af"
    out = prepare({**BASE, "dataset_dir": "data"}, username="Bob.Smith@example.org")
    assert out["output_dir"] == f"{home}/saves/run1"
    assert out["dataset_dir"] == f"{home}/data"
    assert problems_of(
        {**BASE, "output_dir": "/storage/users/bob.smith/x"}, "Bob.Smith@example.org"
    ) == [
        (
            "output_dir",
            (
                "'/storage/users/bob.smith/x' is outside your folder; allowed: a path in your folder "
                f"{home}/ (relative paths are relative to it)"
            ),
        )
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "mlflow"),
        ("none", "mlflow"),
        ("mlflow", "mlflow"),
        (["mlflow"], "mlflow"),
        ([], "mlflow"),
        ("tensorboard", ["mlflow", "tensorboard"]),
        (["none", "tensorboard", "mlflow"], ["mlflow", "tensorboard"]),
    ],
)
def test_report_to_is_mlflow(value, expected):
    config = dict(BASE) if value is None else {**BASE, "report_to": value}
    assert prepare(config)["report_to"] == expected


def test_forced_values_replace_the_users():
    out = prepare(
        {**BASE, "run_name": "mine", "overwrite_output_dir": False, "report_to": "none"},
        job_name="llm-job-alice-8",
    )
    assert (out["run_name"], out["report_to"]) == ("llm-job-alice-8", "mlflow")
    assert "overwrite_output_dir" not in out  # a requeued attempt resumes from checkpoint-*


def test_overwrite_output_dir_true_is_kept_for_the_first_attempt():
    # LLaMA-Factory's example configs set it; the training wrapper drops it for a requeued
    # attempt of the same job (llmspawner.training.first_attempt_only, tests/unit/test_training.py)
    out = prepare({**BASE, "overwrite_output_dir": True}, job_name="llm-job-alice-8")
    assert out["overwrite_output_dir"] is True
    [(field, message)] = problems_of({**BASE, "overwrite_output_dir": "yes"})
    assert (field, message) == ("overwrite_output_dir", "must be true or false")


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({}, {"save_steps": 100}),
        ({"save_steps": 20}, {"save_steps": 20}),
        ({"save_strategy": "no"}, {"save_strategy": "no"}),
        ({"save_strategy": "epoch"}, {"save_strategy": "epoch"}),
    ],
)
def test_a_checkpoint_interval_is_set_when_the_config_has_none(extra, expected):
    out = prepare({**BASE, **extra})
    assert {k: out[k] for k in ("save_steps", "save_strategy") if k in out} == expected


def test_every_stage_but_ppo_is_accepted():
    for stage in ("pt", "sft", "rm", "dpo", "kto"):
        assert prepare({**BASE, "stage": stage})["stage"] == stage


def test_the_keys_treated_specially_are_real_arguments():
    from llmspawner.queue import lf_config

    for names in (
        lf_config.READ_PATH_KEYS,
        lf_config.WRITE_PATH_KEYS,
        lf_config.SECRET_KEYS,
        lf_config.REQUIRED_KEYS,
        ("report_to", "run_name", "overwrite_output_dir", "do_train", "use_swanlab"),
        ("push_to_hub", "reward_model_type", "trust_remote_code"),
    ):
        assert set(names) <= lf_arguments.TRAIN_ARGUMENTS, set(names) - lf_arguments.TRAIN_ARGUMENTS


@pytest.mark.parametrize(
    "value, expected",
    [
        (True, "alice-adapters"),
        ("chat", "alice-chat"),
        ("alice-chat", "alice-chat"),  # prepared again: kept
    ],
)
def test_register_model_names_a_model_of_the_user(value, expected):
    config = {"model_name_or_path": "/storage/models/m", "output_dir": "saves/x"}
    prepared = prepare_config({**config, "register_model": value}, username="alice", job_name="j")
    assert prepared["register_model"] == expected
    for off in (False, None):
        prepared = prepare_config({**config, "register_model": off}, username="alice", job_name="j")
        assert "register_model" not in prepared


@pytest.mark.parametrize("value", ["", "a b", "../x", 3, ["x"], "x" * 101])
def test_a_bad_register_model_is_refused_naming_the_field(value):
    config = {"model_name_or_path": "/storage/models/m", "output_dir": "saves/x"}
    with pytest.raises(ConfigInvalid) as e:
        prepare_config({**config, "register_model": value}, username="alice", job_name="j")
    (problem,) = e.value.problems
    assert problem.field == "register_model"
    assert "alice-adapters" in problem.message
