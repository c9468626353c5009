"""The dev stack's spawner: :class:`LLMSpawner` plus the emulated cluster's pod address.

On the emulated cluster (``devcluster``) every pod is a local process. As root each pod has
its own network namespace, as on a real cluster (``devcluster.podnet``); elsewhere (or with
``DEVCLUSTER_POD_NETWORK=host``) pods share this machine's network namespace and each has its
own loopback address (``127.x.y.z``, the pod's ``status.podIP``). There a user's server must
listen on its pod's address, not on all interfaces (where two servers on the same port would
collide, and the server would be open to the LAN), so it always does. On a real cluster
nothing of this is needed, so it lives here, in the dev tools, and only the dev stack's hub
uses it (``llmspawner_dev/jupyterhub_config.py``).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from llmspawner.spawner import LLMSpawner

#: The downward-API reference of the pod's own IP address.
POD_IP_ENV = {"valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def bind_to_pod_ip(env: dict) -> dict:
    """Make the server in ``env`` listen on its pod's IP; return ``env`` (changed in place).

    Args:
        env: a spawner environment (name -> value or kubespawner ``valueFrom`` dict).

    Adds ``POD_IP`` from the downward API (``status.podIP``) and rewrites the host of
    ``JUPYTERHUB_SERVICE_URL`` (where jupyterhub-singleuser binds) to ``$(POD_IP)``, keeping
    scheme, port and path. Without ``JUPYTERHUB_SERVICE_URL`` nothing changes.
    """
    if not env.get("JUPYTERHUB_SERVICE_URL"):
        return env
    # $(POD_IP) is expanded by the kubelet; kubespawner orders env vars by reference.
    # https://kubernetes.io/docs/tasks/inject-data-application/define-interdependent-environment-variables/
    env["POD_IP"] = dict(POD_IP_ENV)
    url = urlsplit(env["JUPYTERHUB_SERVICE_URL"])
    netloc = f"$(POD_IP):{url.port}" if url.port else "$(POD_IP)"
    env["JUPYTERHUB_SERVICE_URL"] = urlunsplit(url._replace(netloc=netloc))
    return env


class DevSpawner(LLMSpawner):
    """:class:`LLMSpawner` whose user server listens on its pod's IP (see the module docstring).

    Configured as ``c.JupyterHub.spawner_class = "llmspawner_dev.spawner.DevSpawner"`` by
    the dev stack's hub configuration; it reads the ``c.LLMSpawner`` (and ``c.KubeSpawner``)
    sections like its base class.
    """

    def get_env(self) -> dict:
        """LLMSpawner's environment, the server bound to its pod's IP (:func:`bind_to_pod_ip`)."""
        return bind_to_pod_ip(super().get_env())
