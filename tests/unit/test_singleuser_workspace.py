"""The user's folder before LlamaBoard starts: demo dataset, model preset, messages.

LLaMA-Factory's own readers of these files (``load_config``, ``get_model_path``,
``get_template``, ``load_dataset_info``) import torch; they are run on the preset in
``tests/integration/test_real_model.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmspawner.singleuser import workspace
from llmspawner.singleuser.workspace import (
    CUSTOM,
    DEMO_DATASET,
    IDENTITY_ANSWER,
    IDENTITY_NAME,
    parse_model_groups,
    prepare,
    preset,
)

SMOL = "SmolLM2-135M-Instruct"


def make_model(models: Path, name: str) -> Path:
    path = models / name
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


@pytest.fixture
def models(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


@pytest.fixture
def home(tmp_path):
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


def run(home: Path, models: Path | None = None, **env):
    lines: list[str] = []
    if models is not None:
        env.setdefault(workspace.MODELS_DIR_ENV, str(models))
    done = prepare(home, environ=env, say=lines.append)
    assert done.messages == lines
    return done


def read_json(path: Path):
    return json.loads(path.read_text())


def user_config(home: Path) -> dict:
    return yaml.safe_load((home / "llamaboard_cache" / "user_config.yaml").read_text())


# --- the demo dataset ----------------------------------------------------------------------


def test_the_demo_dataset_teaches_one_name():
    examples = read_json(workspace.DEMO_SOURCE)
    assert 20 <= len(examples) <= 40
    assert all(set(e) == {"instruction", "input", "output"} for e in examples)
    assert all(IDENTITY_NAME in e["output"] for e in examples)
    assert len({e["instruction"] for e in examples}) == len(examples)
    assert examples[0] == {"instruction": "Who are you?", "input": "", "output": IDENTITY_ANSWER}


def test_a_new_folder_gets_the_dataset_and_the_preset(home, models):
    make_model(models, SMOL)
    done = run(home, models)
    assert done.written == [
        "data/dataset_info.json",
        "data/identity_demo.json",
        "llamaboard_cache/user_config.yaml",
    ]
    assert read_json(home / "data" / "dataset_info.json") == {
        DEMO_DATASET: {"file_name": "identity_demo.json"}
    }
    assert (home / "data" / "identity_demo.json").read_bytes() == workspace.DEMO_SOURCE.read_bytes()
    config = home / "llamaboard_cache" / "user_config.yaml"
    assert done.messages == [
        f"LlamaBoard preset: model {SMOL} (template smollm2) at {models / SMOL} ({config})"
    ]
    # Nothing half-written is left beside the files.
    assert sorted(p.name for p in (home / "data").iterdir()) == [
        "dataset_info.json",
        "identity_demo.json",
    ]
    assert os.listdir(home / "llamaboard_cache") == ["user_config.yaml"]


def test_files_get_the_mode_of_a_plain_open(home, models):
    old = os.umask(0o022)
    try:
        make_model(models, SMOL)
        run(home, models)
    finally:
        os.umask(old)
    for path in ("data/dataset_info.json", "data/identity_demo.json"):
        assert (home / path).stat().st_mode & 0o777 == 0o644
    assert (home / "llamaboard_cache/user_config.yaml").stat().st_mode & 0o777 == 0o644


def test_the_users_datasets_are_kept_and_the_demo_merged(home):
    (home / "data").mkdir()
    mine = {"mine": {"file_name": "mine.json", "formatting": "sharegpt"}, "other": {"x": [1]}}
    (home / "data" / "dataset_info.json").write_text(json.dumps(mine))
    done = run(home)
    assert "data/dataset_info.json" in done.written
    merged = read_json(home / "data" / "dataset_info.json")
    assert list(merged) == ["mine", "other", DEMO_DATASET]
    assert {k: merged[k] for k in mine} == mine


def test_an_entry_of_the_users_own_named_identity_demo_is_kept(home):
    (home / "data").mkdir()
    theirs = {DEMO_DATASET: {"file_name": "their_identity.json"}}
    (home / "data" / "dataset_info.json").write_text(json.dumps(theirs))
    done = run(home)
    assert done.written == ["data/identity_demo.json"]
    assert read_json(home / "data" / "dataset_info.json") == theirs


def test_an_existing_identity_file_is_never_overwritten_and_nothing_else_changes(home):
    (home / "data").mkdir()
    (home / "data" / "identity_demo.json").write_text("my own")
    done = run(home)
    assert done.written == []
    assert (home / "data" / "identity_demo.json").read_text() == "my own"
    assert not (home / "data" / "dataset_info.json").exists()


def test_a_second_start_changes_nothing(home, models):
    make_model(models, SMOL)
    run(home, models)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in home.rglob("*") if p.is_file()}
    done = run(home, models)
    assert done.written == [] and done.messages == []
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in home.rglob("*") if p.is_file()}
    assert after == before


def test_a_start_killed_between_the_two_files_is_finished_next_time(home):
    run(home)
    (home / "data" / "identity_demo.json").unlink()
    done = run(home)
    assert done.written == ["data/identity_demo.json"]
    assert read_json(home / "data" / "dataset_info.json") == {
        DEMO_DATASET: {"file_name": "identity_demo.json"}
    }


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_an_unreadable_dataset_info_is_left_as_it_is(home, content):
    (home / "data").mkdir()
    (home / "data" / "dataset_info.json").write_text(content)
    done = run(home)
    assert done.written == []
    assert (home / "data" / "dataset_info.json").read_text() == content
    assert not (home / "data" / "identity_demo.json").exists()
    (message,) = [m for m in done.messages if "dataset_info.json" in m]
    assert message.endswith("left as it is, no demo dataset added")


def test_a_problem_is_a_message_never_an_exception(home, models):
    (home / "data").write_text("a file where the folder should be")
    make_model(models, SMOL)
    done = run(home, models)
    assert done.written == ["llamaboard_cache/user_config.yaml"]  # the preset still comes
    assert any(m.startswith(f"could not prepare {home} for LlamaBoard: ") for m in done.messages)


# --- the preset ----------------------------------------------------------------------------


def test_the_preset_has_llamaboards_keys_and_every_shared_model(home, models):
    make_model(models, "tiny-llama")
    make_model(models, SMOL)
    make_model(models, "qwen2.5-0.5b-instruct")  # LlamaBoard's name, other case
    make_model(models, ".SmolLM2-135M-Instruct.tmp-abc")  # an unfinished copy
    (models / "not-a-model").mkdir()
    (models / "README.md").write_text("x")
    run(home, models)
    assert user_config(home) == {
        "lang": "en",
        "hub_name": "huggingface",
        "last_model": "Qwen2.5-0.5B-Instruct",  # the first known one, by folder name
        "path_dict": {
            "Qwen2.5-0.5B-Instruct": str(models / "qwen2.5-0.5b-instruct"),
            SMOL: str(models / SMOL),
            CUSTOM: str(models / "tiny-llama"),
        },
        "cache_dir": None,
    }
    # The keys LLaMA-Factory 0.9.5's load_config falls back to, so none is missing.
    assert set(user_config(home)) == {"lang", "hub_name", "last_model", "path_dict", "cache_dir"}


def test_only_unknown_models_preset_custom(home, models):
    make_model(models, "tiny-llama")
    done = run(home, models)
    assert user_config(home)["last_model"] == CUSTOM
    assert user_config(home)["path_dict"] == {CUSTOM: str(models / "tiny-llama")}
    assert any("choose its template by hand" in m for m in done.messages)


def test_preset_is_pure():
    assert preset([], {SMOL: "smollm2"}) is None
    models = [Path("/m/b"), Path("/m/a")]
    assert preset(models, {})["path_dict"] == {CUSTOM: "/m/b"}  # the first in the given order
    assert preset(models, {"a": None})["last_model"] == "a"


def test_an_existing_preset_is_never_overwritten(home, models):
    make_model(models, SMOL)
    (home / "llamaboard_cache").mkdir()
    mine = "lang: zh\nlast_model: Qwen2.5-7B-Instruct\npath_dict: {}\n"
    (home / "llamaboard_cache" / "user_config.yaml").write_text(mine)
    done = run(home, models)
    assert "llamaboard_cache/user_config.yaml" not in done.written
    assert (home / "llamaboard_cache" / "user_config.yaml").read_text() == mine
    assert done.messages == []


def test_no_models_folder_and_an_empty_one_say_so(home, models):
    done = run(home)
    assert done.messages == [
        (
            "LLMSPAWNER_MODELS_DIR is not set: no shared models folder, LlamaBoard starts "
            "without a preset model"
        )
    ]
    done = run(home, models)
    (message,) = done.messages
    assert message.startswith(f"no model in the shared models folder {models}: ")
    assert not (home / "llamaboard_cache").exists()
    # A model put there later is preset at the next start.
    make_model(models, SMOL)
    assert run(home, models).written == ["llamaboard_cache/user_config.yaml"]


def test_a_preset_model_that_is_gone_is_named(home, models):
    smol = make_model(models, SMOL)
    make_model(models, "tiny-llama")
    run(home, models)
    (smol / "config.json").unlink()
    smol.rmdir()
    done = run(home, models)
    assert done.messages == [
        (
            f"LlamaBoard's model {SMOL} is the folder {smol}, which does not exist (removed "
            f"from the shared models folder?): choose another model in LlamaBoard. Shared "
            f"models now: {models / 'tiny-llama'}"
        )
    ]


def test_a_broken_preset_file_is_named(home, models):
    (home / "llamaboard_cache").mkdir()
    (home / "llamaboard_cache" / "user_config.yaml").write_text("a: [unclosed")
    (message,) = run(home, models).messages
    assert message.startswith(
        f"{home / 'llamaboard_cache' / 'user_config.yaml'} is not readable YAML"
    )


# --- LlamaBoard's model names --------------------------------------------------------------

CONSTANTS = """
register_model_group(
    models={
        "Foo-7B": {DownloadSource.DEFAULT: "x/foo"},
        "Foo-7B-Chat": {DownloadSource.DEFAULT: "x/foo-chat"},
        "Foo-7B-Instruct": {DownloadSource.DEFAULT: "x/foo-instruct"},
    },
    template="foo",
)
register_model_group(models={"Bar-VL": {}}, template="bar", multimodal=True)
register_model_group({"Baz-Thinking": {}})
something_else(models={"Nope-Instruct": {}}, template="nope")
"""


def test_model_groups_follow_register_model_group():
    assert parse_model_groups(CONSTANTS) == {
        "Foo-7B": None,
        "Foo-7B-Chat": "foo",
        "Foo-7B-Instruct": "foo",
        "Bar-VL": "bar",
        "Baz-Thinking": None,  # no template in its group
    }


def test_the_installed_llamafactory_knows_smollm2():
    known = workspace.llamaboard_models()
    assert known[SMOL] == "smollm2"
    assert known["SmolLM2-135M"] is None  # a base model: no template
    assert len(known) > 500


# --- launch.py -----------------------------------------------------------------------------


def test_launch_prepares_the_folder_then_execs(home, models):
    make_model(models, SMOL)
    env = {k: v for k, v in os.environ.items() if k != workspace.MODELS_DIR_ENV}
    env[workspace.MODELS_DIR_ENV] = str(models)
    code = "import os; print(sorted(os.listdir('data')))"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmspawner.singleuser.launch",
            str(home),
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['dataset_info.json', 'identity_demo.json']"
    assert f"llmspawner: LlamaBoard preset: model {SMOL} (template smollm2)" in done.stderr
    assert user_config(home)["last_model"] == SMOL
