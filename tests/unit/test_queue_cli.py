"""``llmspawner queue ...``: URLs, requests sent, what is printed, exit statuses."""

from __future__ import annotations

import json

import httpx
import pytest

from llmspawner.cli import build_parser
from llmspawner.queue import cli

ENV = {
    "JUPYTERHUB_API_TOKEN": "secret-token",
    "LLMSPAWNER_QUEUE_URL": "http://hub:8000/services/llm-queue",
}
JOB = {
    "id": 12,
    "user": "alice",
    "state": "queued",
    "position": 2,
    "profile": "medium",
    "priority": "normal",
    "reason": "waiting for a free ½ GPU slice",
    "submitted_at": "2026-01-01T10:00:00Z",
    "k8s_job": None,
}


@pytest.mark.parametrize(
    ("env", "override", "url"),
    [
        (
            {"LLMSPAWNER_QUEUE_URL": "http://q/services/llm-queue"},
            None,
            "http://q/services/llm-queue/",
        ),
        (
            {"JUPYTERHUB_API_URL": "https://hub.example.org/hub/api"},
            None,
            "https://hub.example.org/services/llm-queue/",
        ),
        (
            {"JUPYTERHUB_API_URL": "https://h/base/hub/api/"},
            None,
            "https://h/base/services/llm-queue/",
        ),
        ({"LLMSPAWNER_QUEUE_URL": "http://q/"}, "http://other/x/", "http://other/x/"),
    ],
)
def test_queue_url(env, override, url):
    assert cli.queue_url(env, override) == url


def test_queue_url_needs_something():
    with pytest.raises(cli.CLIError, match="set LLMSPAWNER_QUEUE_URL") as e:
        cli.queue_url({})
    assert e.value.status == 2


def run(argv, handler, env=ENV):
    """Run ``llmspawner queue <argv>`` against ``handler(request) -> httpx.Response``."""
    seen = []

    def record(request):
        seen.append(request)
        return handler(request)

    args = build_parser().parse_args(["queue", *argv])
    status = cli.run(args, env=env, transport=httpx.MockTransport(record))
    return status, seen


def test_submit_sends_the_file_and_prints_the_job(tmp_path, capsys):
    path = tmp_path / "train.yaml"
    path.write_text("stage: sft\n")
    status, [request] = run(
        ["submit", str(path), "--profile", "medium", "--priority", "high"],
        lambda r: httpx.Response(201, json=JOB),
    )
    assert status == 0
    assert (request.method, str(request.url)) == (
        "POST",
        "http://hub:8000/services/llm-queue/api/jobs",
    )
    assert request.headers["Authorization"] == "token secret-token"
    assert json.loads(request.content) == {
        "config": "stage: sft\n",
        "profile": "medium",
        "priority": "high",
    }
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "job 12 of alice: queued (position 2 in the medium line)"
    assert "  reason: waiting for a free ½ GPU slice" in out


def test_errors_print_the_message_field_and_problems(tmp_path, capsys):
    path = tmp_path / "train.yaml"
    path.write_text("stage: magic\n")
    body = {
        "error": "2 problems",
        "field": "config.stage",
        "problems": [
            {"field": "stage", "message": "unknown stage"},
            {"field": "output_dir", "message": "is required"},
        ],
    }
    status, _ = run(
        ["submit", str(path), "--profile", "cpu"], lambda r: httpx.Response(400, json=body)
    )
    assert status == 1
    err = capsys.readouterr().err
    assert err == (
        "error: 2 problems (field: config.stage)\n"
        "  stage: unknown stage\n  output_dir: is required\n"
    )
    assert "secret-token" not in err


def test_list_prints_a_table(capsys):
    status, [request] = run(
        ["list", "--state", "queued", "--user", "alice"],
        lambda r: httpx.Response(200, json={"jobs": [JOB]}),
    )
    assert status == 0
    assert dict(request.url.params) == {"state": "queued", "user": "alice", "limit": "200"}
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "ID",
        "USER",
        "STATE",
        "POS",
        "PROFILE",
        "PRIORITY",
        "SUBMITTED",
        "REASON",
    ]
    assert lines[1].split()[:6] == ["12", "alice", "queued", "2", "medium", "normal"]


