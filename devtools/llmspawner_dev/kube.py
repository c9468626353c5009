"""A small synchronous Kubernetes REST client for the dev stack and the e2e tests.

It reads a kubeconfig (the emulated cluster's, or a real one), and makes plain HTTP calls with
httpx: enough to create the shared PVC and to read pods. The hub itself talks to Kubernetes
through kubespawner's own client, never through this one.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from urllib.parse import quote

import httpx
import yaml


class KubeError(RuntimeError):
    """The Kubernetes API refused a request; ``status`` is the HTTP status (0: unreachable)."""

    def __init__(self, message: str, status: int = 0):
        self.status = status
        super().__init__(message)


def _materialise(value: str | None, data: str | None, tmpdir: Path, name: str) -> str | None:
    """Return a file path for a kubeconfig ``*-data`` (base64) or path field."""
    if data:
        path = tmpdir / name
        path.write_bytes(base64.b64decode(data))
        return str(path)
    return value


class KubeClient:
    """Kubernetes API calls over HTTP, configured from one kubeconfig context.

    Args:
        server: the API server's base URL, e.g. ``http://127.0.0.1:34567``.
        token: a bearer token, or ``None``.
        verify: httpx's ``verify`` (a CA file path, or ``False`` for insecure-skip-tls-verify).
        cert: a ``(certfile, keyfile)`` client certificate, or ``None``.
        timeout: per-request timeout in seconds.

    No I/O happens until the first call.
    """

    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        verify: str | bool = True,
        cert: tuple[str, str] | None = None,
        timeout: float = 10.0,
    ):
        self.server = server.rstrip("/")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            base_url=self.server, headers=headers, verify=verify, cert=cert, timeout=timeout
        )

    @classmethod
    def from_kubeconfig(cls, path: str | Path, *, context: str | None = None) -> KubeClient:
        """Build a client from a kubeconfig file (its current context unless ``context``).

        Raises:
            KubeError: the file has no such context, cluster or user.
        """
        config = yaml.safe_load(Path(path).read_text()) or {}
        context_name = context or config.get("current-context")
        contexts = {c["name"]: c["context"] for c in config.get("contexts") or []}
        clusters = {c["name"]: c["cluster"] for c in config.get("clusters") or []}
        users = {u["name"]: u.get("user") or {} for u in config.get("users") or []}
        if context_name not in contexts:
            if len(contexts) == 1 and context is None:
                context_name = next(iter(contexts))
            elif not contexts and len(clusters) == 1:
                cluster = next(iter(clusters.values()))
                return cls(cluster["server"])
            else:
                raise KubeError(f"kubeconfig {path} has no context {context_name!r}")
        ctx = contexts[context_name]
        try:
            cluster = clusters[ctx["cluster"]]
        except KeyError:
            raise KubeError(f"kubeconfig {path} has no cluster {ctx.get('cluster')!r}") from None
        user = users.get(ctx.get("user"), {})
        tmpdir = Path(tempfile.mkdtemp(prefix="llmspawner-kube-"))
        verify: str | bool = True
        if cluster.get("insecure-skip-tls-verify"):
            verify = False
        else:
            ca = _materialise(
                cluster.get("certificate-authority"),
                cluster.get("certificate-authority-data"),
                tmpdir,
                "ca.crt",
            )
            if ca:
                verify = ca
        cert_file = _materialise(
            user.get("client-certificate"), user.get("client-certificate-data"), tmpdir, "tls.crt"
        )
        key_file = _materialise(
            user.get("client-key"), user.get("client-key-data"), tmpdir, "tls.key"
        )
        return cls(
            cluster["server"],
            token=user.get("token"),
            verify=verify,
            cert=(cert_file, key_file) if cert_file and key_file else None,
        )

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def __enter__(self) -> KubeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """Make one API call; return the response whatever its status.

        Raises:
            KubeError: (status 0) the API server cannot be reached.
        """
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise KubeError(f"{method} {self.server}{path}: {e}") from e

    def _json(self, method: str, path: str, **kwargs) -> dict:
        response = self.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise KubeError(
                f"{method} {path} -> {response.status_code}: {response.text[:500]}",
                response.status_code,
            )
        return response.json()

    def get_pod(self, namespace: str, name: str) -> dict | None:
        """Return the Pod object as a dict, or ``None`` if there is none (404).

        Raises:
            KubeError: any other error.
        """
        path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"
        response = self.request("GET", path)
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise KubeError(f"GET {path} -> {response.status_code}", response.status_code)
        return response.json()

    def pod_logs(
        self, namespace: str, name: str, *, container: str | None = None, tail_lines: int = 50
    ) -> str:
        """Return the last ``tail_lines`` lines of a pod's log ('' if the pod is gone)."""
        params: dict = {"tailLines": tail_lines}
        if container:
            params["container"] = container
        path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}/log"
        response = self.request("GET", path, params=params)
        return response.text if response.status_code == 200 else ""

    def list_pods(self, namespace: str, label_selector: str | None = None) -> list[dict]:
        """Return the Pods of ``namespace`` (optionally filtered by a label selector)."""
        params = {"labelSelector": label_selector} if label_selector else None
        data = self._json("GET", f"/api/v1/namespaces/{quote(namespace)}/pods", params=params)
        return data.get("items") or []

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
        path = f"/api/v1/namespaces/{quote(namespace)}/persistentvolumeclaims"
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
        response = self.request("POST", path, json=body)
        if response.status_code == 409:
            return self._json("GET", f"{path}/{quote(name)}")
        if response.status_code >= 400:
            raise KubeError(
                f"creating PVC {namespace}/{name} -> {response.status_code}: {response.text[:500]}",
                response.status_code,
            )
        return response.json()
