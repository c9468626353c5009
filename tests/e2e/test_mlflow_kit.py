"""The dev stack's MLflow is the deploy kit's Deployment (deploy/manifests/mlflow) running as a
pod of the emulated cluster (issue 14 §3; llmspawner_dev.kit): its pod has the kit's labels,
runs as the kit's uid 1000, answers at its pod IP as the hub service ``mlflow``, and its auth
app refuses an unauthenticated write while a user's hub token writes to their experiment and
not to another user's.

Uses the session's stack when it runs MLflow as the pod (``LLMSPAWNER_MLFLOW=pod``, or the
default); otherwise starts its own stack with ``mlflow="pod"``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from llmspawner_dev import kit
from llmspawner_dev.login import HubSession
from llmspawner_dev.stack import DevStack

from .conftest import STACK_TIMEOUT
from .procs import processes_of

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def kit_stack(request, tmp_path_factory):
    """A started stack whose MLflow is the kit's pod."""
    stack = request.getfixturevalue("stack")
    if stack.mlflow_mode == "pod":
        yield stack
        return
    own = DevStack(tmp_path_factory.mktemp("kit-stack"), timeout=STACK_TIMEOUT, mlflow="pod")
    try:
        own.start()
    except Exception as e:
        pytest.fail(f"the dev stack did not start: {e}\n{own.log_tails(40)}")
    yield own
    own.stop()


@pytest.fixture(scope="module")
def mlflow_pod(kit_stack):
    with kit_stack.kube() as kube:
        (pod,) = kube.list_pods(kit.NAMESPACE, label_selector=kit.SELECTOR)
    return pod


def test_mlflow_is_the_kits_deployments_pod_at_its_pod_ip(kit_stack, mlflow_pod):
    labels = mlflow_pod["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "tracking"
    assert labels["app.kubernetes.io/part-of"] == "llmspawner"
    assert labels["hub.jupyter.org/network-access-hub"] == "true"
    assert mlflow_pod["metadata"]["name"].startswith("mlflow-")
    assert mlflow_pod["metadata"]["name"] == kit_stack.mlflow_pod
    assert "mlflow" not in kit_stack.processes  # no separate mlflow server
    statuses = {c["name"]: c for c in mlflow_pod["status"]["initContainerStatuses"]}
    assert {n: s["state"]["terminated"]["reason"] for n, s in statuses.items()} == {
        "auth": "Completed",
        "db-upgrade": "Completed",
    }
    assert urlsplit(kit_stack.mlflow_url).hostname == mlflow_pod["status"]["podIP"]
    with kit_stack.kube() as kube:
        deployment = kube.request(
            "GET", f"/apis/apps/v1/namespaces/{kit.NAMESPACE}/deployments/{kit.DEPLOYMENT}"
        ).json()
    template = deployment["spec"]["template"]["metadata"]["labels"]
    assert template.items() <= labels.items()  # and pod-template-hash (its ReplicaSet's)
    # Its data is on the kit's PVC.
    assert (kit_stack.data_dir / "pvc" / kit.NAMESPACE / kit.PVC / "mlflow.db").is_file()


def test_mlflow_runs_as_the_kits_uid(mlflow_pod):
    servers = {pid: cmd for pid, cmd in processes_of(mlflow_pod).items() if "mlflow server" in cmd}
    assert servers, processes_of(mlflow_pod)
    for pid in servers:
        status = dict(
            line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines()
        )
        assert status["Uid"].split()[:2] == ["1000", "1000"], (pid, servers[pid])
        assert status["Gid"].split()[:2] == ["1000", "1000"], (pid, servers[pid])


def test_the_auth_app_refuses_anonymous_writes_and_lets_a_user_write_their_own(kit_stack):
    api = f"{kit_stack.mlflow_url}/api/2.0/mlflow"
    anonymous = httpx.post(f"{api}/experiments/create", json={"name": "nobody"}, timeout=30)
    assert anonymous.status_code == 401, anonymous.text
    bob = HubSession.login(kit_stack.hub_url, "bob")
    alice = HubSession.login(kit_stack.hub_url, "alice")
    try:

        def call(session, method, path, **kwargs):
            headers = {"Authorization": f"Bearer {session.token or session.create_token()}"}
            return httpx.request(method, f"{api}/{path}", headers=headers, timeout=30, **kwargs)

        name = "bob-experiments"
        found = call(bob, "GET", "experiments/get-by-name", params={"experiment_name": name})
        if found.status_code == 404:
            created = call(bob, "POST", "experiments/create", json={"name": name})
            assert created.status_code == 200, created.text
            experiment_id = created.json()["experiment_id"]
        else:
            assert found.status_code == 200, found.text
            experiment_id = found.json()["experiment"]["experiment_id"]
        run = call(bob, "POST", "runs/create", json={"experiment_id": experiment_id})
        assert run.status_code == 200, run.text
        run_id = run.json()["run"]["info"]["run_id"]
        metric = {"run_id": run_id, "key": "loss", "value": 1.5, "timestamp": 0, "step": 0}
        assert call(bob, "POST", "runs/log-metric", json=metric).status_code == 200
        assert call(alice, "POST", "runs/log-metric", json=metric).status_code == 403
        other = call(alice, "POST", "runs/create", json={"experiment_id": experiment_id})
        assert other.status_code == 403, other.text
    finally:
        bob.close()
        alice.close()
