"""The e2e harness itself (llmspawner_dev): child processes, builders, CLI. Fast, no stack."""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from pathlib import Path

import kubernetes_asyncio.client
import pytest

from devcluster.testing import WaitTimeout, pid_alive, wait_for, wait_until
from llmspawner import cli
from llmspawner_dev import parts
from llmspawner_dev.kube import KubeClient, KubeError
from llmspawner_dev.processes import (
    ChildProcess,
    StartupError,
    find_strays,
    free_port,
    kill_strays,
    wait_http,
    wait_json_line,
)
from llmspawner_dev.reaper import start_reaper
from llmspawner_dev.smoke import gradio_config
from llmspawner_dev.stack import DEFAULT_MLFLOW_MODE, MARKER_ENV, DevStack


def test_free_port_can_be_bound():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_stop_ends_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    child = ChildProcess(
        "sleepers",
        ["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"],
        log_path=tmp_path / "logs" / "sleepers.log",
    ).start()
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "the pid file", 0.05)
    grandchild = int(pidfile.read_text())
    assert child.running and pid_alive(grandchild)

    assert child.stop(grace=5) == -signal.SIGTERM
    assert not child.running
    time.sleep(0.2)
    assert not pid_alive(grandchild)
    assert child.stop() == -signal.SIGTERM  # a second stop is harmless


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path):
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ign' + 'oring', flush=True); time.sleep(300)"
    )
    child = ChildProcess(
        "stubborn", [sys.executable, "-c", code], log_path=tmp_path / "stubborn.log"
    ).start()
    wait_until(lambda: "\nignoring" in child.log_tail(), 10, "the child ignores SIGTERM", 0.05)
    t0 = time.monotonic()
    assert child.stop(grace=0.5) == -signal.SIGKILL
    assert time.monotonic() - t0 < 5


def test_wait_json_line_returns_the_ready_line(tmp_path):
    line = json.dumps({"url": "http://127.0.0.1:1", "kubeconfig": "/k", "data_dir": "/d"})
    child = ChildProcess(
        "printer",
        ["sh", "-c", f"echo starting >&2; echo '{line}'; sleep 300"],
        log_path=tmp_path / "printer.log",
    ).start()
    try:
        info = wait_json_line(
            child.log_path, keys=("url", "kubeconfig", "data_dir"), timeout=10, process=child
        )
        assert info == {"url": "http://127.0.0.1:1", "kubeconfig": "/k", "data_dir": "/d"}
    finally:
        child.stop(grace=2)


def test_a_part_that_exits_fails_with_its_log_tail(tmp_path):
    child = ChildProcess(
        "broken",
        ["sh", "-c", "echo 'the reason it broke'; exit 3"],
        log_path=tmp_path / "broken.log",
    ).start()
    with pytest.raises(StartupError) as info:
        wait_http(f"http://127.0.0.1:{free_port()}/health", timeout=10, process=child)
    assert info.value.part == "broken"
    assert "exited with status 3" in str(info.value)
    assert "the reason it broke" in info.value.log_tail


def test_a_part_that_is_not_ready_in_time_fails(tmp_path):
    child = ChildProcess("slow", ["sleep", "300"], log_path=tmp_path / "slow.log").start()
    try:
        with pytest.raises(StartupError, match=r"slow: GET .* not ready after 1 s"):
            wait_http(f"http://127.0.0.1:{free_port()}/", timeout=1, process=child)
    finally:
        child.stop(grace=2)


def test_kill_strays_ends_processes_in_their_own_session(tmp_path):
    marker = (MARKER_ENV, "test-strays")
    env = parts.base_environment({"PATH": "/usr/bin:/bin"}, marker=marker)
    # A process that left its parent's group, as configurable-http-proxy or a pod does.
    stray = ChildProcess("stray", ["sleep", "300"], log_path=tmp_path / "stray.log", env=env)
    stray.start()
    assert find_strays(marker=marker) == [stray.pid]
    assert kill_strays(marker=marker) == [stray.pid]
    assert stray.popen.wait(5) == -signal.SIGTERM
    assert find_strays(marker=marker) == []


def test_oidc_command_offers_the_users_with_their_claims():
    argv = parts.oidc_command(host="127.0.0.1", port=9400, users=[{"sub": "alice", "x": [1]}])
    assert argv[1:] == [
        "-m",
        "llmspawner_dev.oidc",
        "--host",
        "127.0.0.1",
        "--port",
        "9400",
        "--user-claims",
        '{"sub":"alice","x":[1]}',
    ]
    with pytest.raises(ValueError, match="has no 'sub'"):
        parts.oidc_command(host="127.0.0.1", port=1, users=[{"name": "x"}])


