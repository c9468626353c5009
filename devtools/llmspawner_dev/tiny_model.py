"""A tiny LLaMA model, its tokenizer and a 20-example dataset, written offline in a second.

Fine-tuning needs a base model, a tokenizer and a dataset; the real ones are gigabytes and come
from the Hugging Face Hub, which tests and the dev stack never reach. This module writes
stand-ins that LLaMA-Factory loads exactly as it loads a real checkpoint folder:

- :func:`write_tiny_model`: a ``LlamaForCausalLM`` with random weights (hidden size 32, 2
  layers, ~40 k parameters, ~200 KB of safetensors) and a byte-level BPE tokenizer trained on
  the dataset's own text (every string is encodable: no ``<unk>``), with ``<s>``, ``</s>``,
  ``<pad>`` and a chat template;
- :func:`write_tiny_dataset`: 20 instruction/answer pairs in the alpaca format plus the
  ``dataset_info.json`` that LLaMA-Factory reads from ``dataset_dir``
  (https://github.com/hiyouga/LLaMA-Factory/blob/main/data/README.md);
- :func:`lora_sft_config`: a LoRA SFT training config for them that runs in seconds on a CPU
  (a few steps, 64-token sequences).

Both writers are deterministic (fixed seed, fixed training text), so two calls write the same
files. Nothing is downloaded; run LLaMA-Factory with ``HF_HUB_OFFLINE=1`` to be sure it does
not try either.

It lives in :mod:`llmspawner_dev` (not under ``tests/``) because ``llmspawner dev`` may seed the
demo stack's shared ``models/`` folder with it, as the e2e tests do. ``transformers``,
``tokenizers`` and ``torch`` come with the ``dev`` extra (LLaMA-Factory) and are imported only
when a writer is called.

Usage::

    write_tiny_model(pvc / "models" / TINY_MODEL_NAME)
    write_tiny_dataset(pvc / "users" / "alice" / "data")
    config = lora_sft_config(
        model=f"/storage/models/{TINY_MODEL_NAME}", dataset_dir="data", output_dir="out/tiny"
    )
"""

from __future__ import annotations

import json
from pathlib import Path

#: Folder name of the tiny model under the shared ``models/`` folder (a suggestion).
TINY_MODEL_NAME = "tiny-llama"
#: Name of the dataset in ``dataset_info.json`` (what a training config's ``dataset`` names).
TINY_DATASET_NAME = "tiny_alpaca"
#: File of the dataset's examples, next to ``dataset_info.json``.
TINY_DATASET_FILE = "tiny_alpaca.json"
#: The LLaMA-Factory chat template the model is fine-tuned with (``Human: ... Assistant:``).
TINY_TEMPLATE = "default"

#: Special tokens of the tiny tokenizer, in id order (``<unk>`` is 0, ``<s>`` 1, ...).
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")

#: A simple chat template (the LLaMA-Factory ``default`` template's format), so that chat UIs
#: and ``apply_chat_template`` work with the tiny tokenizer too.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ 'System: ' + message['content'] + eos_token + '\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ 'Human: ' + message['content'] + eos_token + '\nAssistant:' }}"
    "{% else %}{{ message['content'] + eos_token + '\n' }}{% endif %}{% endfor %}"
)

_COLOURS = ("red", "green", "blue", "yellow", "black")
_NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def tiny_examples() -> list[dict[str, str]]:
    """Return the 20 alpaca-format examples (``instruction``, ``input``, ``output``).

    Ten "add one" sums and ten colour questions: short, varied, and fixed.
    """
    examples = []
    for i, word in enumerate(_NUMBERS[:-1] + ("zero",)):
        nxt = _NUMBERS[i + 1] if i + 1 < len(_NUMBERS) else "one"
        examples.append(
            {"instruction": "Add one to the number.", "input": word, "output": f"It is {nxt}."}
        )
    things = ("sky", "grass", "sun", "night", "blood")
    answers = ("blue", "green", "yellow", "black", "red")
    for thing, colour in zip(things, answers, strict=True):
        examples.append(
            {
                "instruction": f"What colour is the {thing}?",
                "input": "",
                "output": f"The {thing} is {colour}.",
            }
        )
        examples.append(
            {
                "instruction": "Name a colour that is not this one.",
                "input": colour,
                "output": next(c for c in _COLOURS if c != colour).capitalize() + ".",
            }
        )
    assert len(examples) == 20
    return examples


def _training_text() -> list[str]:
    """Text the tokenizer is trained on: the dataset and the chat templates' fixed words."""
    lines = ["Human: Assistant: System: You are a helpful assistant."]
    for example in tiny_examples():
        lines.extend(v for v in example.values() if v)
    return lines


