"""``llmspawner deploy check`` and ``profiles check`` run with only the ``deploy`` extra.

docs/deploy.md has operators install ``pip install '.[deploy]'`` (kubernetes-validate,
jsonschema, pyyaml, plus the core traitlets) on a workstation and run the checks there. Here
the two commands run in a subprocess in which every package that only the ``hub``,
``singleuser`` or ``dev`` extras bring is made unimportable, so an import of one of them on
the way (as happened once through ``settings`` → ``tracking`` → ``storage`` → kubespawner)
fails this test instead of an operator's first command.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Top-level modules of the other extras' packages (pyproject.toml), none of them in [deploy].
NOT_IN_DEPLOY = (
    "kubespawner",
    "jupyterhub",
    "tornado",
    "kubernetes_asyncio",
    "oauthenticator",
    "jupyterhub_idle_culler",
    "sqlalchemy",
    "alembic",
    "httpx",
    "mlflow",
    "jupyter_server_proxy",
    "psutil",
    "llamafactory",
)

_RUN = """
import importlib.abc, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("not in the deploy extra: " + name)
        return None

sys.meta_path.insert(0, Blocked())
from llmspawner.cli import main
sys.exit(main({argv!r}))
"""


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    code = _RUN.format(blocked=NOT_IN_DEPLOY, argv=argv)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_deploy_check_runs_with_the_deploy_extra_only():
    result = _run(["deploy", "check", "--values", "helm-values.yaml"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("deploy check: no problems (helm-values.yaml"), result.stdout


def test_profiles_check_runs_with_the_deploy_extra_only():
    result = _run(["profiles", "check", "profiles"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 profiles" in result.stdout + result.stderr, result.stdout + result.stderr