def test_hub_environment_is_the_config_contract():
    env = parts.hub_environment(
        kubeconfig="/w/cluster/kubeconfig",
        namespace="default",
        mlflow_url="http://127.0.0.1:5000",
        oidc_issuer="http://127.0.0.1:9400",
        oidc_endpoints={
            "authorization_endpoint": "http://127.0.0.1:9400/oauth2/authorize",
            "token_endpoint": "http://127.0.0.1:9400/oauth2/token",
            "userinfo_endpoint": "http://127.0.0.1:9400/userinfo",
        },
        hub_url="http://127.0.0.1:8000",
        base_config=Path("/repo/jupyterhub_config.py"),
    )
    assert env == {
        "KUBECONFIG": "/w/cluster/kubeconfig",
        "LLMSPAWNER_NAMESPACE": "default",
        "LLMSPAWNER_MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "LLMSPAWNER_DEV_BASE_CONFIG": "/repo/jupyterhub_config.py",
        "LLMSPAWNER_ALLOW_ALL": "1",
        "LLMSPAWNER_OIDC_ISSUER": "http://127.0.0.1:9400",
        "LLMSPAWNER_OIDC_USERNAME_CLAIM": "sub",
        "OAUTH2_AUTHORIZE_URL": "http://127.0.0.1:9400/oauth2/authorize",
        "OAUTH2_TOKEN_URL": "http://127.0.0.1:9400/oauth2/token",
        "OAUTH2_USERDATA_URL": "http://127.0.0.1:9400/userinfo",
        "OAUTH_CLIENT_ID": "llmspawner-dev",
        "OAUTH_CLIENT_SECRET": "llmspawner-dev-secret",
        "OAUTH_CALLBACK_URL": "http://127.0.0.1:8000/hub/oauth_callback",
    }


def test_hub_command_keeps_state_in_the_workdir():
    argv = parts.hub_command(
        config_file=Path("/repo/jupyterhub_config.py"),
        workdir=Path("/w"),
        host="127.0.0.1",
        port=8000,
        hub_port=8081,
        proxy_api_port=8001,
        extra_args=["--debug"],
    )
    assert argv[0].endswith("/jupyterhub")
    assert argv[1:] == [
        "-f",
        "/repo/jupyterhub_config.py",
        "--JupyterHub.bind_url=http://127.0.0.1:8000",
        "--JupyterHub.hub_bind_url=http://127.0.0.1:8081",
        "--JupyterHub.db_url=sqlite:////w/jupyterhub.sqlite",
        "--JupyterHub.cookie_secret_file=/w/jupyterhub_cookie_secret",
        "--JupyterHub.pid_file=/w/jupyterhub.pid",
        "--ConfigurableHTTPProxy.api_url=http://127.0.0.1:8001",
        "--ConfigurableHTTPProxy.pid_file=/w/jupyterhub-proxy.pid",
        "--debug",
    ]


def test_kube_client_reads_a_kubeconfig_with_kubernetes_asyncio(tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: dev\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:6443/'}}]\n"
        "contexts: [{name: dev, context: {cluster: c, user: u}}]\n"
        "users: [{name: u, user: {token: abc}}]\n"
    )
    with KubeClient.from_kubeconfig(path) as kube:
        assert kube.server == "http://127.0.0.1:6443"
        assert isinstance(kube.api_client, kubernetes_asyncio.client.ApiClient)
        assert kube.api_client.configuration.api_key["BearerToken"] == "Bearer abc"
    with pytest.raises(KubeError, match="kubeconfig .*nope"):
        KubeClient.from_kubeconfig(path, context="nope")


def test_kube_client_says_when_the_cluster_is_unreachable(tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: dev\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{free_port()}'}}}}]\n"
        "contexts: [{name: dev, context: {cluster: c, user: u}}]\n"
        "users: [{name: u, user: {token: abc}}]\n"
    )
    with KubeClient.from_kubeconfig(path) as kube, pytest.raises(KubeError) as info:
        kube.list_pods("default")
    assert info.value.status == 0


def test_wait_until_returns_the_first_truthy_value():
    calls = []
    assert wait_until(lambda: calls.append(1) or len(calls) >= 3 and "done", 5, "x", 0.01) == "done"
    assert len(calls) == 3


