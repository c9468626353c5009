"""Command lines and environments of the dev stack's parts: pure builders, no I/O.

The hub runs ``jupyterhub -f llmspawner_dev/jupyterhub_config.py`` (:data:`DEV_HUB_CONFIG`),
which applies the dev cluster's settings (:mod:`llmspawner_dev.hubconfig`) and then the
repository's ``jupyterhub_config.py``. The hub's environment is the contract with them:

=====================================  ========================================================
``KUBECONFIG``                         the emulated cluster's kubeconfig (kubespawner loads it)
``LLMSPAWNER_NAMESPACE``               ``default``
``LLMSPAWNER_MLFLOW_TRACKING_URI``     the MLflow server's URL (ending in :data:`MLFLOW_PREFIX`)
``LLMSPAWNER_MLFLOW_SERVICE_TOKEN``    the ``mlflow`` service's API token
``MLFLOW_TRACKING_USERNAME``,          MLflow's admin credential (:func:`mlflow_hub_environment`)
``MLFLOW_TRACKING_PASSWORD``
``LLMSPAWNER_DEV_BASE_CONFIG``         the production config the dev config runs after its own
``LLMSPAWNER_OIDC_ISSUER``             the OIDC provider's issuer URL (discovery document below it)
``LLMSPAWNER_ALLOW_ALL``               ``1``: every user who logs in is allowed
``LLMSPAWNER_OIDC_USERNAME_CLAIM``     ``sub``: any name typed on the provider's page works
``OAUTH2_AUTHORIZE_URL``,              the provider's endpoints, read from its discovery document
``OAUTH2_TOKEN_URL``,                  (GenericOAuthenticator's own environment variables)
``OAUTH2_USERDATA_URL``
``OAUTH_CLIENT_ID``,                   any id/secret: the mock provider accepts every client
``OAUTH_CLIENT_SECRET``
``OAUTH_CALLBACK_URL``                 ``<hub url>/hub/oauth_callback``
=====================================  ========================================================

Ports, database and cookie secret are given as ``jupyterhub`` command-line flags
(:func:`hub_command`), so that the config file needs no dev-only knowledge of them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .hubconfig import BASE_CONFIG_ENV, DEV_CONFIG_FILE

#: The hub config file the dev stack gives ``jupyterhub -f`` (see the module docstring).
DEV_HUB_CONFIG = DEV_CONFIG_FILE

#: Users the OIDC provider offers with one click; any other ``sub`` typed on its page works
#: too, with the claims ``{"sub": name, "email": name}`` only.
DEFAULT_USERS: tuple[dict, ...] = (
    {
        "sub": "alice",
        "preferred_username": "alice",
        "email": "alice@example.org",
        "name": "Alice",
        "groups": ["users"],
    },
    {
        "sub": "bob",
        "preferred_username": "bob",
        "email": "bob@example.org",
        "name": "Bob",
        "groups": ["users"],
    },
    {
        "sub": "admin",
        "preferred_username": "admin",
        "email": "admin@example.org",
        "name": "Admin",
        "groups": ["admins", "users"],
    },
)

#: The OAuth client id the hub uses with the dev provider (any value is accepted).
OAUTH_CLIENT_ID = "llmspawner-dev"
#: The matching secret (any value is accepted by the mock provider).
OAUTH_CLIENT_SECRET = "llmspawner-dev-secret"


def venv_bin() -> Path:
    """Return the folder of this Python's executables (the virtualenv's ``bin``)."""
    return Path(sys.executable).parent


def base_environment(
    environ: Mapping[str, str], *, marker: tuple[str, str], extra: Mapping[str, str] = ()
) -> dict[str, str]:
    """Return a child's environment: ``environ`` + the stack marker + ``extra``.

    The virtualenv's ``bin`` goes first on ``PATH``, so that children find ``jupyterhub``,
    ``jupyterhub-singleuser``, ``mlflow`` and ``llamafactory-cli`` of this environment.
    """
    env = dict(environ)
    path = env.get("PATH", os.defpath)
    env["PATH"] = os.pathsep.join([str(venv_bin()), path])
    env["PYTHONUNBUFFERED"] = "1"
    env[marker[0]] = marker[1]
    env.update(extra)
    return env


def devcluster_command(*, data_dir: Path, port: int = 0) -> list[str]:
    """Command line of the emulated cluster; it prints one JSON line when ready."""
    return [
        sys.executable,
        "-m",
        "devcluster",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
    ]


#: MLflow's path on the hub: the dev stack's MLflow is the hub service ``mlflow`` and serves
#: under this prefix (``--static-prefix``), as on a real cluster (docs/mlflow.md).
MLFLOW_PREFIX = "/services/mlflow"
#: The hub groups whose members are MLflow admins in the dev stack (the OIDC user ``admin``).
MLFLOW_ADMIN_GROUPS = ("admins",)


def mlflow_command(
    *, workdir: Path, host: str, port: int, auth: bool = False, static_prefix: str = ""
) -> list[str]:
    """Command line of the MLflow tracking server on SQLite, artifacts served by it
    (``--serve-artifacts``) from ``<workdir>/mlflow-artifacts``.

    ``--allowed-hosts`` lets the hub and the pods (each on its own ``127.x.y.z``) call it;
    ``--workers 1`` keeps it small. ``auth``: MLflow's auth app (``--app-name basic-auth``,
    configured by :func:`mlflow_auth_environment`); ``static_prefix``: serve under that path
    (the dev stack: :data:`MLFLOW_PREFIX`). See ``mlflow server --help`` (MLflow 3).
    """
    argv = [
        str(venv_bin() / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        # Artifacts through the server (the proxied store, ``mlflow-artifacts:``), as on a
        # real cluster (deploy/manifests/mlflow): pods upload with their own token.
        "--serve-artifacts",
        "--artifacts-destination",
        str(workdir / "mlflow-artifacts"),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--allowed-hosts",
        # N: and its own address (the pod bridge's gateway, where pods reach it)
        "localhost,localhost:*,127.*" + ("" if host.startswith("127.") else f",{host},{host}:*"),
    ]
    if auth:
        argv += ["--app-name", "basic-auth"]
    if static_prefix:
        argv += ["--static-prefix", static_prefix]
    return argv


def mlflow_environment() -> dict[str, str]:
    """Extra environment of the MLflow server: no job runner (its ~7 worker processes)."""
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def mlflow_auth_config(workdir: Path) -> str:
    """The auth app's config file (``MLFLOW_AUTH_CONFIG_PATH``): users and permissions in
    ``<workdir>/mlflow-auth.db``, hub tokens checked by ``llmspawner.mlflow_auth``."""
    from llmspawner.mlflow_auth import auth_config_text

    return auth_config_text(database_uri=f"sqlite:///{workdir / 'mlflow-auth.db'}")


def mlflow_auth_environment(
    *,
    config_path: Path,
    hub_api_url: str,
    service_token: str,
    admin_password: str,
    secret_key: str,
    admin_groups: Iterable[str] = MLFLOW_ADMIN_GROUPS,
    ttl: float = 5.0,
) -> dict[str, str]:
    """The MLflow server's environment for the auth app with the hub's login.

    Args:
        config_path: the file of :func:`mlflow_auth_config`.
        hub_api_url: the hub's API as MLflow reaches it (``http://host:port/hub/api``).
        service_token: the ``mlflow`` service's API token (the hub has it too).
        admin_password: the password of MLflow's bootstrap admin (the hub has it too).
        secret_key: Flask's secret key (MLflow's auth app needs one).
        admin_groups: hub groups whose members are MLflow admins.
        ttl: seconds a hub answer about a token is cached.
    """
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(config_path),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key,
        "JUPYTERHUB_API_URL": hub_api_url,
        "JUPYTERHUB_API_TOKEN": service_token,
        "JUPYTERHUB_SERVICE_PREFIX": MLFLOW_PREFIX + "/",
        "LLMSPAWNER_MLFLOW_ADMIN_GROUPS": ",".join(admin_groups),
        "LLMSPAWNER_MLFLOW_AUTH_TTL": str(ttl),
    }


def mlflow_hub_environment(*, service_token: str, admin_password: str) -> dict[str, str]:
    """The hub's variables for MLflow as its service ``mlflow``: the service's token, and
    MLflow's admin credential (for the hub and the queue only, never a pod's)."""
    from llmspawner.mlflow_auth import DEFAULT_ADMIN_USERNAME

    return {
        "LLMSPAWNER_MLFLOW_SERVICE_TOKEN": service_token,
        "MLFLOW_TRACKING_USERNAME": DEFAULT_ADMIN_USERNAME,
        "MLFLOW_TRACKING_PASSWORD": admin_password,
    }


def oidc_command(*, host: str, port: int, users: Iterable[Mapping] = DEFAULT_USERS) -> list[str]:
    """Command line of the mock OIDC provider (``oidc-provider-mock``) with ``users``.

    Each user is a claims mapping with a ``sub``; it is offered as a one-click button and
    its claims (e.g. ``preferred_username``, ``groups``) are returned by ``/userinfo``.
    """
    # oidc-provider-mock with a page that works offline (llmspawner_dev/oidc.py).
    argv = [sys.executable, "-m", "llmspawner_dev.oidc", "--host", host, "--port", str(port)]
    for user in users:
        if not user.get("sub"):
            raise ValueError(f"OIDC user {dict(user)!r} has no 'sub'")
        argv += ["--user-claims", json.dumps(dict(user), separators=(",", ":"))]
    return argv


def hub_command(
    *,
    config_file: Path,
    workdir: Path,
    host: str,
    port: int,
    hub_port: int,
    proxy_api_port: int,
    extra_args: Sequence[str] = (),
    hub_host: str | None = None,
) -> list[str]:
    """Command line of the hub: ``jupyterhub -f <config>`` with ports and state in ``workdir``.

    ``hub_host`` (N): the address of the hub's own port (``hub_bind_url``, the API the pods
    and services call; the cluster's ``host_address``), default ``host``."""
    return [
        str(venv_bin() / "jupyterhub"),
        "-f",
        str(config_file),
        f"--JupyterHub.bind_url=http://{host}:{port}",
        f"--JupyterHub.hub_bind_url=http://{hub_host or host}:{hub_port}",
        f"--JupyterHub.db_url=sqlite:///{workdir / 'jupyterhub.sqlite'}",
        f"--JupyterHub.cookie_secret_file={workdir / 'jupyterhub_cookie_secret'}",
        f"--JupyterHub.pid_file={workdir / 'jupyterhub.pid'}",
        f"--ConfigurableHTTPProxy.api_url=http://{host}:{proxy_api_port}",
        f"--ConfigurableHTTPProxy.pid_file={workdir / 'jupyterhub-proxy.pid'}",
        *extra_args,
    ]


