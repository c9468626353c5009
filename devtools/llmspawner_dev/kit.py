"""The deploy kit's MLflow (``deploy/manifests/mlflow``) as a pod of the dev stack's cluster.

A real install runs MLflow as the kit's Deployment (official image, the ``auth`` init
container of the hub image writing the auth app's config, ``db-upgrade``, uid 1000, probes
on ``<prefix>/health``). The dev stack applies the *same files* to the emulated cluster
(:func:`load_kustomization`: the kustomization's ``resources``, parsed here, no kubectl),
changes only what a dev machine needs (:func:`dev_overrides`, each change named below), adds
the Secret ``mlflow-auth`` from the stack's secrets (:func:`auth_secret`) and waits for the
pod's readiness probe (:func:`wait_ready`).

The overrides, and why (nothing else of the kit is changed):

=================================  ==========================================================
``image`` (both images)            the emulator runs an image as a local Python environment
                                   (``--image NAME=PREFIX`` of the cluster, :func:`image_map`):
                                   this checkout's environment, which has ``mlflow`` and
                                   ``llmspawner``; so the pod runs the MLflow and llmspawner
                                   of this checkout, not the kit's pinned ones.
``--host 0.0.0.0`` → pod IP        pods may share the host's loopback (the emulator without a
                                   network namespace per pod): ``0.0.0.0:5000`` would take
                                   port 5000 on every address of the machine, and a second
                                   stack could not start. The pod IP (env ``POD_IP`` from
                                   ``status.podIP``, the downward API) works in both modes.
``--workers 2`` → ``1``            a two-core dev machine: one worker, as the old process.
``JUPYTERHUB_API_URL``             the hub's API where this stack's hub listens (the kit
                                   names the hub's Service, which has no address here).
``MLFLOW_SERVER_ALLOWED_HOSTS``    ``llm.example.org`` → the dev hub's ``host:*`` (its proxy
                                   passes the browser's Host on; any port, as the hub's is
                                   taken when it starts, after MLflow's pod), plus
                                   ``$(POD_IP):5000``: the hub, the queue and the pods call
                                   MLflow by its pod IP (no Service virtual IPs here).
``MLFLOW_SERVER_CORS_ALLOWED_ORIGINS``  ``https://llm.example.org`` → ``http://<hub host>:*``.
``LLMSPAWNER_MLFLOW_ADMIN_GROUPS``  ``llm-admins`` → ``admins`` (the OIDC mock's admin group).
``LLMSPAWNER_MLFLOW_AUTH_TTL``     ``30`` → ``5`` s, as the process way (tests see a change
                                   of a user's hub rights sooner).
storage (the PVC's folder)         the emulator leaves a PVC's folder as it is (like a class
                                   whose driver ignores ``fsGroup``); the stack creates
                                   ``<data_dir>/pvc/llm/mlflow-data`` owned by 1000:1000, as
                                   k3s' local-path (mode 0777) or a class that applies
                                   ``fsGroup`` would let uid 1000 write it
                                   (:func:`prepare_data_folder`).
=================================  ==========================================================

The Secret ``mlflow-db`` is not made: MLflow keeps SQLite files on its PVC
(``mlflow.db``, ``basic_auth.db``, ``artifacts/``), which outlive a stack restart there.
Sources: the kit's own comments (deploy/manifests/mlflow/deployment.yaml),
https://kubectl.docs.kubernetes.io/references/kustomize/kustomization/resource/ (what
``resources`` may name), https://kubernetes.io/docs/concepts/workloads/pods/downward-api/.
"""

from __future__ import annotations

import base64
import copy
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import yaml

from .hubconfig import REPO_ROOT

#: The kit's MLflow part (a kustomization folder).
KIT_DIR = REPO_ROOT / "deploy" / "manifests" / "mlflow"
#: The namespace, Deployment, PVC and pod label of the kit's MLflow.
NAMESPACE = "llm"
DEPLOYMENT = "mlflow"
PVC = "mlflow-data"
SELECTOR = "app.kubernetes.io/name=mlflow"
#: The port MLflow listens on in its pod (the kit's ``containerPort``).
PORT = 5000
#: The uid:gid the kit runs MLflow as (its pod ``securityContext``).
UID = GID = 1000
#: The kit's two images, mapped to a local environment by :func:`image_map`.
MLFLOW_IMAGE = "ghcr.io/mlflow/mlflow"
HUB_IMAGE = "ghcr.io/llmspawner/hub"
#: The kit's placeholder of the hub's public name (deployment.yaml says to replace it).
PUBLIC_HOST = "llm.example.org"