def test_show_json_cancel_and_limit(capsys):
    status, [request] = run(["--json", "show", "12"], lambda r: httpx.Response(200, json=JOB))
    assert (status, request.url.path) == (0, "/services/llm-queue/api/jobs/12")
    assert json.loads(capsys.readouterr().out) == JOB
    status, [request] = run(["cancel", "12"], lambda r: httpx.Response(200, json=JOB))
    assert (status, request.method) == (0, "DELETE")
    capsys.readouterr()
    status, [request] = run(
        ["limit", "a b/c", "2"],
        lambda r: httpx.Response(200, json={"user": "a b/c", "max_running": 2}),
    )
    assert request.url.raw_path == b"/services/llm-queue/api/users/a%20b%2Fc/limit"
    assert json.loads(request.content) == {"max_running": 2}
    assert capsys.readouterr().out == "a b/c: 2\n"


def test_logs_stream_to_stdout(capsysbinary):
    status, [request] = run(
        ["logs", "12", "-f", "--tail", "5"],
        lambda r: httpx.Response(200, content=b"step 1\nstep 2\n"),
    )
    assert status == 0
    assert dict(request.url.params) == {"follow": "1", "tail": "5"}
    assert capsysbinary.readouterr().out == b"step 1\nstep 2\n"


def test_logs_error(capsys):
    status, _ = run(
        ["logs", "12"],
        lambda r: httpx.Response(409, json={"error": "job 12 has no log", "field": "id"}),
    )
    assert (status, capsys.readouterr().err) == (1, "error: job 12 has no log (field: id)\n")


def test_proxy_errors_are_one_line(capsys):
    status, _ = run(["list"], lambda r: httpx.Response(503, text="<!DOCTYPE HTML><html>..."))
    assert status == 1
    assert capsys.readouterr().err == (
        "error: the queue answered 503 Service Unavailable (the service is not running; "
        "the hub restarts it: retry shortly)\n"
    )


def test_missing_token_and_unreachable(capsys):
    status, seen = run(
        ["list"], lambda r: httpx.Response(200), env={"LLMSPAWNER_QUEUE_URL": "http://q/"}
    )
    assert (status, seen) == (2, [])
    assert "JUPYTERHUB_API_TOKEN" in capsys.readouterr().err

    def refuse(request):
        raise httpx.ConnectError("connection refused")

    status, _ = run(["list"], refuse)
    assert status == 2
    assert capsys.readouterr().err.startswith(
        "error: cannot reach the queue at http://hub:8000/services/llm-queue/"
    )


def test_unreadable_config(capsys):
    status, seen = run(["submit", "/no/such.yaml", "--profile", "cpu"], lambda r: None)
    assert (status, seen) == (2, [])
    assert capsys.readouterr().err.startswith("error: cannot read /no/such.yaml")


