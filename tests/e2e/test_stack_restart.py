"""A whole dev-stack restart while a queue job trains (issue 13 §5, first bullet).

``llmspawner dev`` runs as a user runs it (its own process group, a workdir of this test),
and alice's LoRA fine-tune of the tiny model (:mod:`llmspawner_dev.tiny_model`, nothing is
downloaded) runs as a queue Job that saves a checkpoint every few steps. Once one is saved,
``llmspawner dev``'s process group is killed with SIGKILL, as when its terminal or machine
goes away with nobody watching: no handler of it runs; its reaper
(:mod:`llmspawner_dev.reaper`) and the parts' parent-death signal end the parts, the pods
with the cluster. Then ``llmspawner dev`` is started again on the same workdir.

What a restarted stack has: the emulated cluster starts empty (its objects live in memory;
no Job, no pod), while the PVC folders, the queue's database (``llm-queue.sqlite``), MLflow's
and the hub's databases persist. Asserted:

- no process of the killed run's training pod is left (it would write to the same output
  folder beside the next attempt);
- the job is shown ``interrupted: ..., requeued (1 of N)``, never ``failed``, and runs again
  as its next attempt's Job (``-a2``): one Job, one pod, no second Job of the first attempt;
- the next attempt resumes from the checkpoint in the same output folder (LLaMA-Factory's
  "Resuming training from .../checkpoint-N"), and its MLflow run's ``loss`` history starts
  after that checkpoint's step, not at step 1;
- the job succeeds once (``trainer_state.json``'s ``global_step`` is ``max_steps``);
- MLflow has no run of the job left ``RUNNING``: the killed attempt's run is ended.

The processes are found through this test's own stack (its workdir, the pod's container ids
from its own API server), never by a user name (another stack may run on this machine).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from devcluster.testing import pid_alive
from llmspawner.queue.k8s_objects import LABEL_JOB_ID
from llmspawner.storage import models_path
from llmspawner.tracking import job_run_filter
from llmspawner_dev.kube import KubeClient
from llmspawner_dev.login import HubSession
from llmspawner_dev.parts import venv_bin
from llmspawner_dev.tiny_model import (
    TINY_MODEL_NAME,
    lora_sft_config,
    write_tiny_dataset,
    write_tiny_model,
)

from .polling import wait_until
from .procs import processes_of

pytestmark = pytest.mark.e2e

API = "/services/llm-queue/api"
TIMEOUT = float(os.environ.get("LLMSPAWNER_E2E_JOB_TIMEOUT", "300"))
STACK_TIMEOUT = float(os.environ.get("LLMSPAWNER_E2E_TIMEOUT", "120"))
#: Steps of the job, and its checkpoint interval: the tiny model trains ~10 steps/s on a CPU,
#: so the kill comes seconds after the first checkpoint, long before the end.
MAX_STEPS = 300
SAVE_STEPS = 10
OUTPUT = "out/restart"


def _stop_with_parent() -> None:  # pragma: no cover - runs in the child
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class DevRun:
    """One ``llmspawner dev --workdir W`` in a process group of its own; its URLs are read
    from the lines it prints (``hub``, ``mlflow``, ``kubeconfig``, ``pvc``)."""

    def __init__(self, workdir: Path, log: Path):
        self.workdir = workdir
        self.log = log
        self.urls: dict[str, str] = {}
        out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self._out = out
        self.popen = subprocess.Popen(
            [str(venv_bin() / "llmspawner"), "dev", "--workdir", str(workdir)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=_stop_with_parent,  # a killed pytest stops it (SIGTERM: a clean stop)
        )
        self._offset = log.stat().st_size

    def text(self) -> str:
        with open(self.log, "rb") as f:
            f.seek(self._offset)
            return f.read().decode(errors="replace")

    def wait_ready(self) -> DevRun:
        def ready():
            if self.popen.poll() is not None:
                raise AssertionError(f"llmspawner dev exited {self.popen.returncode}")
            text = self.text()
            return text if "Press Ctrl-C to stop everything." in text else None

        try:
            text = wait_until(ready, 4 * STACK_TIMEOUT, "llmspawner dev is up")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.text()[-4000:]}") from None
        patterns = {
            "hub": r"^\s*Hub:\s+(\S+?)/?$",
            "mlflow": r"MLflow ready at (\S+) \(",
            "kubeconfig": r"kubectl --kubeconfig (\S+) get pods",
            "pvc": r"^\s*Shared PVC:\s+(\S+)$",
        }
        for key, pattern in patterns.items():
            found = re.search(pattern, text, re.M)
            assert found, f"no {key} in llmspawner dev's output:\n{text}"
            self.urls[key] = found.group(1)
        return self

    def kill(self, sig: int) -> None:
        """Signal ``llmspawner dev``'s whole process group and wait for it to exit."""
        os.killpg(self.popen.pid, sig)
        self.popen.wait(120)

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGINT)
            try:
                self.popen.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(30)
        self._out.close()

    @property
    def pvc(self) -> Path:
        return Path(self.urls["pvc"])

    def kube(self) -> KubeClient:
        return KubeClient.from_kubeconfig(self.urls["kubeconfig"])

    def mlflow(self, method: str, path: str, **kwargs) -> dict:
        from llmspawner.mlflow_auth import DEFAULT_ADMIN_USERNAME

        secrets = json.loads((self.workdir / "dev-secrets.json").read_text())
        r = httpx.request(
            method,
            f"{self.urls['mlflow']}/api/2.0/mlflow/{path}",
            auth=(DEFAULT_ADMIN_USERNAME, secrets["admin_password"]),
            timeout=30,
            **kwargs,
        )
        r.raise_for_status()
        return r.json()