#: ``LLMSPAWNER_MLFLOW``: how the dev stack runs MLflow.
MODE_ENV = "LLMSPAWNER_MLFLOW"
MODES = ("pod", "process")

_KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources"}


class KitError(ValueError):
    """The kit's files are not what this module can apply (the message names file and key)."""


def mlflow_mode(env: Mapping[str, str], default: str) -> str:
    """The dev stack's MLflow mode from ``env[LLMSPAWNER_MLFLOW]`` (``pod``: the kit's
    Deployment; ``process``: a separate ``mlflow server``), ``default`` when unset or empty.

    Raises:
        ValueError: another value (names the variable and the allowed values).
    """
    value = (env.get(MODE_ENV) or default).strip().lower()
    if value not in MODES:
        raise ValueError(f"{MODE_ENV} must be one of {', '.join(MODES)}, not {value!r}")
    return value


def load_kustomization(folder: Path = KIT_DIR) -> list[dict]:
    """The objects of ``folder``'s ``kustomization.yaml``, in its ``resources`` order (a
    resource that is a folder is loaded as a kustomization itself).

    Only what the kit uses is accepted: plain ``resources`` (no generators, patches,
    ``namespace:``), each a YAML file of one or more documents.

    Returns:
        New dicts, one per document (empty documents skipped).

    Raises:
        KitError: a missing file, a key other than ``apiVersion``/``kind``/``resources``
            (kustomize would transform the objects), or a document without ``kind``.
    """
    path = Path(folder) / "kustomization.yaml"
    if not path.is_file():
        raise KitError(f"{path} does not exist")
    spec = yaml.safe_load(path.read_text()) or {}
    extra = sorted(set(spec) - _KUSTOMIZE_KEYS)
    if extra:
        raise KitError(f"{path}: keys {extra} are not supported here (only plain resources)")
    objects: list[dict] = []
    for name in spec.get("resources") or []:
        resource = Path(folder) / name
        if resource.is_dir():
            objects += load_kustomization(resource)
            continue
        if not resource.is_file():
            raise KitError(f"{path}: resource {name!r} does not exist")
        for doc in yaml.safe_load_all(resource.read_text()):
            if not doc:
                continue
            if not isinstance(doc, dict) or not doc.get("kind"):
                raise KitError(f"{resource}: a document without 'kind'")
            objects.append(doc)
    return objects


def _container(pod_spec: dict, name: str, *, init: bool = False) -> dict:
    key = "initContainers" if init else "containers"
    for container in pod_spec.get(key) or []:
        if container.get("name") == name:
            return container
    raise KitError(f"the kit's MLflow pod has no {key[:-1]} {name!r}")


def _env(container: dict, name: str) -> dict:
    for item in container.get("env") or []:
        if item.get("name") == name:
            return item
    raise KitError(f"the kit's container {container.get('name')!r} has no env {name!r}")


def _replace_arg(container: dict, old: str, new: str) -> None:
    args = container.get("args") or []
    hits = [i for i, arg in enumerate(args) if old in arg]
    if len(hits) != 1:
        raise KitError(f"the kit's container {container.get('name')!r} no longer says {old!r}")
    args[hits[0]] = args[hits[0]].replace(old, new)