def test_the_client_imports_no_server_module():
    """The in-pod client needs only the standard library, httpx and the queue's names."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import llmspawner.queue.cli as cli\n"
        "cli.add_arguments(__import__('argparse').ArgumentParser())\n"
        "cli.QueueClient('http://127.0.0.1:1/', 'token').close()\n"
        "server = ('tornado', 'sqlalchemy', 'kubernetes_asyncio', 'jupyterhub', 'kubespawner',\n"
        "          'traitlets', 'alembic', 'yaml')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in server)\n"
        "assert not loaded, loaded\n"
        "ours = sorted(m for m in sys.modules if m.startswith('llmspawner'))\n"
        "assert ours == ['llmspawner', 'llmspawner.queue', 'llmspawner.queue.cli',\n"
        "                'llmspawner.queue.limits', 'llmspawner.queue.render',\n"
        "                'llmspawner.queue.states'], ours\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("a: 1\nx: " + "a" * 70_000 + "\n", "max_config_bytes"),
        (
            "".join(" " * i + f"k{i}:\n" for i in range(40)) + " " * 40 + "x: 1\n",
            "max_config_depth",
        ),
        ('{"a": ' * 100 + "1" + "}" * 100, "max_config_depth"),
        ("a: &x [1, 2]\nb: *x\n", "yaml_aliases"),
    ],
    ids=["size", "yaml-depth", "json-depth", "alias"],
)
def test_submit_checks_the_limits_before_sending(tmp_path, capsys, text, limit):
    from llmspawner.queue import limits

    path = tmp_path / "train.yaml"
    path.write_text(text)
    status, seen = run(["submit", str(path), "--profile", "cpu"], lambda r: httpx.Response(201))
    assert (status, seen) == (1, [])
    err = capsys.readouterr().err
    with pytest.raises(limits.LimitExceeded) as e:
        limits.check_config_text(text)
    assert err == f"error: {e.value.message}\n"  # what the queue would answer
    assert f"({limit})" in err


def test_submit_leaves_other_problems_to_the_queue(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("a: [1, 2\n")
    status, [request] = run(
        ["submit", str(path), "--profile", "cpu"],
        lambda r: httpx.Response(400, json={"error": "not valid YAML", "field": "config"}),
    )
    assert status == 1
    assert json.loads(request.content)["config"] == "a: [1, 2\n"


SAVED_ARGS = """\
top.model_name: SmolLM2-135M-Instruct
top.finetuning_type: lora
top.template: default
train.training_stage: Supervised Fine-Tuning
train.dataset: [identity_demo]
train.dataset_dir: data
train.learning_rate: 5e-5
train.report_to: [mlflow]
"""


def test_submit_turns_llamaboards_saved_arguments_into_a_training_config(tmp_path, monkeypatch):
    import yaml

    (tmp_path / "llamaboard_config").mkdir()
    path = tmp_path / "llamaboard_config" / "mine.yaml"
    path.write_text(SAVED_ARGS)
    (tmp_path / "llamaboard_cache").mkdir()
    (tmp_path / "llamaboard_cache" / "user_config.yaml").write_text(
        "path_dict: {SmolLM2-135M-Instruct: /storage/models/smol}\n"
    )
    monkeypatch.chdir(tmp_path)
    status, [request] = run(
        ["submit", "llamaboard_config/mine.yaml", "--profile", "cpu"],
        lambda r: httpx.Response(201, json=JOB),
    )
    assert status == 0
    config = yaml.safe_load(json.loads(request.content)["config"])
    assert config["model_name_or_path"] == "/storage/models/smol"  # LlamaBoard's preset
    assert config["output_dir"].startswith("saves/SmolLM2-135M-Instruct/lora/queue_")
    assert (config["stage"], config["dataset"], config["learning_rate"]) == (
        "sft",
        "identity_demo",
        5e-5,
    )
    status, [request] = run(
        [
            "submit",
            str(path),
            "--profile",
            "cpu",
            "--model-path",
            "/storage/models/other",
            "--output-dir",
            "run-1",
        ],
        lambda r: httpx.Response(201, json=JOB),
    )
    config = yaml.safe_load(json.loads(request.content)["config"])
    assert config["model_name_or_path"] == "/storage/models/other"
    assert config["output_dir"] == "saves/SmolLM2-135M-Instruct/lora/run-1"


def test_bad_saved_arguments_are_refused_before_sending(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text(SAVED_ARGS.replace("5e-5", "fast"))
    status, seen = run(["submit", str(path), "--profile", "cpu"], lambda r: httpx.Response(201))
    assert (status, seen) == (1, [])
    assert "train.learning_rate: must be a number, not 'fast'" in capsys.readouterr().err


def test_saved_arguments_are_converted_in_a_pod_without_kubespawner(tmp_path):
    """The user's image has no kubespawner (nor the hub's other packages): the conversion
    must not need them; the shared models folder comes from the pod's LLMSPAWNER_MODELS_DIR."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('kubespawner', 'tornado', 'sqlalchemy', 'jupyterhub'):\n"
        "    sys.modules[name] = None  # importing them fails\n"
        "from llmspawner.queue import cli\n"
        f"text = open({str(tmp_path / 'mine.yaml')!r}).read()\n"
        "print(cli.from_llamaboard(text, models_dir='/models', stamp='s'))\n"
    )
    (tmp_path / "mine.yaml").write_text(SAVED_ARGS)
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert "model_name_or_path: /models/SmolLM2-135M-Instruct\n" in out
    assert "output_dir: saves/SmolLM2-135M-Instruct/lora/queue_s\n" in out
