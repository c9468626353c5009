"""``llmspawner profiles check [DIR]`` and ``llmspawner profiles render --user N --profile S``.

For operators: check the profile files exactly as the hub checks them at start, and print the
pod a user would get, as YAML, for ``kubectl apply --dry-run=server -f -``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import yaml

from . import profiles as profiles_mod
from .settings import (
    REPO_PROFILES,
    LLMPlatform,
    SettingError,
    parse_csv,
    parse_int,
    resolve_hub_settings,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``check`` and ``render`` subcommands to ``parser``.

    Every setting left out on the command line comes from the environment as in the hub's
    services (``LLMSPAWNER_PLATFORM``, then ``LLMSPAWNER_<SETTING>``; see
    :class:`llmspawner.settings.LLMPlatform`), then the defaults; the profiles folder's
    default is the repository's ``profiles/``.
    """
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
    render.add_argument("--namespace", default=None, help="namespace of the pod (default: default)")
    render.add_argument("--storage-claim", default=None, help="shared PVC name")
    render.add_argument("--mlflow-tracking-uri", default=None, help="MLflow URL")
    render.add_argument("--image", default=None, help="user image")
    _cluster_arguments(render)


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shared-resource",
        default=None,
        help="time-sliced GPU resource name (default: "
        f"{LLMPlatform.gpu_shared_resource.default()})",
    )
    parser.add_argument(
        "--replica-counts",
        default=None,
        help="replica counts GPU nodes are labelled with, comma-separated (default: "
        + ",".join(map(str, LLMPlatform.gpu_replica_counts.default()))
        + ")",
    )
    parser.add_argument(
        "--mig-strategy",
        default=None,
        choices=profiles_mod.MIG_STRATEGIES,
        help=f"the device plugin's MIG strategy (default: {LLMPlatform.mig_strategy.default()})",
    )


def settings_from_args(args: argparse.Namespace, env=None) -> LLMPlatform:
    """The platform settings of a ``profiles`` command: its options over
    :meth:`LLMPlatform.from_env(env) <llmspawner.settings.LLMPlatform.from_env>`, the
    profiles folder defaulting to :data:`~llmspawner.settings.REPO_PROFILES`.

    Raises:
        SystemExit: naming the option or setting whose value is invalid.
    """
    overrides: dict = {
        "profiles_dir": args.dir,
        "gpu_shared_resource": args.shared_resource,
        "mig_strategy": args.mig_strategy,
    }
    try:
        if args.replica_counts is not None:
            overrides["gpu_replica_counts"] = [
                parse_int(n, name="--replica-counts", default=0)
                for n in parse_csv(args.replica_counts)
            ]
        if args.profiles_command == "render":
            overrides.update(
                namespace=args.namespace,
                storage_claim_name=args.storage_claim,
                mlflow_tracking_uri=args.mlflow_tracking_uri,
                image=args.image or None,
            )
        return LLMPlatform.from_env(
            env, overrides=overrides, defaults={"profiles_dir": str(REPO_PROFILES)}
        )
    except SettingError as e:
        raise SystemExit(f"error: {e}") from None


def run(args: argparse.Namespace) -> int:
    """Run ``check`` or ``render``; return the exit status (1 when a profile is invalid)."""
    settings = settings_from_args(args)
    if args.profiles_command == "check":
        return check(settings)
    return render(args, settings)


def check(settings: LLMPlatform) -> int:
    """Validate the profiles folder of ``settings`` (no cache); print one line per profile, or
    the error. Return 0 or 1."""
    try:
        loaded = settings.load_profiles()
    except profiles_mod.ProfileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for p in loaded:
        extra = " (default)" if p.default else ""
        groups = f", groups: {', '.join(p.allowed_groups)}" if p.allowed_groups else ""
        print(f"ok  {p.source:<20} {p.slug:<12} {p.gpu.label:<10}{extra}{groups}")
    print(f"{len(loaded)} profiles in {settings.profiles_dir} are valid")
    return 0


def render(args: argparse.Namespace, settings: LLMPlatform) -> int:
    """Print the pod manifest of ``--user`` on ``--profile`` as YAML. Return 0, 1 or 2.

    The spawner gets ``settings`` as the hub hands them to it
    (:func:`llmspawner.settings.resolve_hub_settings` on a config holding them); namespace
    ``default`` unless given.
    """
    from traitlets.config import Config

    c = Config()
    for name, value in settings.to_dict().items():
        c.LLMPlatform[name] = value
    if not settings.namespace:
        c.LLMPlatform.namespace = "default"
    if not settings.image:
        del c.LLMPlatform["image"]  # the spawner's own default image
    try:
        settings = resolve_hub_settings(c, env={})
    except SettingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if check_quietly(settings):
        return 1
    try:
        manifest = asyncio.run(_pod_manifest(c, args.user, args.profile, args.group))
    except _Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    manifest["metadata"]["namespace"] = settings.namespace
    yaml.safe_dump(manifest, sys.stdout, sort_keys=False)
    return 0


def check_quietly(settings: LLMPlatform) -> bool:
    """Print the profiles' error, if any, to stderr; return whether there was one."""
    try:
        settings.load_profiles()
    except profiles_mod.ProfileError as e:
        print(f"error: {e}", file=sys.stderr)
        return True
    return False


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
    return manifest
