"""The batch queue, end to end: alice's LoRA fine-tune waits for a slice, runs as a Kubernetes
Job, survives a crash of the queue service, and lands in her folder and her MLflow experiment.

Everything is real except the Kubernetes cluster (emulated: the Job's pod is a local process
that really runs ``llamafactory-cli train`` on the CPU) and the identity provider. The model
is the tiny random LLaMA of :mod:`llmspawner_dev.tiny_model`, written into the shared
``models/`` folder by this module: nothing is downloaded.

The scenario (one test, since each step builds on the previous one):

1. bob and carol each submit a long training on ``medium`` (2 slices): medium is full;
2. alice submits the tiny LoRA SFT through ``llmspawner queue submit`` with her hub token: it
   waits, position 1, with the reason;
3. bob cannot see, read the logs of, or cancel alice's job (404, as a job that does not exist),
   nor list her jobs (403);
4. bob cancels his job: alice's is admitted and starts;
5. while it runs, the queue service is killed (SIGKILL); the hub starts it again;
6. the job ends ``succeeded``, exactly once: one Kubernetes Job, one pod, one MLflow run
   (``loss`` logged each step) in ``alice-experiments``, the run's id recorded by the queue;
   the adapter is in alice's folder; no job was lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from llmspawner.queue.k8s_objects import LABEL_JOB_ID
from llmspawner.storage import models_path
from llmspawner_dev.login import HubSession
from llmspawner_dev.parts import venv_bin
from llmspawner_dev.tiny_model import (
    TINY_MODEL_NAME,
    lora_sft_config,
    write_tiny_dataset,
    write_tiny_model,
)

from .polling import wait_until

pytestmark = pytest.mark.e2e

API = "/services/llm-queue/api"
#: Seconds the queue has to admit, start or finish a job (a CPU training takes ~20-40 s here;
#: the hub restarts a dead service at its next poll, up to ~35 s).
JOB_TIMEOUT = float(os.environ.get("LLMSPAWNER_E2E_JOB_TIMEOUT", "300"))
#: Training steps of alice's job (each logs its loss).
STEPS = 3


def get_job(session: HubSession, job_id: int, *, tolerate_outage: bool = False) -> dict | None:
    """``GET api/jobs/<id>`` as ``session``; ``None`` while the service is down (if tolerated)."""
    try:
        r = session.get(f"{API}/jobs/{job_id}")
    except httpx.TransportError:
        if tolerate_outage:
            return None
        raise
    if tolerate_outage and r.status_code in (502, 503, 504):
        return None  # the proxy's answer while the service restarts
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def wait_state(
    session: HubSession, job_id: int, states: set[str], *, tolerate_outage: bool = False
) -> dict:
    """Poll the job until its state is in ``states``; fail at once on a final state not in it."""
    seen: list[str] = []

    def check():
        job = get_job(session, job_id, tolerate_outage=tolerate_outage)
        if job is None:
            return None
        if not seen or seen[-1] != job["state"]:
            seen.append(job["state"])
        if job["state"] in states:
            return job
        if job["state"] in ("succeeded", "failed", "cancelled"):
            raise AssertionError(f"job {job_id} ended {job['state']}: {job['reason']}")
        return None

    try:
        return wait_until(check, timeout=JOB_TIMEOUT, what=f"job {job_id} in {sorted(states)}")
    except AssertionError as e:
        raise AssertionError(f"{e} (states seen: {' -> '.join(seen)})") from None


def submit(session: HubSession, config: dict, profile: str) -> dict:
    """Submit through the REST API (the CLI is tested with alice)."""
    r = session.request(
        "POST", f"{API}/jobs", json={"config": yaml.safe_dump(config), "profile": profile}
    )
    assert r.status_code == 201, (r.status_code, r.text)
    return r.json()


def cli(stack, session: HubSession, *args: str) -> subprocess.CompletedProcess:
    """Run ``llmspawner queue <args>`` with the session's hub token, as a user would."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("LLMSPAWNER_QUEUE_URL", "JUPYTERHUB_USER")
    }
    env.update(JUPYTERHUB_API_URL=stack.hub_api_url, JUPYTERHUB_API_TOKEN=session.token)
    return subprocess.run(
        [str(venv_bin() / "llmspawner"), "queue", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def queue_service_pids(stack) -> list[int]:
    """Process ids of the hub's ``llm-queue`` service (children of the hub running it)."""
    hub_pid = stack.processes["hub"].pid
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if stat[0] != "Z" and int(stat[1]) == hub_pid and b"llmspawner.queue" in cmdline:
            found.append(int(entry.name))
    return found


def all_jobs(*sessions: HubSession) -> dict[int, tuple[str, str]]:
    """``{id: (user, state)}`` of every job the sessions' users see."""
    jobs = {}
    for session in sessions:
        r = session.get(f"{API}/jobs")
        assert r.status_code == 200, r.text
        jobs.update({j["id"]: (j["user"], j["state"]) for j in r.json()["jobs"]})
    return jobs


def k8s_jobs(stack, job_id: int) -> tuple[list[dict], list[dict]]:
    """The Kubernetes Jobs and pods labelled with the queue's job id."""
    selector = f"{LABEL_JOB_ID}={job_id}"
    with stack.kube() as kube:
        r = kube.request(
            "GET",
            f"/apis/batch/v1/namespaces/{stack.namespace}/jobs",
            params={"labelSelector": selector},
        )
        assert r.status_code == 200, r.text
        return r.json()["items"], kube.list_pods(stack.namespace, label_selector=selector)


def mlflow(stack, method: str, path: str, **kwargs) -> dict:
    """One MLflow REST call as MLflow's admin (MLflow wants a credential: 401 without)."""
    r = stack.mlflow_request(method, path, **kwargs)
    r.raise_for_status()
    return r.json()


@pytest.fixture(scope="module")
def priority_classes(stack):
    """The queue's PriorityClasses exist (the dev stack creates them, as an operator does)."""
    with stack.kube() as kube:
        for name in ("llm-high", "llm-normal", "llm-low"):
            r = kube.request("GET", f"/apis/scheduling.k8s.io/v1/priorityclasses/{name}")
            assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def queue_up(stack, alice, timeouts):
    """Wait until the hub proxies ``/services/llm-queue/`` to a service that answers."""
    last = []

    def answers():
        r = alice.get(f"{API}/jobs")
        last[:] = [r.status_code]
        return r.status_code == 200

    try:
        wait_until(answers, timeout=timeouts.stack, what="the llm-queue service answers")
    except AssertionError as e:
        pytest.fail(
            f"{e}; GET {API}/jobs last answered {last}. Is "
            "llmspawner.queue.hubservice.configure_queue(c) in the hub's configuration?"
        )


@pytest.fixture(scope="module")
def storage(stack):
    """The tiny model in the shared ``models/``; the dataset in alice's, bob's and carol's."""
    pvc = stack.pvc_path()
    write_tiny_model(pvc / "models" / TINY_MODEL_NAME)
    for name in ("alice", "bob", "carol"):
        write_tiny_dataset(pvc / "users" / name / "data")
    return pvc


@pytest.fixture(scope="module")
def carol(stack):
    session = HubSession.login(stack.hub_url, "carol")
    yield session
    session.close()


def test_alice_fine_tunes_through_the_queue_after_waiting_and_a_service_crash(
    stack, queue_up, storage, priority_classes, alice, bob, carol
):
    model = f"{models_path()}/{TINY_MODEL_NAME}"
    # Long enough to hold its slice for the whole wait; cancelled below.
    filler = lora_sft_config(
        model=model, dataset_dir="data", output_dir="out/filler", max_steps=1_000_000
    )
    with stack.kube() as kube:
        busy = [
            p["metadata"]["name"]
            for p in kube.list_pods(stack.namespace)
            if p["spec"].get("nodeName") == "gpu-ts2"
            and p.get("status", {}).get("phase") in ("Pending", "Running")
        ]
    assert busy == [], f"medium's node is not free at the start: {busy}"

    # -- 1. bob and carol fill medium ----------------------------------------------------
    bob_job = submit(bob, filler, "medium")
    carol_job = submit(carol, filler, "medium")
    for session, job in ((bob, bob_job), (carol, carol_job)):
        wait_state(session, job["id"], {"running"})

    # -- 2. alice submits with the CLI: she waits, first in medium's line ----------------
    config = lora_sft_config(
        model=model, dataset_dir="data", output_dir="out/tiny-lora", max_steps=STEPS
    )
    config_file = storage / "users" / "alice" / "tiny-lora.yaml"
    config_file.write_text(yaml.safe_dump(config))
    done = cli(stack, alice, "--json", "submit", str(config_file), "--profile", "medium")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    job_id = job["id"]
    assert (job["user"], job["profile"], job["priority"]) == ("alice", "medium", "normal")
    assert job["state"] == "queued"

    def waiting():
        current = get_job(alice, job_id)
        assert current["state"] == "queued", f"medium is full, yet alice's job is {current}"
        return current if current["position"] is not None else None

    job = wait_until(waiting, timeout=JOB_TIMEOUT, what="alice's job has a position")
    assert job["state"] == "queued"
    assert job["position"] == 1
    assert job["reason"].startswith("waiting for a free"), job["reason"]
    assert "medium" in job["reason"], job["reason"]
    shown = cli(stack, alice, "show", str(job_id))
    assert shown.returncode == 0, shown.stderr
    assert "position 1 in the medium line" in shown.stdout, shown.stdout

    # -- 3. bob sees nothing of alice's job ----------------------------------------------
    for method, path in (
        ("GET", f"{API}/jobs/{job_id}"),
        ("GET", f"{API}/jobs/{job_id}/logs"),
        ("DELETE", f"{API}/jobs/{job_id}"),
    ):
        r = bob.request(method, path)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert r.json() == {"error": f"no job {job_id}", "field": "id"}, (method, path)
    r = bob.get(f"{API}/jobs", params={"user": "alice"})
    assert r.status_code == 403, r.text
    assert r.json()["field"] == "user"
    r = bob.get(f"{API}/jobs")
    assert r.status_code == 200
    listed = [j["id"] for j in r.json()["jobs"]]
    assert bob_job["id"] in listed and job_id not in listed, listed
    assert get_job(alice, job_id)["state"] == "queued"  # bob's cancel changed nothing

    # -- 4. a slice frees: alice's job starts ---------------------------------------------
    r = bob.request("DELETE", f"{API}/jobs/{bob_job['id']}")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "cancelled"
    job = wait_state(alice, job_id, {"running"})
    assert job["position"] is None
    assert job["k8s_job"]
    r = carol.request("DELETE", f"{API}/jobs/{carol_job['id']}")  # frees the CPU, too
    assert r.status_code == 200, r.text

    # -- 5. the service dies mid-run; the hub starts it again ----------------------------
    before = all_jobs(alice, bob, carol)
    (pid,) = queue_service_pids(stack)
    os.kill(pid, signal.SIGKILL)
    (k8s_job,), _ = k8s_jobs(stack, job_id)
    finished = [c["type"] for c in k8s_job["status"].get("conditions") or []]
    assert k8s_job["status"].get("active") == 1 and not finished, k8s_job["status"]
    wait_until(
        lambda: [p for p in queue_service_pids(stack) if p != pid],
        timeout=JOB_TIMEOUT,
        what="the hub restarted the queue service",
    )

    # -- 6. exactly one successful run, in alice's folder and experiment -------------------
    job = wait_state(alice, job_id, {"succeeded"}, tolerate_outage=True)
    assert job["reason"] == ""
    assert job["started_at"] and job["finished_at"]

    jobs, pods = k8s_jobs(stack, job_id)
    assert [j["metadata"]["name"] for j in jobs] == [job["k8s_job"]]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]

    out = storage / "users" / "alice" / "out" / "tiny-lora"
    assert (out / "adapter_model.safetensors").stat().st_size > 0
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert (adapter["peft_type"], adapter["base_model_name_or_path"]) == ("LORA", model)

    experiment = stack.mlflow_experiment("alice-experiments")
    assert experiment is not None
    runs = mlflow(
        stack, "POST", "runs/search", json={"experiment_ids": [experiment["experiment_id"]]}
    ).get("runs", [])
    assert [r["info"]["run_name"] for r in runs] == [job["k8s_job"]]
    (run,) = runs
    assert run["info"]["status"] == "FINISHED"
    history = mlflow(
        stack,
        "GET",
        "metrics/get-history",
        params={"run_id": run["info"]["run_id"], "metric_key": "loss"},
    )["metrics"]
    assert [m["step"] for m in history] == list(range(1, STEPS + 1))

    # Recorded by the pass that saw the job end (control.py, _find_runs); polled in the
    # job's own budget, through a possible restart of the service.
    job = wait_until(
        lambda: (j := get_job(alice, job_id, tolerate_outage=True)) and j["mlflow_run_id"] and j,
        timeout=JOB_TIMEOUT,
        what="the queue recorded alice's MLflow run",
    )
    assert job["mlflow_run_id"] == run["info"]["run_id"]
    assert job["mlflow_experiment"] == "alice-experiments"

    # Nothing lost, nothing doubled: the same jobs as before the crash, in their final states.
    after = all_jobs(alice, bob, carol)
    assert sorted(after) == sorted(before)
    assert {i: after[i] for i in (job_id, bob_job["id"], carol_job["id"])} == {
        job_id: ("alice", "succeeded"),
        bob_job["id"]: ("bob", "cancelled"),
        carol_job["id"]: ("carol", "cancelled"),
    }

    logs = alice.get(f"{API}/jobs/{job_id}/logs")
    assert logs.status_code == 200
    assert "train_loss" in logs.text
