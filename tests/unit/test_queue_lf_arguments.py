"""The generated LLaMA-Factory argument table matches the installed llamafactory.

``scripts/generate_lf_arguments.py`` writes ``llmspawner/queue/lf_arguments.py`` from
llamafactory's own dataclasses; this test regenerates it in memory and fails when the committed
file differs (after an upgrade of llamafactory: run the script, the failure says how).
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "generate_lf_arguments.py"


def _script():
    spec = importlib.util.spec_from_file_location("generate_lf_arguments", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_table_is_what_the_installed_llamafactory_generates():
    pytest.importorskip("llamafactory")
    script = _script()
    committed = (ROOT / script.TARGET).read_text(encoding="utf-8")
    assert script.generate() == committed, (
        f"llmspawner/queue/lf_arguments.py is out of date for the installed llamafactory: "
        f"run {script.COMMAND}"
    )


def test_render_names_the_version_and_the_command():
    script = _script()
    text = script.render("1.2.3", {"ModelArguments": ("b", "a")}, ("sft",), {})
    namespace: dict = {}
    exec(compile(text, "lf_arguments.py", "exec"), namespace)  # noqa: S102 - our own output
    assert namespace["LLAMAFACTORY_VERSION"] == "1.2.3"
    assert namespace["STAGES"] == ("sft",)
    assert namespace["TRAIN_ARGUMENTS"] == frozenset({"a", "b"})
    assert script.COMMAND in text


def test_the_product_does_not_import_llamafactory():
    code = (
        "import sys, llmspawner.queue.lf_config, llmspawner.queue.lf_arguments\n"
        "assert 'llamafactory' not in sys.modules, 'llamafactory imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
