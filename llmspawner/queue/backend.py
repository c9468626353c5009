"""The queue's Kubernetes I/O: Jobs, their pods and logs, and the Node/Pod listing for capacity.

Every call goes through :class:`KubeBackend`, which talks to the API server with
``kubernetes_asyncio`` and returns plain JSON dicts (``_preload_content=False``): the builders
in :mod:`llmspawner.queue.k8s_objects` produce dicts, and the reconcile loop reads dicts, so no
client model is ever (de)serialised. As in kubespawner, each call runs under a per-request
timeout (``request_timeout`` seconds) inside a total retry budget (``retry_timeout`` seconds)
for transient failures (no response, 429, 5xx); ``409 Conflict`` on create and ``404 Not
Found`` on delete are expected outcomes, handled on purpose.

The Node/Pod listing for admission is :class:`llmspawner.capacity.ClusterLister`, the one lister
that the spawn form uses too (:attr:`KubeBackend.capacity`). MLflow is :mod:`llmspawner.tracking`.

Objects of the queue carry the label ``app.kubernetes.io/managed-by=llm-queue``
(:data:`MANAGED_SELECTOR`); the service only ever lists, watches and deletes those.

The constructor does no I/O: the API client is created on first use, from the in-cluster
service account when running in a pod, else from ``KUBECONFIG`` (or ``~/.kube/config``).
Tests inject ``api_client``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp

from ..capacity import ClusterLister
from .k8s_objects import LABEL_JOB_ID, LABEL_MANAGED_BY, MANAGED_BY

log = logging.getLogger(__name__)

#: Label selector of the queue's objects (Jobs, their pods, ConfigMaps).
MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
#: Label holding the queue's job id on Jobs and pods.
JOB_ID_LABEL = LABEL_JOB_ID

_TRANSIENT = {429, 500, 502, 503, 504}


class KubeError(Exception):
    """The API server refused a request (or could not be reached).

    Attributes:
        status: HTTP status (0 when no response came back).
        reason: the Kubernetes ``Status.reason`` (e.g. ``AlreadyExists``, ``NotFound``), or
            the HTTP reason phrase.
        message: the ``Status.message`` or a description of the failure.
    """

    def __init__(self, status: int, reason: str, message: str):
        self.status, self.reason, self.message = status, reason, message
        super().__init__(f"Kubernetes API {status} {reason}: {message}")


@dataclass(frozen=True)
class Created:
    """Outcome of :meth:`KubeBackend.create_job`.

    Attributes:
        job: the Job object as stored by the API server.
        existed: ``True`` when the Job had been created before (``409``) and was reused.
    """

    job: dict
    existed: bool


async def _status_error(resp) -> KubeError:
    """Turn a non-2xx aiohttp response into a :class:`KubeError` (reads and releases it)."""
    try:
        body = json.loads(await resp.read() or b"{}")
    except ValueError:
        body = {}
    finally:
        resp.release()
    return KubeError(
        resp.status,
        str(body.get("reason") or resp.reason or ""),
        str(body.get("message") or "no details"),
    )


class KubeBackend:
    """Kubernetes I/O of the queue in one namespace.

    Args:
        namespace: the namespace of the Jobs (and of the users' servers, whose pods count
            against the same GPU slices).
        api_client: a ``kubernetes_asyncio.client.ApiClient``; created on first use when
            omitted (in-cluster config, else ``KUBECONFIG``).
        request_timeout: seconds one API request may take.
        retry_timeout: seconds all attempts of one call may take together (transient
            failures only).
        capacity_ttl: seconds a Node/Pod listing for capacity is reused
            (:attr:`capacity`, a :class:`~llmspawner.capacity.ClusterLister`).
        clock: monotonic clock in seconds (injectable).
    """

    def __init__(
        self,
        namespace: str,
        *,
        api_client=None,
        request_timeout: float = 10.0,
        retry_timeout: float = 30.0,
        capacity_ttl: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.namespace = namespace
        self._api_client = api_client
        self._owns_client = api_client is None
        self.request_timeout = request_timeout
        self.retry_timeout = retry_timeout
        self._clock = clock
        #: Nodes and the namespace's pods (users' servers and Job pods alike), cached.
        self.capacity = ClusterLister(
            self._core, namespace, ttl=capacity_ttl, request_timeout=request_timeout
        )
        self._client_lock = asyncio.Lock()

    # -- client -------------------------------------------------------------------------

    async def api_client(self):
        """Return the API client, creating it on first use.

        Raises:
            kubernetes_asyncio.config.ConfigException: no in-cluster config and no kubeconfig.
        """
        async with self._client_lock:
            if self._api_client is None:
                from kubernetes_asyncio import client, config

                try:
                    config.load_incluster_config()
                    self._api_client = client.ApiClient()
                except config.ConfigException:
                    self._api_client = await config.new_client_from_config()
            return self._api_client

    async def close(self) -> None:
        """Close the API client if this backend created it."""
        if self._api_client is not None and self._owns_client:
            await self._api_client.close()
            self._api_client = None

    async def _core(self):
        from kubernetes_asyncio import client

        return client.CoreV1Api(await self.api_client())

    async def _batch(self):
        from kubernetes_asyncio import client

        return client.BatchV1Api(await self.api_client())

    async def _call(self, method: Callable, *args, **kwargs):
        """Call an API method; return the raw aiohttp response (2xx), retrying transients.

        Raises:
            KubeError: a non-transient error, or transient ones past ``retry_timeout``.
        """
        deadline = self._clock() + self.retry_timeout
        delay = 0.1
        while True:
            try:
                resp = await method(
                    *args,
                    _preload_content=False,
                    _request_timeout=self.request_timeout,
                    **kwargs,
                )
            except (OSError, asyncio.TimeoutError, aiohttp.ClientError) as e:
                # ClientError: also a connection closed with no answer (ServerDisconnected)
                error = KubeError(0, "Unreachable", f"{type(e).__name__}: {e}")
            else:
                if 200 <= resp.status < 300:
                    return resp
                error = await _status_error(resp)
                if error.status not in _TRANSIENT:
                    raise error
            if self._clock() + delay > deadline:
                raise error
            log.debug("Retrying Kubernetes call after %s (in %.1f s)", error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _json(self, method: Callable, *args, **kwargs) -> dict:
        resp = await self._call(method, *args, **kwargs)
        try:
            return json.loads(await resp.read())
        finally:
            resp.release()

    # -- Jobs ---------------------------------------------------------------------------

    async def create_job(
        self, *, config_map: dict, job: dict, owner_reference, secret: dict | None = None
    ) -> Created:
        """Create the ConfigMap, then the Job, then make the Job own the ConfigMap.

        Idempotent, so that a restart never creates a Job twice: an existing ConfigMap
        (``409``) is replaced with ``config_map``; an existing Job of the same name (``409``)
        is read back and returned with ``existed=True`` (the name is unique per queue job,
        see :func:`llmspawner.queue.k8s_objects.job_name`). When the Job cannot be created,
        the ConfigMap created here is deleted again.

        Args:
            config_map: ConfigMap manifest (``metadata.name`` set).
            job: Job manifest (``metadata.name`` set) that mounts the ConfigMap.
            owner_reference: ``(job: dict) -> dict``, the ownerReference to the created Job
                (:func:`llmspawner.queue.k8s_objects.owner_reference`).
            secret: a Secret the Job's pod needs (its MLflow token,
                :func:`llmspawner.mlflow_hub.build_token_secret`), created (or replaced) first
                and owned by the Job like the ConfigMap; deleted again if the Job is not made.

        Returns:
            :class:`Created`.

        Raises:
            KubeError: the API server refused the ConfigMap or the Job (e.g. ``422`` for an
                invalid manifest, ``403`` for missing RBAC).
        """
        core, batch = await self._core(), await self._batch()
        ns, cm_name = self.namespace, config_map["metadata"]["name"]
        secret_name = secret["metadata"]["name"] if secret else None
        if secret is not None:
            try:
                await self._json(core.create_namespaced_secret, ns, secret)
            except KubeError as e:
                if e.status != 409:
                    raise
                await self._json(core.replace_namespaced_secret, secret_name, ns, secret)
        try:
            await self._json(core.create_namespaced_config_map, ns, config_map)
        except KubeError as e:
            if e.status != 409:
                raise
            await self._json(core.replace_namespaced_config_map, cm_name, ns, config_map)
        existed = False
        try:
            created = await self._json(batch.create_namespaced_job, ns, job)
        except KubeError as e:
            if e.status != 409:
                await self._delete(core.delete_namespaced_config_map, cm_name)
                if secret_name:
                    await self._delete(core.delete_namespaced_secret, secret_name)
                raise
            created = await self._json(batch.read_namespaced_job, job["metadata"]["name"], ns)
            existed = True
        patch = {"metadata": {"ownerReferences": [owner_reference(created)]}}
        try:
            await self._json(core.patch_namespaced_config_map, cm_name, ns, patch)
        except KubeError as e:  # the Job runs anyway; only garbage collection is affected
            log.warning("Cannot set the owner of ConfigMap %s/%s: %s", ns, cm_name, e)
        if secret_name:
            try:
                await self._json(core.patch_namespaced_secret, secret_name, ns, patch)
            except KubeError as e:  # the token expires anyway
                log.warning("Cannot set the owner of Secret %s/%s: %s", ns, secret_name, e)
        log.info("%s Job %s/%s", "Found" if existed else "Created", ns, job["metadata"]["name"])
        return Created(job=created, existed=existed)

    async def _delete(self, method: Callable, name: str, **kwargs) -> bool:
        try:
            resp = await self._call(method, name, self.namespace, **kwargs)
        except KubeError as e:
            if e.status == 404:
                return False
            raise
        resp.release()
        return True

    async def delete_job(self, name: str, *, config_map: str | None = None) -> bool:
        """Delete a Job and, in the background, its pods and owned ConfigMap.

        ``propagationPolicy: Background`` makes the garbage collector delete the dependents
        (the batch API's own default is ``Orphan``, which would leave the pods running):
        https://kubernetes.io/docs/concepts/architecture/garbage-collection/#background-deletion

        Args:
            name: the Job's name.
            config_map: also delete this ConfigMap by name (in case its ownerReference was
                never set, e.g. after a crash between the two creates).

        Returns:
            ``True`` if the Job existed, ``False`` if it was already gone (``404``).

        Raises:
            KubeError: any other refusal.
        """
        batch = await self._batch()
        existed = await self._delete(
            batch.delete_namespaced_job, name, propagation_policy="Background"
        )
        if config_map:
            await self._delete((await self._core()).delete_namespaced_config_map, config_map)
        log.info("Deleted Job %s/%s (%s)", self.namespace, name, "existed" if existed else "gone")
        return existed

    async def list_jobs(self) -> list[dict]:
        """Return the queue's Jobs in the namespace (label :data:`MANAGED_SELECTOR`)."""
        batch = await self._batch()
        data = await self._json(
            batch.list_namespaced_job, self.namespace, label_selector=MANAGED_SELECTOR
        )
        return data.get("items") or []

    async def list_job_pods(self) -> list[dict]:
        """Return the pods of the queue's Jobs (label :data:`MANAGED_SELECTOR`)."""
        core = await self._core()
        data = await self._json(
            core.list_namespaced_pod, self.namespace, label_selector=MANAGED_SELECTOR
        )
        return data.get("items") or []

    async def missing_priority_classes(self, names) -> list[str] | None:
        """Return which of the PriorityClasses ``names`` do not exist (``None``: cannot tell,
        e.g. no permission to read PriorityClasses).

        A Job whose ``priorityClassName`` does not exist never gets a pod: the API server
        refuses each pod ("no PriorityClass with name ... was found") and the Job controller
        only records ``FailedCreate`` events.
        """
        from kubernetes_asyncio import client

        api = client.SchedulingV1Api(await self.api_client())
        try:
            data = await self._json(api.list_priority_class)
        except KubeError as e:
            log.debug("Cannot list PriorityClasses: %s", e)
            return None
        have = {item["metadata"]["name"] for item in data.get("items") or []}
        return [n for n in names if n not in have]

    # -- logs ---------------------------------------------------------------------------

    async def latest_pod(self, job_id: int) -> dict | None:
        """Return the newest pod of queue job ``job_id`` (a Job may retry), or ``None``."""
        core = await self._core()
        data = await self._json(
            core.list_namespaced_pod,
            self.namespace,
            label_selector=f"{MANAGED_SELECTOR},{JOB_ID_LABEL}={int(job_id)}",
        )
        pods = data.get("items") or []
        if not pods:
            return None
        return max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")

    async def stream_log(
        self, pod_name: str, *, follow: bool = False, tail_lines: int | None = None
    ) -> AsyncIterator[bytes]:
        """Yield the pod's log in chunks of bytes, as they come when ``follow`` is set.

        With ``follow`` the stream ends when the container ends (or the caller stops
        iterating); without it, the log so far is returned in one or more chunks.

        Raises:
            KubeError: ``404`` (pod gone) or ``400`` (container not started yet: the message
                says so); only before the first chunk.
        """
        core = await self._core()
        kwargs = {"tail_lines": tail_lines} if tail_lines else {}
        if follow:
            # No request timeout: a followed log lasts as long as the training does.
            resp = await core.read_namespaced_pod_log(
                pod_name, self.namespace, follow=True, _preload_content=False, **kwargs
            )
            if not 200 <= resp.status < 300:
                raise await _status_error(resp)
        else:
            resp = await self._call(
                core.read_namespaced_pod_log, pod_name, self.namespace, **kwargs
            )
        try:
            async for chunk in resp.content.iter_any():
                yield chunk
        finally:
            resp.release()

    # -- watching -----------------------------------------------------------------------

    async def watch_changes(
        self,
        on_change: Callable[[], None],
        *,
        timeout: int = 300,
        on_queue_pod: Callable[[str, dict], None] | None = None,
    ) -> None:
        """Call ``on_change()`` when a queue Job or pod changes, or a GPU slice frees up;
        runs until cancelled.

        Two watches, each list-then-watch from the list's ``resourceVersion``
        (https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes),
        resumed from the last version seen after a stream ends (``timeout`` seconds, or an
        error: a short growing pause first), listed again after ``410 Gone``:

        - the queue's Jobs (:data:`MANAGED_SELECTOR`): every event;
        - every pod of the namespace: a queue pod's every event; for the others (the users'
          servers), only a change of which pods hold GPU slices
          (:class:`llmspawner.capacity.SliceHolders`): a pod that held one deleted or
          terminated (a server stopped), or one newly bound. Such a change also drops
          the capacity listing's cache (:meth:`~llmspawner.capacity.ClusterLister.invalidate`),
          so that the pass it triggers counts the freed slice at once.

        ``on_queue_pod(type, pod)``, if given, gets each event of a queue pod first (the
        control loop remembers disrupted pods that are gone before its next pass:
        :meth:`llmspawner.queue.control.ControlLoop.note_pod`).

        ``on_change`` is only a trigger (the control loop gathers a burst of them into one
        pass, then lists and compares): a missed event costs at most one resync interval
        (``LLMQueue.admission_interval``), the safety net.
        """
        from ..capacity import SliceHolders

        holders = SliceHolders()

        def on_job(_type: str, _obj: dict | None) -> None:
            on_change()

        def on_pods_listed(pods: list[dict]) -> None:
            if holders.reset(pods):
                self.capacity.invalidate()
            on_change()  # a (re)list may follow missed events: compare at once

        def on_pod(type_: str, pod: dict) -> None:
            changed = holders.update(type_, pod)
            if changed:
                self.capacity.invalidate()
            labels = (pod.get("metadata") or {}).get("labels") or {}
            ours = labels.get(LABEL_MANAGED_BY) == MANAGED_BY
            if ours and on_queue_pod is not None:
                on_queue_pod(type_, pod)
            if changed or ours:
                on_change()

        await asyncio.gather(
            self._watch_one("list_namespaced_job", MANAGED_SELECTOR, on_job, None, timeout),
            self._watch_one("list_namespaced_pod", None, on_pod, on_pods_listed, timeout),
        )

    async def _watch_one(
        self,
        method_name: str,
        selector: str | None,
        on_event: Callable[[str, dict], None],
        on_list: Callable[[list[dict]], None] | None,
        timeout: int,
    ) -> None:
        """List, then watch from the list's ``resourceVersion``, for ever (see
        :meth:`watch_changes`): ``on_list(items)`` after each listing, ``on_event(type,
        object)`` for each ``ADDED``/``MODIFIED``/``DELETED`` event."""
        selected = {"label_selector": selector} if selector else {}
        version: str | None = None
        pause = 0.5
        while True:
            try:
                api = await (self._batch() if "job" in method_name else self._core())
                method = getattr(api, method_name)
                if version is None:
                    listed = await self._json(method, self.namespace, **selected)
                    version = (listed.get("metadata") or {}).get("resourceVersion") or None
                    if on_list is not None:
                        on_list(listed.get("items") or [])
                resp = await method(
                    self.namespace,
                    watch=True,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=timeout,
                    _preload_content=False,
                    _request_timeout=timeout + 10,
                    **selected,
                )
                try:
                    if not 200 <= resp.status < 300:
                        raise await _status_error(resp)
                    async for line in resp.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        type_, obj = event.get("type"), event.get("object") or {}
                        if type_ == "ERROR":
                            raise KubeError(
                                int(obj.get("code") or 0),
                                str(obj.get("reason") or "Error"),
                                str(obj.get("message") or "watch error"),
                            )
                        version = (obj.get("metadata") or {}).get("resourceVersion") or version
                        if type_ in ("ADDED", "MODIFIED", "DELETED"):
                            on_event(type_, obj)
                        pause = 0.5
                finally:
                    resp.release()
            except asyncio.CancelledError:
                raise
            except KubeError as e:
                if e.status == 410:  # our version is older than the server's history
                    log.debug("Watch %s: %s; listing again", method_name, e)
                    version = None
                    continue
                log.debug("Watch %s ended: %s", method_name, e)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
            except Exception as e:  # a watch is only a trigger; the resync covers the gap
                log.debug("Watch %s ended: %s", method_name, e)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
