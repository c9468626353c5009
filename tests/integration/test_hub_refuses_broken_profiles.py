"""A real ``jupyterhub`` process refuses to start on a broken profile, naming file and field,
and on a bad platform setting, naming the setting."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def start_hub(cwd: Path, **variables: str) -> subprocess.CompletedProcess:
    """Run ``jupyterhub -f jupyterhub_config.py`` in ``cwd`` with ``variables`` as the only
    ``LLMSPAWNER_*``/``OAUTH*`` variables; return when it has exited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMSPAWNER_", "OAUTH"))}
    env.update(variables)
    jupyterhub = Path(sys.executable).parent / "jupyterhub"
    return subprocess.run(
        [
            str(jupyterhub),
            "-f",
            str(ROOT / "jupyterhub_config.py"),
            "--JupyterHub.db_url=sqlite://",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_hub_exits_with_the_profile_error(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "cpu.yaml").write_text("slug: cpu\ndisplay_name: CPU\ndefault: true\n")
    (profiles / "half.yaml").write_text("slug: half\ndisplay_name: Half\ngpu: {fraction: 1/3}\n")
    result = start_hub(tmp_path, LLMSPAWNER_PROFILES_DIR=str(profiles))
    assert result.returncode != 0
    assert (
        "llmspawner: invalid GPU profile: half.yaml: gpu.fraction: '1/3' is not offered by the "
        "cluster; allowed: 1/2, 1/4" in result.stderr + result.stdout
    )
    # It stopped while loading its config: no proxy was started, no database written.
    assert not (tmp_path / "jupyterhub.sqlite").exists()


def test_hub_exits_naming_a_bad_setting(tmp_path):
    """A bad platform setting (here from the environment) stops the hub, naming it."""
    result = start_hub(tmp_path, LLMSPAWNER_MIG_STRATEGY="full")
    assert result.returncode != 0
    assert (
        "llmspawner: LLMPlatform.mig_strategy (LLMSPAWNER_MIG_STRATEGY) expected any of "
        "['mixed', 'single'], not the str 'full'." in result.stderr + result.stdout
    )
    assert not (tmp_path / "jupyterhub.sqlite").exists()
