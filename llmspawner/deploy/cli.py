"""``llmspawner deploy check``: validate a deployment's files offline, before ``helm install``.

Usage::

    llmspawner deploy check [--values helm-values.yaml] [--manifests deploy/manifests]
                            [--profiles profiles]

Paths are relative to the current folder. Checks, with no cluster, no ``helm`` and no
network: the values merged over the zero-to-jupyterhub chart's defaults against the chart's
schema (shipped in the package) and llmspawner's own needs (spawner class, a real login
that re-checks the groups at auth refresh: ``llm-oauth`` with ``JUPYTERHUB_CRYPT_KEY`` from a
Secret, the proxy's activity poll off with the route repair on (a warning), storage off, the
chart's culler off, ``hub.extraConfig`` calling ``llmspawner.hubconfig.configure``, valid
``hub.config.LLMPlatform`` settings and none left under ``hub.config.LLMSpawner``, the
profiles folder mounted, no inline secrets, one TLS front door that can get its ports, one
scheduler, hub resource requests, the image-puller hook (a warning), MLflow behind the hub
(tracking URI under /services/mlflow, its service token and admin credential from Secrets), no
setting newer than the installed chart); every GPU profile file, with the values' GPU
settings; every object of the kustomize tree against Kubernetes 1.32 and the newest version
kubernetes-validate knows (strict). Prints one line per problem, ``FILE: PATH: message``, then
a summary line.

Exit status: 0 no problems (warnings allowed), 1 problems, 2 usage error (e.g. a path that
does not exist, or the ``deploy`` extra not installed: ``pip install llmspawner[deploy]``).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``check`` subcommand and its options to ``parser``."""
    sub = parser.add_subparsers(dest="deploy_command", metavar="<check>")
    sub.required = True
    check = sub.add_parser(
        "check",
        help="validate helm values, GPU profiles and manifests offline",
        description="Validate the z2jh values, the GPU profiles and the Kubernetes manifests "
        "offline; print one line per problem (FILE: PATH: message), then a summary.",
        epilog="Exit status: 0 no problems (warnings allowed), 1 problems, 2 usage error.",
    )
    check.add_argument(
        "--values", default="helm-values.yaml", help="z2jh values file (default: %(default)s)"
    )
    check.add_argument(
        "--manifests",
        default="deploy/manifests",
        help="kustomize folder, folder of manifests or one manifest file (default: %(default)s)",
    )
    check.add_argument(
        "--profiles", default="profiles", help="GPU profiles folder (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``deploy check``; print the problems and a summary. Return 0, 1 or 2."""
    try:
        import jsonschema  # noqa: F401
        import kubernetes_validate  # noqa: F401
    except ImportError as e:
        print(
            f"llmspawner deploy check: {e}; install the deploy extra: "
            "pip install 'llmspawner[deploy]'",
            file=sys.stderr,
        )
        return 2
    from .check import check_all

    try:
        report = check_all(args.values, args.manifests, args.profiles)
    except FileNotFoundError as e:
        print(f"llmspawner deploy check: {e.args[0]}: no such file or folder", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(problem.line())
    print(report.summary())
    return 0 if report.ok else 1
