"""``llmspawner queue render CONFIG --user NAME --profile SLUG [--priority P]``: print, offline,
the ConfigMap and Job that the queue would create for this submission, as YAML.

For admins, as ``llmspawner profiles render`` is for a server's pod: the config is checked and
prepared as the queue does it (:func:`llmspawner.queue.lf_config.check_config_now`: paths,
MLflow, ``overwrite_output_dir`` for the first attempt only, the checkpoint interval), and the
Job is the one the control loop builds (:func:`llmspawner.queue.control.job_manifests`): the
retry and disruption settings (``backoffLimit``, ``podFailurePolicy``, ``restartPolicy``), the
deadline (the profile's ``max_runtime``), the PriorityClass, the security contexts, the storage.
No cluster, hub or MLflow is contacted. The output is valid for Kubernetes 1.32 (``kubectl apply
--dry-run=server -f -`` takes it). Settings come as for ``llmspawner profiles``: the options,
then the environment of the hub's services (``LLMSPAWNER_PLATFORM``, ``LLMSPAWNER_<SETTING>``),
then the defaults; the profiles folder defaults to the repository's ``profiles/``.
"""

from __future__ import annotations

import argparse
import sys

from .states import DEFAULT_PRIORITY, PRIORITIES

# Only the standard library at import: ``llmspawner queue`` (this module's parser included) is
# the in-pod client; what render needs is imported when it runs.


def add_render_arguments(sub) -> None:
    """Add the ``render`` subcommand to the ``queue`` subparsers ``sub``."""
    p = sub.add_parser(
        "render",
        help="print offline the Job and ConfigMap a submission would create (admins)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("config", help="the training config, YAML or JSON ('-': standard input)")
    p.add_argument("--user", required=True, help="the hub's (normalised) username")
    p.add_argument("--profile", required=True, help="profile slug")
    p.add_argument("--priority", choices=PRIORITIES, default=DEFAULT_PRIORITY)
    p.add_argument("--job-id", type=int, default=1, help="the job id in the names (default 1)")
    p.add_argument(
        "--attempt", type=int, default=1, help="the attempt (2, ...: a requeued job's Job)"
    )
    p.add_argument("--dir", default=None, help="profiles folder")
    p.add_argument("--group", action="append", default=[], help="a group of the user")
    p.add_argument("--namespace", default=None, help="namespace (default: default)")
    p.add_argument("--storage-claim", default=None, help="shared PVC name")
    p.add_argument("--mlflow-tracking-uri", default=None, help="MLflow URL")
    p.add_argument("--image", default=None, help="training image")


def settings_from_args(args: argparse.Namespace, env=None):
    """The platform settings of ``render``: its options over
    :meth:`LLMPlatform.from_env(env) <llmspawner.settings.LLMPlatform.from_env>`.

    Raises:
        SettingError: naming the setting whose value is invalid.
    """
    from ..settings import REPO_PROFILES, LLMPlatform

    overrides = {
        "profiles_dir": args.dir,
        "namespace": args.namespace,
        "storage_claim_name": args.storage_claim,
        "mlflow_tracking_uri": args.mlflow_tracking_uri,
        "image": args.image or None,
    }
    return LLMPlatform.from_env(
        env, overrides=overrides, defaults={"profiles_dir": str(REPO_PROFILES)}
    )


def render(args: argparse.Namespace, env=None, out=None) -> int:
    """Print the ConfigMap and the Job (a YAML stream of two documents) to ``out``.

    Returns:
        0; 1 for an invalid setting or profile file; 2 for an unknown or forbidden profile or
        an invalid config (every problem printed to stderr).
    """
    import yaml

    from ..profiles import ProfileError
    from ..settings import SettingError
    from . import k8s_objects, lf_config, limits
    from .context import QueueSettings
    from .control import job_manifests

    out = sys.stdout if out is None else out
    try:
        platform = settings_from_args(args, env)
        profiles = platform.load_profiles()
    except (SettingError, ProfileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    allowed = [p for p in profiles if p.allows(args.group)]
    profile = next((p for p in allowed if p.slug == args.profile), None)
    if profile is None:
        print(
            f"error: unknown profile {args.profile!r} for {args.user}; allowed: "
            f"{', '.join(p.slug for p in allowed)}",
            file=sys.stderr,
        )
        return 2
    try:
        text = sys.stdin.read() if args.config == "-" else open(args.config).read()  # noqa: SIM115
    except OSError as e:
        print(f"error: cannot read {args.config}: {e}", file=sys.stderr)
        return 2
    name = k8s_objects.job_name(args.user, args.job_id, args.attempt)
    try:
        prepared = lf_config.check_config_now(text, username=args.user)
    except lf_config.ConfigInvalid as e:
        print(f"error: the training config is invalid:\n{e}", file=sys.stderr)
        return 2
    except limits.LimitExceeded as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    prepared["run_name"] = name
    tracking = bool(platform.mlflow_tracking_uri)
    if not (platform.image or profile.image):
        print(
            f"error: no training image: give --image (or set LLMSPAWNER_IMAGE, as the hub's "
            f"LLMPlatform.image), or an image in profile {profile.slug!r}",
            file=sys.stderr,
        )
        return 2
    global _Dumper
    if _Dumper is None:
        _Dumper = _literal_blocks()
    config_map, job = job_manifests(
        job_id=args.job_id,
        username=args.user,
        name=name,
        config=prepared,
        priority=args.priority,
        profile=profile,
        platform=platform,
        settings=QueueSettings(),
        namespace=platform.namespace or "default",
        mlflow_token_secret=name if tracking else None,
    )
    print(
        f"# llmspawner queue render: job {args.job_id} of {args.user} on profile "
        f"{profile.slug} ({args.priority}), attempt {args.attempt}",
        file=out,
    )
    if tracking:
        print(
            f"# The Secret {name} (key token: the user's MLflow-only hub token) is made by the "
            "queue when it creates the Job; not shown.",
            file=out,
        )
    yaml.dump_all([config_map, job], out, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    return 0


def _literal_blocks():
    import yaml

    class Dumper(yaml.SafeDumper):
        """Multi-line strings (the ConfigMap's config) as ``|`` blocks, readable as written."""

    def text(dumper, value: str):
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return Dumper


_Dumper = None  # set on first use (yaml is imported only when render runs)