def test_wait_until_names_what_it_awaited_and_the_last_ignored_error():
    def flaky():
        raise ConnectionError("refused")

    with pytest.raises(WaitTimeout) as info:
        wait_until(flaky, 0.05, "the service answers", 0.01, ignore=(ConnectionError,))
    assert str(info.value) == (
        "the service answers: not within 0.05 s (last error: ConnectionError: refused)"
    )
    # A test failure and a timeout alike.
    assert isinstance(info.value, AssertionError) and isinstance(info.value, TimeoutError)
    with pytest.raises(ValueError):
        wait_until(lambda: int("x"), 1, "an error not ignored propagates")


async def test_wait_for_takes_sync_and_async_predicates():
    async def later():
        return "async"

    assert await wait_for(later, 1) == "async"
    assert await wait_for(lambda: "sync", 1) == "sync"

    def never():
        return None

    with pytest.raises(WaitTimeout, match="condition never: not within 0.05 s"):
        await wait_for(never, 0.05)


def test_gradio_config_is_read_from_the_page():
    html = (
        '<script>window.gradio_config = {"root": "http://h/user/a/llamaboard", "title": "T"};'
        "</script>"
    )
    assert gradio_config(html) == {"root": "http://h/user/a/llamaboard", "title": "T"}
    assert gradio_config("<html></html>") is None


