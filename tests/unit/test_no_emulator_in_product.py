"""The ``llmspawner`` package (what the hub and user images install) has no emulator code.

The emulated cluster (``devcluster``) and the dev stack (``llmspawner_dev``) live in
``devtools/``, their own distribution ``llmspawner-devtools`` (issue 11). Here, without
building anything: no file of ``llmspawner/`` imports them at module level (only
``llmspawner/cli.py`` may, lazily, as optional subcommands), and every module of the package
imports with both of them made unimportable. ``tests/integration/test_packaging.py`` checks
the built wheel, the images' Dockerfiles and an installed ``[hub]``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "llmspawner"
EMULATOR = ("devcluster", "llmspawner_dev")
#: The one module that may name them: optional subcommands, imported when run.
OPTIONAL_USERS = {PACKAGE / "cli.py"}
#: Python files of the package that are config files (run by a tool, never imported).
CONFIG_FILES = {"llmspawner.culler_config"}


def _emulator_imports(tree: ast.AST) -> list[tuple[int, str, bool]]:
    """``(line, module, at_module_level)`` of each import of an emulator package."""
    found = []

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
            for name in names:
                if name.split(".")[0] in EMULATOR:
                    found.append((child.lineno, name, module_level))
            inner = module_level and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            visit(child, inner)

    visit(tree, True)
    return found


def test_no_product_module_imports_the_emulator():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, name, module_level in _emulator_imports(ast.parse(path.read_text(), str(path))):
            if path in OPTIONAL_USERS and not module_level:
                continue
            problems.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    assert problems == []


def test_the_import_check_sees_imports():
    tree = ast.parse("import devcluster.x\ndef f():\n    from llmspawner_dev import a\n")
    assert _emulator_imports(tree) == [(1, "devcluster.x", True), (3, "llmspawner_dev", False)]


_IMPORT_ALL = """
import importlib, importlib.abc, json, pkgutil, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {emulator!r}:
            raise ImportError("emulator package imported: " + name)
        return None

sys.meta_path.insert(0, Blocked())
import llmspawner
names, failed = [], {{}}
for info in pkgutil.walk_packages(llmspawner.__path__, "llmspawner."):
    if info.name.endswith("__main__") or info.name in {config_files!r}:
        continue
    names.append(info.name)
    try:
        importlib.import_module(info.name)
    except Exception as e:
        failed[info.name] = type(e).__name__ + ": " + str(e)
print(json.dumps({{"modules": names, "failed": failed}}))
"""


def test_every_product_module_imports_without_the_emulator():
    code = _IMPORT_ALL.format(emulator=EMULATOR, config_files=CONFIG_FILES)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["failed"] == {}
    assert {"llmspawner.spawner", "llmspawner.hubconfig", "llmspawner.cli"} <= set(
        report["modules"]
    )
