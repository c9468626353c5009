"""The dev stack's configurable-http-proxy, run beside the hub as zero-to-jupyterhub runs it.

Under z2jh the proxy is its own pod (``proxy`` Deployment): the hub is configured with
``ConfigurableHTTPProxy.should_start = False`` and only talks to the proxy's REST API, and the
proxy's routes live in its memory only, so a restarted proxy pod knows no route until the hub
adds them again (:mod:`llmspawner.routes`). The dev stack does the same: it starts the proxy
itself (:func:`chp_command`), hands it and the hub one ``CONFIGPROXY_AUTH_TOKEN``, and can
restart it (:meth:`llmspawner_dev.stack.DevStack.restart_proxy`).

The command line follows the chart's proxy container (``--default-target`` and
``--error-target`` at the hub, API on its own port;
https://github.com/jupyterhub/zero-to-jupyterhub-k8s/blob/main/jupyterhub/templates/proxy/deployment.yaml)
and what JupyterHub passes when it starts the proxy itself (``ConfigurableHTTPProxy.start``:
``--ip``, ``--port``, ``--api-ip``, ``--api-port``, ``--error-target``, ``--log-level``).

Pure builders, no I/O, except :func:`chp_executable`, which looks the program up on a PATH.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

#: The program (``scripts/install.sh`` links it into the virtualenv's ``bin/``).
CHP = "configurable-http-proxy"
#: The variable the proxy and the hub read the proxy API's token from.
TOKEN_ENV = "CONFIGPROXY_AUTH_TOKEN"


def chp_executable(env: Mapping[str, str]) -> str | None:
    """The path of ``configurable-http-proxy`` on ``env["PATH"]``, or ``None``."""
    return shutil.which(CHP, path=env.get("PATH", os.defpath))


def chp_command(
    *, executable: str, host: str, port: int, api_port: int, hub_url: str, log_level: str = "info"
) -> list[str]:
    """Command line of the proxy: public ``host:port``, API ``host:api_port``, the hub behind.

    Args:
        executable: the program (:func:`chp_executable`).
        host: the address both ports bind.
        port: the public port (the hub's URL).
        api_port: the REST API's port (``ConfigurableHTTPProxy.api_url`` of the hub).
        hub_url: the hub's own server (``JupyterHub.hub_bind_url``), no trailing ``/``: the
            default target (what a restarted proxy sends everything to) and the error target.
        log_level: the proxy's ``--log-level``.
    """
    return [
        executable,
        "--ip",
        host,
        "--port",
        str(port),
        "--api-ip",
        host,
        "--api-port",
        str(api_port),
        "--default-target",
        hub_url,
        "--error-target",
        f"{hub_url}/hub/error",
        "--log-level",
        log_level,
    ]