def test_cli_dispatches_dev_and_devcluster(monkeypatch):
    args = cli.build_parser().parse_args(["dev", "--smoke", "--workdir", "/tmp/x"])
    assert (args.command, args.smoke, args.workdir, args.timeout) == (
        "dev",
        True,
        Path("/tmp/x"),
        120.0,
    )
    assert cli.build_parser().parse_args(["dev", "--smoke"]).workdir is None
    seen = []
    monkeypatch.setattr(cli, "_run_devcluster", lambda args: seen.append(args.rest) or 0)
    assert cli.main(["devcluster", "--data-dir", "/d", "--port", "0"]) == 0
    assert seen == [["--data-dir", "/d", "--port", "0"]]
    for argv in ([], ["dev", "--nope"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2


def test_stack_refuses_a_missing_config_file_before_starting_anything(tmp_path):
    stack = DevStack(tmp_path / "w", config_file=tmp_path / "nope.py")
    with pytest.raises(RuntimeError, match="nope.py does not exist"):
        stack.start()
    assert stack.processes == {}


@pytest.mark.parametrize("mlflow", ["process", "pod"])
def test_stack_that_fails_to_start_leaves_no_process(tmp_path, mlflow):
    stack = DevStack(tmp_path / "w", timeout=0.5, mlflow=mlflow)
    with pytest.raises(StartupError) as info:
        stack.start()
    # The first part not ready within half a second (MLflow takes seconds, the others less).
    # The process way starts MLflow once the cluster says where pods reach this machine (N);
    # the pod way has no MLflow process: it is a pod of the cluster (K).
    assert info.value.part in {"cluster", "oidc", "mlflow"}
    assert {"cluster", "oidc"} <= set(stack.processes) <= {"cluster", "mlflow", "oidc"}
    if mlflow == "pod":
        assert "mlflow" not in stack.processes
    if "mlflow" in stack.processes:
        assert (stack.logs_dir / "mlflow.log").is_file()
    assert "not ready after 0.5 s" in str(info.value)
    assert not any(child.running for child in stack.processes.values())
    assert find_strays(marker=stack.marker, under=stack.workdir) == []


def test_the_stacks_mlflow_mode_comes_from_its_setting(tmp_path):
    # K: LLMSPAWNER_MLFLOW (pod: the deploy kit's Deployment; process: mlflow server).
    assert DevStack(tmp_path, environ={"LLMSPAWNER_MLFLOW": "pod"}).mlflow_mode == "pod"
    assert DevStack(tmp_path, environ={"LLMSPAWNER_MLFLOW": "process"}).mlflow_mode == "process"
    assert DevStack(tmp_path, environ={}).mlflow_mode == DEFAULT_MLFLOW_MODE
    assert DevStack(
        tmp_path, environ={"LLMSPAWNER_MLFLOW": "pod"}, mlflow="process"
    ).mlflow_mode == ("process")
    with pytest.raises(ValueError, match="LLMSPAWNER_MLFLOW must be one of pod, process"):
        DevStack(tmp_path, environ={"LLMSPAWNER_MLFLOW": "docker"})


def test_reaper_ends_the_stack_when_its_pipe_closes(tmp_path):
    # The pipe closes when the stack stops, and also when its process is killed with SIGKILL.
    marker = (MARKER_ENV, "test-reaper")
    env = {"PATH": "/usr/bin:/bin"}
    reaper = start_reaper(marker=marker, under=tmp_path, env=env)
    part = ChildProcess(
        "part",
        ["sleep", "300"],
        log_path=tmp_path / "part.log",
        env=parts.base_environment(env, marker=marker),
    ).start()
    time.sleep(0.5)
    assert reaper.poll() is None and part.running
    reaper.stdin.close()
    assert reaper.wait(15) == 0
    assert part.popen.wait(5) == -signal.SIGTERM


def test_instructions_print_the_mlflow_url_users_open():
    """``make dev`` prints MLflow's URL behind the hub's login, not MLflow's own port."""
    from types import SimpleNamespace

    from llmspawner_dev.command import _instructions

    stack = SimpleNamespace(
        logs_dir="/w/logs",
        hub_url="http://127.0.0.1:8000",
        mlflow_url="http://127.0.0.1:5000/services/mlflow",
        oidc_issuer="http://127.0.0.1:9400",
        cluster_url="https://127.0.0.1:6443",
        kubeconfig="/w/kubeconfig",
        pvc_path=lambda: "/w/pvc",
    )
    text = _instructions(stack)
    assert "  MLflow:      http://127.0.0.1:8000/services/mlflow/\n" in text
    assert "5000" not in text


def test_start_waits_for_the_service_routes_and_names_the_missing_one(tmp_path):
    """After ``/hub/health`` the stack waits until MLflow's and the queue's routes answer
    through the proxy; one that never does is a StartupError naming its URL, with the hub's
    log tail. A service turned off in the hub's environment is not awaited."""
    import http.server
    import threading

    answers = {"/services/mlflow/health": (200, b"OK")}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            code, body = answers.get(self.path, (404, b"the hub: no such page"))
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    class Hub:
        name = "hub"

        def check_running(self):
            pass

        def log_tail(self):
            return "Cannot connect to managed service llm-queue"

    stack = DevStack.__new__(DevStack)
    stack.hub_url = f"http://127.0.0.1:{server.server_address[1]}"
    stack.timeout = 1.0
    steps = []
    stack.on_step = steps.append
    try:
        with pytest.raises(StartupError) as err:
            stack._wait_service_routes(Hub(), {}, time.monotonic())
        assert "/services/llm-queue/api/jobs not ready after 1 s" in str(err.value)
        assert "Cannot connect to managed service llm-queue" in str(err.value)
        assert steps and steps[0].startswith("MLflow answers through the proxy")
        steps.clear()
        answers["/services/llm-queue/api/jobs"] = (401, b'{"message": "log in"}')
        stack._wait_service_routes(Hub(), {}, time.monotonic())
        assert [s.split(" answers")[0] for s in steps] == ["MLflow", "queue"]
        steps.clear()
        del answers["/services/mlflow/health"]
        stack._wait_service_routes(Hub(), {"LLMSPAWNER_MLFLOW_SERVICE": "0"}, time.monotonic())
        assert [s.split(" answers")[0] for s in steps] == ["queue"]
    finally:
        server.shutdown()


def _fake_proc(root: Path, rows: dict[int, tuple[int, str, str]]) -> Path:
    """A fake ``/proc``: ``{pid: (ppid, state, command)}`` → ``<root>/<pid>/{stat,cmdline}``."""
    for pid, (ppid, state, cmd) in rows.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "stat").write_text(f"{pid} (a) b) {state} {ppid} 1 1 0")
        (root / str(pid) / "cmdline").write_bytes(cmd.replace(" ", "\0").encode() + b"\0")
    (root / "self").mkdir()
    return root


def test_processes_of_a_pod_are_its_containers_descendants_not_another_stacks(tmp_path):
    from .procs import container_pids, processes_of

    proc = _fake_proc(
        tmp_path,
        {
            100: (1, "S", "python sandbox.py notebook.json"),
            101: (100, "S", "jupyterhub-singleuser"),
            102: (101, "S", "llamafactory-cli webui"),
            103: (102, "Z", "llamafactory-cli train"),  # a zombie: not counted
            104: (101, "R", "llamafactory-cli train x.yaml"),
            # Another stack's alice on the same machine: same user, same kind of commands.
            200: (1, "S", "python sandbox.py notebook.json"),
            201: (200, "S", "jupyterhub-singleuser"),
            202: (201, "S", "llamafactory-cli train y.yaml"),
        },
    )
    pod = {
        "status": {
            "initContainerStatuses": [
                {"containerID": "devcluster://90", "state": {"terminated": {"exitCode": 0}}}
            ],
            "containerStatuses": [
                {"containerID": "devcluster://100", "state": {"running": {}}},
                {"containerID": "", "state": {"waiting": {}}},
            ],
        }
    }
    assert container_pids(pod) == [100]
    assert processes_of(pod, proc=proc) == {
        100: "python sandbox.py notebook.json",
        101: "jupyterhub-singleuser",
        102: "llamafactory-cli webui",
        104: "llamafactory-cli train x.yaml",
    }
    assert processes_of({"status": {}}, proc=proc) == {}
    pod["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": 0}}
    assert processes_of(pod, proc=proc) == {}