def hub_environment(
    *,
    kubeconfig: str,
    namespace: str,
    mlflow_url: str,
    oidc_issuer: str,
    oidc_endpoints: Mapping[str, str],
    hub_url: str,
    base_config: Path,
) -> dict[str, str]:
    """Return the hub's contract variables (see the module docstring).

    Args:
        base_config: the production hub config that :data:`DEV_HUB_CONFIG` runs.
        oidc_endpoints: the provider's discovery document (``authorization_endpoint``,
            ``token_endpoint``, ``userinfo_endpoint`` are used).
        hub_url: the hub's public URL, without a trailing ``/``.
    """
    return {
        "KUBECONFIG": kubeconfig,
        "LLMSPAWNER_NAMESPACE": namespace,
        "LLMSPAWNER_MLFLOW_TRACKING_URI": mlflow_url,
        BASE_CONFIG_ENV: str(base_config),
        "LLMSPAWNER_ALLOW_ALL": "1",
        "LLMSPAWNER_OIDC_ISSUER": oidc_issuer,
        # Any name typed on the mock provider's page logs in: only "sub" is always there.
        "LLMSPAWNER_OIDC_USERNAME_CLAIM": "sub",
        "OAUTH2_AUTHORIZE_URL": oidc_endpoints["authorization_endpoint"],
        "OAUTH2_TOKEN_URL": oidc_endpoints["token_endpoint"],
        "OAUTH2_USERDATA_URL": oidc_endpoints["userinfo_endpoint"],
        "OAUTH_CLIENT_ID": OAUTH_CLIENT_ID,
        "OAUTH_CLIENT_SECRET": OAUTH_CLIENT_SECRET,
        "OAUTH_CALLBACK_URL": f"{hub_url}/hub/oauth_callback",
    }