def k8s_objects(run: DevRun, job_id: int) -> tuple[list[dict], list[dict]]:
    """The Kubernetes Jobs and pods labelled with the queue's job id."""
    selector = f"{LABEL_JOB_ID}={job_id}"
    with run.kube() as kube:
        r = kube.request(
            "GET", "/apis/batch/v1/namespaces/default/jobs", params={"labelSelector": selector}
        )
        assert r.status_code == 200, r.text
        return r.json()["items"], kube.list_pods("default", label_selector=selector)


def get_job(session: HubSession, job_id: int) -> dict | None:
    try:
        r = session.get(f"{API}/jobs/{job_id}")
    except httpx.TransportError:
        return None
    if r.status_code in (502, 503, 504):
        return None  # the service is starting
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()




@pytest.fixture
def workdir(tmp_path):
    path = tmp_path / "dev"
    path.mkdir()
    os.chmod(tmp_path, 0o755)  # the pods' uid reaches the PVC below it
    return path


def test_a_job_running_when_the_stack_is_killed_resumes_from_its_checkpoint_after_restart(
    workdir, tmp_path
):
    log = tmp_path / "llmspawner-dev.log"
    log.touch()
    first = DevRun(workdir, log)
    runs = [first]
    try:
        first.wait_ready()
        write_tiny_model(first.pvc / "models" / TINY_MODEL_NAME)
        write_tiny_dataset(first.pvc / "users" / "alice" / "data")
        alice = HubSession.login(first.urls["hub"], "alice")
        config = lora_sft_config(
            model=f"{models_path()}/{TINY_MODEL_NAME}",
            dataset_dir="data",
            output_dir=OUTPUT,
            max_steps=MAX_STEPS,
        )
        config.update(save_strategy="steps", save_steps=SAVE_STEPS)
        r = wait_until(
            lambda: (
                (
                    resp := alice.request(
                        "POST",
                        f"{API}/jobs",
                        json={"config": yaml.safe_dump(config), "profile": "cpu"},
                    )
                ).status_code
                != 503
                and resp
            ),
            STACK_TIMEOUT,
            "the queue takes a submit",
        )
        assert r.status_code == 201, (r.status_code, r.text)
        job_id = r.json()["id"]
        out = first.pvc / "users" / "alice" / OUTPUT

        # -- a checkpoint is saved while the job runs ----------------------------------
        def checkpointed():
            job = get_job(alice, job_id)
            assert job is None or job["state"] in ("queued", "admitted", "running"), job
            done = sorted(out.glob("checkpoint-*/trainer_state.json"))
            return done or None

        wait_until(checkpointed, TIMEOUT, f"job {job_id} saved a checkpoint")
        jobs, pods = k8s_objects(first, job_id)
        first_job = get_job(alice, job_id)
        assert first_job["state"] == "running", first_job
        assert [j["metadata"]["name"] for j in jobs] == [first_job["k8s_job"]]
        (pod,) = pods
        training = processes_of(pod)
        assert training, pod["status"]
        alice.close()

        # -- the night: llmspawner dev is killed, nobody watching ------------------------
        first.kill(signal.SIGKILL)
        wait_until(
            lambda: not [p for p in training if pid_alive(p)],
            60,
            "the killed stack's training pod's processes end",
        )
        saved = max(
            int(p.parent.name.split("-")[1]) for p in out.glob("checkpoint-*/trainer_state.json")
        )
        assert saved < MAX_STEPS, "the job ended before the stack was killed"

        # -- the morning: llmspawner dev again, on the same workdir ----------------------
        second = DevRun(workdir, log)
        runs.append(second)
        second.wait_ready()
        alice = HubSession.login(second.urls["hub"], "alice")
        seen: list[tuple[str, str]] = []

        def ended():
            job = get_job(alice, job_id)
            if job is None:
                return None
            entry = (job["state"], job.get("interruption") or job["reason"])
            if not seen or seen[-1] != entry:
                seen.append(entry)
            if job["state"] in ("failed", "cancelled"):
                raise AssertionError(f"job {job_id} ended {job['state']}: {seen}")
            return job if job["state"] == "succeeded" else None

        job = wait_until(ended, 2 * TIMEOUT, f"job {job_id} succeeds after the restart")
        shown = [text for _, text in seen if "interrupted" in text]
        assert shown, f"the job was never shown interrupted: {seen}"
        assert "requeued (1 of" in shown[0], shown
        assert job["k8s_job"].endswith("-a2"), job
        assert job["k8s_job"] != first_job["k8s_job"]

        # One Job and one pod, of the second attempt; nothing of the first.
        jobs, pods = k8s_objects(second, job_id)
        assert [j["metadata"]["name"] for j in jobs] == [job["k8s_job"]]
        assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
        assert not [p for p in training if pid_alive(p)]

        # Resumed from the checkpoint in the same folder, to the end.
        logs = alice.get(f"{API}/jobs/{job_id}/logs")
        assert logs.status_code == 200, logs.text
        resumed = re.search(r"Resuming training from \S*checkpoint-(\d+)", logs.text)
        assert resumed, logs.text[-3000:]
        assert int(resumed.group(1)) >= SAVE_STEPS
        state = json.loads((out / "trainer_state.json").read_text())
        assert state["global_step"] == MAX_STEPS
        assert (out / "adapter_model.safetensors").stat().st_size > 0

        # MLflow: the second attempt's run logged from after the checkpoint on; no run of
        # the job is left RUNNING.
        experiment = second.mlflow(
            "GET", "experiments/get-by-name", params={"experiment_name": "alice-experiments"}
        )["experiment"]
        found = second.mlflow(
            "POST",
            "runs/search",
            json={
                "experiment_ids": [experiment["experiment_id"]],
                "filter": job_run_filter(job_id),
                "order_by": ["attributes.start_time ASC"],
            },
        ).get("runs", [])
        statuses = [r["info"]["status"] for r in found]
        names = [(r["info"]["run_name"], r["info"]["status"]) for r in found]
        # One run per attempt: the killed one ended (not left RUNNING), the resumed one done.
        assert len(found) == 2 and "RUNNING" not in statuses, names
        assert statuses[-1] == "FINISHED", names
        history = second.mlflow(
            "GET",
            "metrics/get-history",
            params={"run_id": found[-1]["info"]["run_id"], "metric_key": "loss"},
        )["metrics"]
        steps = sorted(m["step"] for m in history)
        assert steps and steps[0] > SAVE_STEPS - 1 and steps[-1] == MAX_STEPS, steps
        # The job links to the run of the attempt that succeeded (recorded by the pass
        # that saw it end), not to the killed one's.
        wait_until(
            lambda: get_job(alice, job_id)["mlflow_run_id"] == found[-1]["info"]["run_id"],
            TIMEOUT,
            f"the queue links job {job_id} to the resumed attempt's run {names}",
        )
        alice.close()
    finally:
        for run in reversed(runs):
            run.stop()
