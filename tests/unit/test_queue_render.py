"""``llmspawner queue render``: the ConfigMap and Job of a submission, offline (no queue, no
token, no cluster), valid for Kubernetes 1.32 and the newest schema kubernetes-validate has,
and the Job the control loop would create (``job_manifests``)."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from llmspawner.cli import main
from llmspawner.queue import render as render_mod

CONFIG = """\
stage: sft
do_train: true
model_name_or_path: /storage/models/tiny
dataset: demo
template: default
finetuning_type: lora
output_dir: saves/tiny/lora/run1
max_steps: 30
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(CONFIG)
    return str(path)


def run(capsys, monkeypatch, *argv):
    for name in ("JUPYTERHUB_API_TOKEN", "LLMSPAWNER_QUEUE_URL", "LLMSPAWNER_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    code = main(["queue", "render", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("priority", ["high", "low"])
def test_render_prints_a_valid_configmap_and_job_offline(capsys, monkeypatch, config, priority):
    code, out, err = run(
        capsys,
        monkeypatch,
        config,
        "--user",
        "alice",
        "--profile",
        "cpu",
        "--priority",
        priority,
        "--image",
        "train:1",
        "--mlflow-tracking-uri",
        "http://mlflow:5000",
    )
    assert (code, err) == (0, "")
    assert out.startswith("# llmspawner queue render: job 1 of alice on profile cpu")
    config_map, job = yaml.safe_load_all(out)
    for obj in (config_map, job):
        for version in ("1.32", latest_version()):
            kubernetes_validate.validate(obj, version, strict=True)
    assert config_map["metadata"]["name"] == job["metadata"]["name"] == "llm-job-alice-1"
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["podFailurePolicy"] == {
        "rules": [
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            }
        ]
    }
    pod = spec["template"]["spec"]
    assert (pod["restartPolicy"], pod["priorityClassName"]) == ("Never", f"llm-{priority}")
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    prepared = yaml.safe_load(config_map["data"]["config.yaml"])
    assert prepared["output_dir"] == "/storage/users/alice/saves/tiny/lora/run1"
    assert prepared["save_steps"] == 100 and "overwrite_output_dir" not in prepared
    assert (prepared["report_to"], prepared["run_name"]) == ("mlflow", "llm-job-alice-1")


def test_render_of_a_later_attempt_names_its_job(capsys, monkeypatch, config):
    code, out, _ = run(
        capsys, monkeypatch, config, "--user", "alice", "--profile", "cpu", "--image", "t:1",
        "--job-id", "12", "--attempt", "3",
    )  # fmt: skip
    assert code == 0
    _, job = yaml.safe_load_all(out)
    assert job["metadata"]["name"] == "llm-job-alice-12-a3"


def test_render_is_the_job_the_loop_creates(capsys, monkeypatch, config):
    from llmspawner.queue.context import QueueSettings
    from llmspawner.queue.control import job_manifests
    from llmspawner.queue.lf_config import check_config_now

    code, out, _ = run(
        capsys, monkeypatch, config, "--user", "bob", "--profile", "cpu", "--image", "t:1"
    )
    assert code == 0
    args = main.__globals__["build_parser"]().parse_args(
        ["queue", "render", config, "--user", "bob", "--profile", "cpu", "--image", "t:1"]
    )
    platform = render_mod.settings_from_args(args, env={})
    [profile] = [p for p in platform.load_profiles() if p.slug == "cpu"]
    prepared = check_config_now(CONFIG, username="bob")
    prepared["run_name"] = "llm-job-bob-1"
    expected = job_manifests(
        job_id=1,
        username="bob",
        name="llm-job-bob-1",
        config=prepared,
        priority="normal",
        profile=profile,
        platform=platform,
        settings=QueueSettings(),
        namespace="default",
    )
    assert list(yaml.safe_load_all(out)) == list(expected)


def test_render_refuses_an_unknown_profile_and_a_bad_config(capsys, monkeypatch, config, tmp_path):
    code, out, err = run(
        capsys, monkeypatch, config, "--user", "alice", "--profile", "huge", "--image", "t:1"
    )
    assert (code, out) == (2, "")
    assert "unknown profile 'huge' for alice; allowed: cpu" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG + "overwrite_output_dir: 3\noutput_dir: /etc\n")
    code, out, err = run(
        capsys, monkeypatch, str(bad), "--user", "alice", "--profile", "cpu", "--image", "t:1"
    )
    assert (code, out) == (2, "")
    assert "overwrite_output_dir: must be true or false" in err and "output_dir" in err
