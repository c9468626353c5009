"""LlamaBoard's own "Save arguments" file and "Preview command" text, handed to the queue.

LlamaBoard's Train tab is built offline with its own code (``create_top``/``create_train_tab``
of the installed llamafactory, in a child process: gradio stays out of the test process); the
form gets a user's choices, the Save button's handler (``Runner.save_args``) writes
``llamaboard_config/<name>.yaml``, and LlamaBoard's own ``_parse_train_args`` + ``_clean_cmd``
(what a Start writes to ``training_args.yaml``) and ``gen_cmd`` (the preview) give the truth
the queue's conversion (:mod:`llmspawner.queue.lf_llamaboard`) must match.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from llmspawner.queue import lf_config, lf_llamaboard

if importlib.util.find_spec("llamafactory") is None:  # found, not imported: gradio is heavy
    pytest.skip("llamafactory is not installed", allow_module_level=True)

MODEL = "SmolLM2-135M-Instruct"

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import gradio as gr
    from llamafactory.webui.common import _clean_cmd, gen_cmd
    from llamafactory.webui.components import create_top, create_train_tab
    from llamafactory.webui.engine import Engine

    engine = Engine(pure_chat=False)
    with gr.Blocks() as demo:
        engine.manager.add_elems("top", create_top())
        engine.manager.add_elems("train", create_train_tab(engine))
    fns = list(demo.fns.values()) if isinstance(demo.fns, dict) else list(demo.fns)
    (save,) = [f for f in fns if getattr(f.fn, "__name__", "") == "save_args"]
    truth = {}
    for case, choices in json.loads(sys.argv[1]).items():
        data = {e: e.value for e in save.inputs}  # the form as the Save button sends it
        for elem_id, value in choices.items():
            data[engine.manager.get_elem_by_id(elem_id)] = value
        engine.runner.save_args(data)  # llamaboard_config/<train.config_path>
        args = _clean_cmd(engine.runner._parse_train_args(data))
        truth[case] = {"args": args, "command": gen_cmd(args)}
    print(json.dumps(truth))
    """
)

BASE = {
    "top.lang": "en",
    "top.model_name": MODEL,
    "top.model_path": f"/storage/models/{MODEL}",
    "train.dataset": ["identity_demo"],
    "train.output_dir": "train_2026-12-01-10-00-00",
    "train.config_path": "mine.yaml",
    "train.report_to": ["mlflow"],
}

CASES = {
    "defaults": {},
    "tuned": {
        "train.learning_rate": "2e-4",
        "train.num_train_epochs": "10.0",
        "train.max_samples": "500",
        "train.compute_type": "fp32",
        "train.lora_rank": 16,
        "train.val_size": 0.1,
        "train.extra_args": '{"optim": "adamw_torch", "max_steps": 40}',
        "top.checkpoint_path": ["train_before"],
    },
    "freeze-dpo-deepspeed": {
        "top.finetuning_type": "freeze",
        "train.training_stage": "DPO",
        "train.ds_stage": "2",
        "train.ds_offload": True,
    },
}


@pytest.fixture(scope="module")
def llamaboard(tmp_path_factory):
    """``{case: (saved arguments file text, LlamaBoard's args, its preview command)}``, from
    one LlamaBoard built in a child process."""
    home = tmp_path_factory.mktemp("alice")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    cases = {
        case: {**BASE, **choices, "train.config_path": f"{case}.yaml"}
        for case, choices in CASES.items()
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(cases)],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    truth = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        case: (
            (home / "llamaboard_config" / f"{case}.yaml").read_text(),
            truth[case]["args"],
            truth[case]["command"],
        )
        for case in CASES
    }


@pytest.fixture(params=sorted(CASES))
def saved(request, llamaboard):
    return llamaboard[request.param]


def test_the_saved_file_is_llamaboards_form_by_element_id(saved):
    text, _, _ = saved
    data = yaml.safe_load(text)
    assert lf_llamaboard.is_llamaboard_args(data)
    assert data["top.model_name"] == MODEL and data["train.dataset"] == ["identity_demo"]
    # What LlamaBoard leaves out of it (Runner._build_config_dict's skip_ids).
    for key in ("top.lang", "top.model_path", "train.output_dir", "train.config_path"):
        assert key not in data


def test_the_conversion_gives_the_arguments_llamaboard_runs(saved):
    text, args, _ = saved
    converted = lf_llamaboard.from_llamaboard_args(
        yaml.safe_load(text), output_dir="train_2026-12-01-10-00-00"
    )
    assert converted == args
    assert list(converted) == list(args)  # and in LlamaBoard's order


def test_the_queue_takes_the_saved_file_with_paths_in_the_users_folder(saved):
    text, args, _ = saved
    prepared = lf_config.check_config_now(text, username="alice", stamp="2026-12-01-10-00-00")
    home = "/storage/users/alice"
    assert prepared["model_name_or_path"] == f"/storage/models/{MODEL}"
    assert (
        prepared["output_dir"]
        == f"{home}/saves/{MODEL}/{args['finetuning_type']}/queue_2026-12-01-10-00-00"
    )
    assert prepared["dataset_dir"] == f"{home}/data"
    assert prepared["report_to"] == "mlflow"
    if "adapter_name_or_path" in args:
        assert prepared["adapter_name_or_path"] == f"{home}/saves/{MODEL}/lora/train_before"
    if "deepspeed" in args:
        assert prepared["deepspeed"] == f"{home}/llamaboard_cache/ds_z2_offload_config.json"
    expected = lf_config.prepare_config(
        {**args, "output_dir": prepared["output_dir"]}, username="alice", job_name=""
    )
    assert prepared == expected


def test_the_queue_takes_the_previewed_command(saved):
    _, args, command = saved
    assert command.startswith("```bash\nllamafactory-cli train ")
    from_text = lf_config.check_config_now(command, username="alice")
    assert from_text == lf_config.check_config_now(args, username="alice")
