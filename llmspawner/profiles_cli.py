"""``llmspawner profiles check [DIR]`` and ``llmspawner profiles render --user N --profile S``.

For operators: check the profile files exactly as the hub checks them at start, and print the
pod a user would get, as YAML, for ``kubectl apply --dry-run=server -f -``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

import yaml

from . import profiles as profiles_mod
from .hubconfig import REPO_PROFILES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``check`` and ``render`` subcommands to ``parser``."""
    sub = parser.add_subparsers(dest="profiles_command", metavar="<check|render>")
    sub.required = True
    check = sub.add_parser("check", help="validate the profile files as the hub does at start")
    check.add_argument("dir", nargs="?", default=None, help="profiles folder")
    _cluster_arguments(check)
    render = sub.add_parser("render", help="print the pod of a user on a profile as YAML")
    render.add_argument("--user", required=True, help="the hub's (normalised) username")
    render.add_argument("--profile", default="", help="profile slug (default: the default one)")
    render.add_argument("--dir", default=None, help="profiles folder")
    render.add_argument("--group", action="append", default=[], help="a group of the user")
    render.add_argument("--namespace", default="default", help="namespace of the pod")
    render.add_argument("--storage-claim", default="llm-storage", help="shared PVC name")
    render.add_argument("--mlflow-tracking-uri", default="", help="MLflow URL")
    render.add_argument("--image", default="", help="user image")
    _cluster_arguments(render)


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shared-resource", default="nvidia.com/gpu", help="time-sliced GPU resource name"
    )
    parser.add_argument(
        "--replica-counts", default="2,4", help="replica counts GPU nodes are labelled with"
    )
    parser.add_argument("--mig-strategy", default="mixed", choices=("mixed", "single"))


def _folder(value: str | None) -> Path:
    return Path(value or os.environ.get("LLMSPAWNER_PROFILES_DIR") or REPO_PROFILES)


def _cluster(args: argparse.Namespace) -> profiles_mod.ClusterGPUConfig:
    try:
        counts = tuple(int(n) for n in args.replica_counts.split(",") if n.strip())
    except ValueError:
        raise SystemExit(
            "--replica-counts must be whole numbers separated by commas, "
            f"not {args.replica_counts!r}"
        ) from None
    return profiles_mod.ClusterGPUConfig(
        shared_resource=args.shared_resource, replica_counts=counts, mig_strategy=args.mig_strategy
    )


def run(args: argparse.Namespace) -> int:
    """Run ``check`` or ``render``; return the exit status (1 when a profile is invalid)."""
    if args.profiles_command == "check":
        return check(_folder(args.dir), _cluster(args))
    return render(args)


def check(folder: Path, cluster: profiles_mod.ClusterGPUConfig) -> int:
    """Validate ``folder``; print one line per profile, or the error. Return 0 or 1."""
    try:
        loaded = profiles_mod.load_profiles(folder, cluster)
    except profiles_mod.ProfileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for p in loaded:
        extra = " (default)" if p.default else ""
        groups = f", groups: {', '.join(p.allowed_groups)}" if p.allowed_groups else ""
        print(f"ok  {p.source:<20} {p.slug:<12} {p.gpu.label:<10}{extra}{groups}")
    print(f"{len(loaded)} profiles in {folder} are valid")
    return 0


def render(args: argparse.Namespace) -> int:
    """Print the pod manifest of ``--user`` on ``--profile`` as YAML. Return 0, 1 or 2."""
    from traitlets.config import Config

    c = Config()
    c.LLMSpawner.profiles_dir = str(_folder(args.dir))
    cluster = _cluster(args)
    c.LLMSpawner.gpu_shared_resource = cluster.shared_resource
    c.LLMSpawner.gpu_replica_counts = list(cluster.replica_counts)
    c.LLMSpawner.mig_strategy = cluster.mig_strategy
    c.LLMSpawner.namespace = args.namespace
    c.LLMSpawner.storage_claim_name = args.storage_claim
    c.LLMSpawner.mlflow_tracking_uri = args.mlflow_tracking_uri
    if args.image:
        c.LLMSpawner.image = args.image
    try:
        profiles_mod.load_profiles(c.LLMSpawner.profiles_dir, cluster)
    except profiles_mod.ProfileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        manifest = asyncio.run(_pod_manifest(c, args.user, args.profile, args.group))
    except _Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    yaml.safe_dump(manifest, sys.stdout, sort_keys=False)
    return 0


class _Refused(Exception):
    pass


async def _pod_manifest(config, username: str, profile: str, groups: list[str]) -> dict:
    """Build the pod exactly as the spawner would, with no cluster and no hub."""
    from types import SimpleNamespace

    from kubernetes_asyncio.client import ApiClient
    from kubernetes_asyncio.config import kube_config
    from tornado import web

    from .spawner import LLMSpawner

    with tempfile.TemporaryDirectory() as tmp:
        # KubeSpawner's constructor loads cluster credentials although building a manifest
        # needs none; give it a placeholder, never contacted.
        stub = Path(tmp) / "kubeconfig"
        stub.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: none\n"
            "clusters: [{name: none, cluster: {server: 'http://127.0.0.1:9'}}]\n"
            "users: [{name: none, user: {}}]\n"
            "contexts: [{name: none, context: {cluster: none, user: none}}]\n"
        )
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(stub)
        # The user is given at construction (KubeSpawner expands its name templates there);
        # _mock: kubespawner's stand-in hub object (no hub is running here).
        user = SimpleNamespace(
            name=username,
            id=0,
            url=f"/user/{username}/",
            groups=[SimpleNamespace(name=g) for g in groups],
        )
        spawner = LLMSpawner(config=config, user=user, _mock=True)
        options = {"profile": profile} if profile else {}
        try:
            spawner.apply_user_options(spawner, options)
        except web.HTTPError as e:
            raise _Refused(e.log_message) from None
        spawner.user_options = options
        await spawner.load_user_options()
        pod = await spawner.get_pod_manifest()
        async with ApiClient() as api:
            manifest = api.sanitize_for_serialization(pod)
    manifest.setdefault("apiVersion", "v1")
    manifest.setdefault("kind", "Pod")
    manifest["metadata"]["namespace"] = config.LLMSpawner.namespace
    return manifest