def _build_tokenizer(vocab_size: int):
    """Train a byte-level BPE tokenizer (``tokenizers``) and wrap it for ``transformers``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    unk, bos, eos, pad = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=unk,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        chat_template=CHAT_TEMPLATE,
        model_max_length=256,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def write_tiny_model(
    path: Path | str,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    vocab_size: int = 400,
    seed: int = 0,
) -> Path:
    """Write a tiny LLaMA-architecture causal LM with random weights and its tokenizer.

    The folder is a regular Hugging Face checkpoint (``config.json``,
    ``generation_config.json``, ``model.safetensors``, ``tokenizer.json``,
    ``tokenizer_config.json``, ``special_tokens_map.json``), loadable with
    ``AutoModelForCausalLM.from_pretrained(path)`` and as a LLaMA-Factory
    ``model_name_or_path``; weights are float32 (CPU training).

    Args:
        path: the folder to write (created with its parents; existing files are replaced).
        hidden_size: the model width; ``num_heads`` must divide it.
        num_layers: decoder layers.
        num_heads: attention heads (and key/value heads).
        vocab_size: the tokenizer's target size (256 byte symbols + 4 special tokens + merges;
            the model's embedding has exactly the tokenizer's size).
        seed: seed of the random weights (same seed, same files).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``num_heads`` does not divide ``hidden_size``, or ``vocab_size`` is below
            the 260 symbols the byte-level tokenizer needs.
    """
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} is below {256 + len(SPECIAL_TOKENS)}")
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    # fork_rng: the caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=16,
    )
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    # safetensors writes 0600; the shared models/ folder is read by every user's pods.
    for written in path.iterdir():
        written.chmod(0o644)
    return path


def write_tiny_dataset(path: Path | str, *, name: str = TINY_DATASET_NAME) -> Path:
    """Write the 20 examples and ``dataset_info.json`` into ``path`` (a ``dataset_dir``).

    An existing ``dataset_info.json`` there is kept and gets the entry ``name`` added (or
    replaced), so other datasets in the folder stay usable.

    Args:
        path: the folder (created with its parents).
        name: the dataset's name in ``dataset_info.json``; the examples go to
            ``<name>.json`` (default :data:`TINY_DATASET_FILE`).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    file_name = f"{name}.json"
    (path / file_name).write_text(json.dumps(tiny_examples(), indent=1) + "\n")
    info_path = path / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    # The alpaca format's columns are LLaMA-Factory's defaults (instruction, input, output).
    info[name] = {"file_name": file_name}
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return path


def lora_sft_config(
    *,
    model: str,
    dataset_dir: str,
    output_dir: str,
    dataset: str = TINY_DATASET_NAME,
    max_steps: int = 2,
    cutoff_len: int = 64,
    report_to: str = "mlflow",
    run_name: str | None = None,
) -> dict:
    """Return a LLaMA-Factory LoRA SFT config for the tiny model that runs in seconds on a CPU.

    The keys are LLaMA-Factory 0.9.5 arguments (``llamafactory-cli train`` reads them from a
    YAML file): ``max_steps`` steps of batch size 2 on ``cutoff_len``-token sequences, a loss
    logged every step (so MLflow gets a ``loss`` metric), the adapter saved at the end into
    ``output_dir`` (``adapter_model.safetensors``, ``adapter_config.json``).

    Args:
        model: ``model_name_or_path`` (the folder written by :func:`write_tiny_model`).
        dataset_dir: the folder written by :func:`write_tiny_dataset`.
        output_dir: where the adapter and trainer state are saved (overwritten).
        dataset: the dataset's name in ``dataset_info.json``.
        max_steps: optimizer steps.
        cutoff_len: tokens per example (prompt + answer, truncated).
        report_to: ``"mlflow"`` (set ``MLFLOW_TRACKING_URI``/``MLFLOW_EXPERIMENT_NAME``) or
            ``"none"``.
        run_name: the MLflow run's name (``None``: the trainer's default, ``output_dir``).

    Returns:
        A new dict.
    """
    config = {
        "model_name_or_path": model,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "lora_rank": 4,
        "dataset": dataset,
        "dataset_dir": dataset_dir,
        "template": TINY_TEMPLATE,
        "cutoff_len": cutoff_len,
        "overwrite_cache": True,
        "output_dir": output_dir,
        "overwrite_output_dir": True,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_steps": max_steps,
        "learning_rate": 1.0e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": report_to,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "bf16": False,
        "fp16": False,
    }
    if run_name is not None:
        config["run_name"] = run_name
    return config


__all__ = [
    "TINY_MODEL_NAME",
    "TINY_DATASET_NAME",
    "TINY_DATASET_FILE",
    "TINY_TEMPLATE",
    "tiny_examples",
    "write_tiny_model",
    "write_tiny_dataset",
    "lora_sft_config",
]
