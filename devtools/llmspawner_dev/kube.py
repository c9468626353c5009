"""A small synchronous Kubernetes client for the dev stack and the e2e tests.

It is a facade over ``kubernetes_asyncio`` (the client the hub and the queue use): the
kubeconfig is loaded by ``kubernetes_asyncio.config`` (contexts, tokens, certificates, CA,
``insecure-skip-tls-verify``), and the calls go through its ``ApiClient``. The callers (the
stack's set-up, the smoke check, tests) are synchronous, some inside Playwright's sync API
(which keeps an event loop running in the calling thread), so the client runs its coroutines
on a private event loop in a thread of its own. Enough to create the shared PVC and the
PriorityClasses and to read pods; the hub talks to Kubernetes through kubespawner's client,
never through this one.

Results are the API server's JSON as plain dicts (``_preload_content=False``: no model
classes, so no field is dropped or renamed).
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import threading
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException

T = TypeVar("T")


class KubeError(RuntimeError):
    """The Kubernetes API refused a request; ``status`` is the HTTP status (0: unreachable or
    a bad kubeconfig)."""

    def __init__(self, message: str, status: int = 0):
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class Response:
    """One API answer: ``status_code`` (HTTP status) and ``text`` (the body, UTF-8)."""

    status_code: int
    text: str

    def json(self) -> Any:
        """The body parsed as JSON (raises ``ValueError`` when it is not JSON)."""
        return jsonlib.loads(self.text)


class _LoopThread:
    """An event loop running in a daemon thread; :meth:`run` executes a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="llmspawner-dev-kube", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and return its result (its exception propagates)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Stop the loop, join the thread and close the loop."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class KubeClient:
    """Synchronous Kubernetes API calls through a ``kubernetes_asyncio`` ``ApiClient``.

    Build it with :meth:`from_kubeconfig`; use it as a context manager (or call
    :meth:`close`) so that its connections and thread end.

    Attributes:
        server: the API server's base URL, e.g. ``http://127.0.0.1:34567`` (no trailing ``/``).
        api_client: the underlying ``kubernetes_asyncio.client.ApiClient``.
        timeout: per-request timeout in seconds.
    """

    def __init__(self, api_client: client.ApiClient, loop: _LoopThread, *, timeout: float = 10.0):
        self.api_client = api_client
        self.server = api_client.configuration.host.rstrip("/")
        self.timeout = timeout
        self._loop = loop
        self._core = client.CoreV1Api(api_client)

    @classmethod
    def from_kubeconfig(
        cls, path: str | Path, *, context: str | None = None, timeout: float = 10.0
    ) -> KubeClient:
        """Build a client from a kubeconfig file (its current context unless ``context``).

        Loaded by ``kubernetes_asyncio.config.new_client_from_config``.

        Raises:
            KubeError: (status 0) the file is missing or has no such context, cluster or user.
        """
        loop = _LoopThread()
        try:
            api_client = loop.run(
                config.new_client_from_config(config_file=str(path), context=context)
            )
        except (ConfigException, OSError) as e:
            loop.stop()
            raise KubeError(f"kubeconfig {path}: {e}") from e
        except BaseException:
            loop.stop()
            raise
        return cls(api_client, loop, timeout=timeout)

    def close(self) -> None:
        """Close the HTTP connections and end the client's thread. Safe to call twice."""
        if self._loop.loop.is_closed():
            return
        try:
            self._loop.run(self.api_client.close(), timeout=10)
        finally:
            self._loop.stop()

    def __enter__(self) -> KubeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- calls ------------------------------------------------------------------------------

    def _call(self, method, *args, **kwargs) -> Response:
        """Run one ``kubernetes_asyncio`` API method raw; return the answer whatever its status.

        Raises:
            KubeError: (status 0) the API server cannot be reached.
        """

        async def call() -> Response:
            resp = await method(
                *args, _preload_content=False, _request_timeout=self.timeout, **kwargs
            )
            try:
                body = await resp.read()
            finally:
                resp.release()
            return Response(resp.status, body.decode("utf-8", errors="replace"))

        try:
            return self._loop.run(call())
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise KubeError(f"{self.server}: {type(e).__name__}: {e}") from e
        except ApiException as e:  # raised before the request: e.g. a bad argument
            raise KubeError(f"{self.server}: {e.reason}", e.status or 0) from e

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> Response:
        """Make one API call to ``path`` (e.g. ``/apis/batch/v1/namespaces/ns/jobs``).

        Args:
            method: HTTP method.
            params: query parameters.
            json: a JSON body.

        Returns:
            The :class:`Response`, whatever its status.

        Raises:
            KubeError: (status 0) the API server cannot be reached.
        """
        return self._call(
            self.api_client.call_api,
            path,
            method.upper(),
            query_params=list((params or {}).items()),
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=json,
            auth_settings=["BearerToken"],
        )

    @staticmethod
    def _ok(response: Response, what: str) -> dict:
        if response.status_code >= 400:
            raise KubeError(
                f"{what} -> {response.status_code}: {response.text[:500]}", response.status_code
            )
        return response.json()

    def get_pod(self, namespace: str, name: str) -> dict | None:
        """Return the Pod object as a dict, or ``None`` if there is none (404).

        Raises:
            KubeError: any other error.
        """
        response = self._call(self._core.read_namespaced_pod, name, namespace)
        if response.status_code == 404:
            return None
        return self._ok(response, f"GET pod {namespace}/{name}")

    def pod_logs(
        self, namespace: str, name: str, *, container: str | None = None, tail_lines: int = 50
    ) -> str:
        """Return the last ``tail_lines`` lines of a pod's log ('' if the pod is gone or has
        no log yet)."""
        kwargs: dict = {"tail_lines": tail_lines}
        if container:
            kwargs["container"] = container
        response = self._call(self._core.read_namespaced_pod_log, name, namespace, **kwargs)
        return response.text if response.status_code == 200 else ""

    def list_pods(self, namespace: str, label_selector: str | None = None) -> list[dict]:
        """Return the Pods of ``namespace`` (optionally filtered by a label selector).

        Raises:
            KubeError: the API refused the listing.
        """
        kwargs = {"label_selector": label_selector} if label_selector else {}
        response = self._call(self._core.list_namespaced_pod, namespace, **kwargs)
        return self._ok(response, f"GET pods of {namespace}").get("items") or []

    def ensure_object(self, path: str, body: dict) -> None:
        """Create ``body`` by ``POST path`` unless it exists (409 is not an error).

        Raises:
            KubeError: the API refused the object.
        """
        response = self.request("POST", path, json=body)
        if response.status_code not in (200, 201, 409):
            raise KubeError(
                f"creating {body.get('kind')} {body['metadata']['name']} answered "
                f"{response.status_code}: {response.text[:300]}",
                response.status_code,
            )

    def ensure_pvc(
        self,
        namespace: str,
        name: str,
        *,
        size: str = "10Gi",
        access_modes: tuple[str, ...] = ("ReadWriteMany",),
        storage_class: str | None = None,
    ) -> dict:
        """Create the PersistentVolumeClaim ``name`` unless it exists; return it.

        A 409 (already exists) is not an error: the existing claim is read and returned.

        Raises:
            KubeError: the API refused the claim.
        """
        spec: dict = {
            "accessModes": list(access_modes),
            "resources": {"requests": {"storage": size}},
        }
        if storage_class is not None:
            spec["storageClassName"] = storage_class
        body = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        what = f"PVC {namespace}/{name}"
        response = self._call(self._core.create_namespaced_persistent_volume_claim, namespace, body)
        if response.status_code == 409:
            response = self._call(
                self._core.read_namespaced_persistent_volume_claim, name, namespace
            )
        return self._ok(response, what)