def dev_overrides(
    objects: Iterable[Mapping],
    *,
    hub_api_url: str,
    hub_host: str,
    admin_groups: Iterable[str],
    ttl: float = 5.0,
    workers: int = 1,
) -> list[dict]:
    """The kit's objects with the dev machine's overrides (the module docstring's table).

    Args:
        objects: :func:`load_kustomization`'s result (not changed: copies are returned).
        hub_api_url: the hub's API as the pod reaches it (``http://host:port/hub/api``).
        hub_host: the host name or address of the hub's public URL (``http``, any port).
        admin_groups: hub groups whose members are MLflow admins.
        ttl: seconds the auth app keeps a hub answer.
        workers: MLflow's worker processes.

    Returns:
        New dicts, same order.

    Raises:
        KitError: the Deployment or an entry an override changes is not in the kit any more
            (so that a change of the kit is noticed, not silently left unapplied).
    """
    out = [copy.deepcopy(dict(obj)) for obj in objects]
    deployments = [o for o in out if o.get("kind") == "Deployment"]
    if len(deployments) != 1 or deployments[0]["metadata"].get("name") != DEPLOYMENT:
        raise KitError(f"the kit has no single Deployment {DEPLOYMENT!r}")
    pod_spec = deployments[0]["spec"]["template"]["spec"]
    mlflow = _container(pod_spec, "mlflow")
    # POD_IP first, so that later values and the args can say $(POD_IP).
    mlflow["env"] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        *(mlflow.get("env") or []),
    ]
    _replace_arg(mlflow, "--host 0.0.0.0", "--host $(POD_IP)")
    _replace_arg(mlflow, "--workers 2", f"--workers {int(workers)}")
    _env(mlflow, "JUPYTERHUB_API_URL")["value"] = hub_api_url
    hosts = _env(mlflow, "MLFLOW_SERVER_ALLOWED_HOSTS")
    names = [f"{hub_host}:*" if h == PUBLIC_HOST else h for h in hosts["value"].split(",")]
    hosts["value"] = ",".join([*names, f"$(POD_IP):{PORT}"])
    cors = _env(mlflow, "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS")
    cors["value"] = cors["value"].replace(f"https://{PUBLIC_HOST}", f"http://{hub_host}:*")
    _env(mlflow, "LLMSPAWNER_MLFLOW_ADMIN_GROUPS")["value"] = ",".join(admin_groups)
    _env(mlflow, "LLMSPAWNER_MLFLOW_AUTH_TTL")["value"] = str(ttl)
    return out


def image_map(prefix: str) -> list[str]:
    """The cluster's ``--image`` flags that run the kit's images with the environment at
    ``prefix`` (a ``sys.prefix``): ``["--image", "ghcr.io/mlflow/mlflow=PREFIX", ...]``."""
    argv: list[str] = []
    for image in (MLFLOW_IMAGE, HUB_IMAGE):
        argv += ["--image", f"{image}={prefix}"]
    return argv


def namespace_object(name: str = NAMESPACE) -> dict:
    """The Namespace the kit's objects name (docs/deploy.md creates it, the kit does not)."""
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def auth_secret(*, service_token: str, admin_password: str, secret_key: str) -> dict:
    """The kit's Secret ``mlflow-auth`` (keys ``admin-password``, ``service-token``,
    ``flask-secret-key``, docs/mlflow.md) with the dev stack's secrets, as ``data``."""

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "mlflow-auth", "namespace": NAMESPACE},
        "type": "Opaque",
        "data": {
            "admin-password": b64(admin_password),
            "service-token": b64(service_token),
            "flask-secret-key": b64(secret_key),
        },
    }


#: Kind -> the collection's path (``{ns}``: the namespace) of the kinds the kit's MLflow has.
COLLECTIONS = {
    "Namespace": "/api/v1/namespaces",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "PersistentVolumeClaim": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
}


def apply(kube, objects: Iterable[Mapping]) -> None:
    """Create each object through the API (``POST`` its collection; one that exists is left
    as it is: the dev stack's cluster starts empty every time).

    Args:
        kube: a :class:`~llmspawner_dev.kube.KubeClient` of the cluster's admin.

    Raises:
        KitError: a kind not in :data:`COLLECTIONS`.
        llmspawner_dev.kube.KubeError: the API refused an object (e.g. 422 from validation).
    """
    for obj in objects:
        kind = obj.get("kind")
        if kind not in COLLECTIONS:
            raise KitError(f"kind {kind!r} cannot be applied here ({', '.join(COLLECTIONS)})")
        ns = (obj.get("metadata") or {}).get("namespace") or "default"
        kube.ensure_object(COLLECTIONS[kind].format(ns=ns), dict(obj))


#: Files of the process way's workdir -> their place on the kit's PVC (the kit's names).
LEGACY_FILES = {
    "mlflow.db": "mlflow.db",
    "mlflow-auth.db": "basic_auth.db",
    "mlflow-artifacts": "artifacts",
}