def test_smoke_runs_in_a_throwaway_workdir_never_in_dot_dev(tmp_path, monkeypatch):
    from llmspawner_dev import command

    seen: list[Path] = []

    def fake_smoke(workdir, **kwargs):
        seen.append(Path(workdir))
        (Path(workdir) / "logs").mkdir(parents=True)
        return type("R", (), {"ok": outcome[0]})()

    monkeypatch.setattr("llmspawner_dev.smoke.run_smoke", fake_smoke)
    monkeypatch.chdir(tmp_path)
    echoed = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: echoed.append(" ".join(map(str, a))))
    outcome = [True]
    assert cli.main(["dev", "--smoke"]) == 0
    (passed_dir,) = seen
    assert passed_dir.name.startswith("llmspawner-smoke-") and not passed_dir.exists()
    assert not (tmp_path / ".dev").exists()

    outcome[0] = False
    assert cli.main(["dev", "--smoke"]) == 1
    failed_dir = seen[1]
    assert failed_dir != passed_dir and (failed_dir / "logs").is_dir()  # kept for its logs
    assert any(str(failed_dir) in line for line in echoed), echoed
    shutil_rmtree(failed_dir)

    given = tmp_path / "mine"
    outcome[0] = True
    assert cli.main(["dev", "--smoke", "--workdir", str(given)]) == 0
    assert seen[2] == given and (given / "logs").is_dir()  # a given folder is never removed
    assert command.DEFAULT_WORKDIR == Path(".dev")


def shutil_rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


def test_dev_console_has_no_alembic_plugin_lines():
    import subprocess

    code = (
        "import logging\n"
        "from llmspawner_dev.command import configure_logging\n"
        "from llmspawner_dev.hubdb import known_revisions\n"
        "configure_logging()\n"
        "assert known_revisions()\n"
        "logging.getLogger('llmspawner_dev').info('still shown')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "setup plugin" not in r.stderr + r.stdout, r.stderr
    assert "still shown" in r.stderr


def test_dev_oidc_page_is_styled_offline_and_labels_the_username(monkeypatch):
    import re

    from llmspawner_dev import oidc

    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
    users = oidc.users_from_claims(['{"sub":"alice","groups":["users"]}'])
    assert (users[0].sub, users[0].claims) == ("alice", {"groups": ["users"]})
    with pytest.raises(ValueError, match="'sub'"):
        oidc.users_from_claims(['{"name":"x"}'])
    client = oidc.make_app(users).test_client()
    page = client.get(
        "/oauth2/authorize?client_id=hub&redirect_uri=http://h/cb&response_type=code"
        "&scope=openid&state=s"
    )
    assert page.status_code == 200, page.text
    html = page.text
    assert "Authorize Client" in html and 'value="alice"' in html  # the mock's own form
    stylesheets = re.findall(r'<link[^>]*rel="stylesheet"[^>]*href="([^"]+)"', html)
    assert stylesheets == ["/static/oidc.css"], stylesheets
    assert "https://" not in html and "cdn" not in html
    assert re.search(r'<label for="sub">Username\b', html)
    assert re.search(r'<input[^>]*id="sub"[^>]*name="sub"', html)
    css = client.get("/static/oidc.css")
    assert css.status_code == 200 and css.mimetype == "text/css" and b".container" in css.data
    # The provider itself is unchanged: discovery names its endpoints.
    assert client.get("/.well-known/openid-configuration").json["userinfo_endpoint"]