def prepare_data_folder(folder: Path, *, workdir: Path, chown: bool) -> list[str]:
    """Create the PVC's folder for uid 1000 (the storage override) and, once, copy a
    process-way workdir's MLflow files into it (:data:`LEGACY_FILES`), so that a dev
    workdir keeps its runs when the stack changes to the pod.

    Args:
        folder: ``<data_dir>/pvc/llm/mlflow-data``.
        workdir: the stack's workdir (where the process way kept its files).
        chown: give the folder and the copies to 1000:1000 (only root can; the files the
            pod wrote are left as they are).

    Returns:
        The names copied (empty when the folder already had a ``mlflow.db``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    copied: list[str] = []
    if not (folder / "mlflow.db").exists():
        for old, new in LEGACY_FILES.items():
            source = workdir / old
            if source.is_dir():
                shutil.copytree(source, folder / new, dirs_exist_ok=True)
            elif source.is_file():
                shutil.copy2(source, folder / new)
            else:
                continue
            copied.append(old)
    if chown:  # the folder, and the copies (what the pod writes is its own already)
        os.chown(folder, UID, GID)
        for old in copied:
            top = folder / LEGACY_FILES[old]
            os.chown(top, UID, GID)
            for root, dirs, files in os.walk(top):
                for name in (*dirs, *files):
                    os.chown(os.path.join(root, name), UID, GID)
    return copied


def _ready(pod: Mapping) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


#: Container waiting reasons that mean the pod will not become ready by itself (a crashed
#: container, init or not, waits in ``CrashLoopBackOff``).
FAILED_REASONS = (
    "CreateContainerConfigError",
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "RunContainerError",
)


def pod_failure(pod: Mapping) -> str:
    """Why ``pod`` will not become ready, e.g. ``"init container db-upgrade:
    CrashLoopBackOff (last exit 1)"``, or ``""`` while it may still: phase ``Failed``, or a
    container waiting for a reason of :data:`FAILED_REASONS`."""
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        return f"phase Failed ({status.get('reason') or status.get('message') or 'no reason'})"
    for key, what in (
        ("initContainerStatuses", "init container"),
        ("containerStatuses", "container"),
    ):
        for cs in status.get(key) or []:
            reason = ((cs.get("state") or {}).get("waiting") or {}).get("reason")
            if reason in FAILED_REASONS:
                last = (cs.get("lastState") or {}).get("terminated") or {}
                code = f" (last exit {last['exitCode']})" if "exitCode" in last else ""
                return f"{what} {cs.get('name')}: {reason}{code}"
    return ""


def wait_pod(
    kube,
    *,
    ready: bool,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
    period: float = 0.2,
) -> dict:
    """Wait for the kit's MLflow pod to have an IP (``ready=False``) or to be Ready (its
    readiness probe passed, ``ready=True``); return the pod.

    Args:
        kube: a :class:`~llmspawner_dev.kube.KubeClient`.
        timeout: seconds.
        alive: ``False`` once the cluster's process has exited (stops the wait).
        period: seconds between two looks.

    Raises:
        RuntimeError: the cluster exited, the pod failed (:func:`pod_failure`), or
            ``timeout`` passed (the message says what was last seen).
    """
    deadline = time.monotonic() + timeout
    seen = "no pod yet"
    while True:
        pods = kube.list_pods(NAMESPACE, label_selector=SELECTOR)
        for pod in pods:
            if (pod.get("metadata") or {}).get("deletionTimestamp"):
                continue
            status = pod.get("status") or {}
            failure = pod_failure(pod)
            if failure:
                raise RuntimeError(f"pod {pod['metadata']['name']}: {failure}")
            if status.get("podIP") and (not ready or _ready(pod)):
                return pod
            seen = f"pod {pod['metadata']['name']} {status.get('phase')}, not ready"
        if not alive():
            raise RuntimeError("the cluster exited")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout:g} s ({seen})")
        time.sleep(period)


def container_seconds(pod: Mapping) -> dict[str, int]:
    """Seconds each finished init container ran (``finishedAt - startedAt``), and the
    running containers' time so far, from ``pod``'s status (whole seconds: the API's
    timestamps have no fraction): ``{"auth": 2, "db-upgrade": 14, "mlflow": 30}``.
    Containers without timestamps are left out."""
    import datetime

    def parse(text: str) -> datetime.datetime:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")

    status = pod.get("status") or {}
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    out: dict[str, int] = {}
    for cs in [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]:
        state = cs.get("state") or {}
        times = state.get("terminated") or state.get("running") or {}
        try:
            started = parse(times["startedAt"])
            ended = parse(times["finishedAt"]) if "finishedAt" in times else now
        except (KeyError, ValueError, TypeError):
            continue
        out[cs.get("name", "?")] = int((ended - started).total_seconds())
    return out


def pod_url(pod: Mapping, prefix: str) -> str:
    """MLflow's URL at its pod's IP: ``http://<podIP>:5000<prefix>``."""
    return f"http://{pod['status']['podIP']}:{PORT}{prefix}"
