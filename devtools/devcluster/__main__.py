"""``python -m devcluster``: run an emulated Kubernetes cluster until SIGINT/SIGTERM.

Prints one line of JSON to stdout once ready (``{"url", "kubeconfig", "data_dir",
"host_address"}``; ``host_address``: where pods reach this machine, N:
`kubelet.Kubelet.start_network`), then logs to stderr. On SIGINT/SIGTERM it kills every pod
process and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from .cluster import DevCluster
from .kubelet import DEFAULT_POD_NETWORK, KubeletConfig
from .nodes import NodeConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``--image`` may repeat (``NAME=PREFIX``)."""
    parser = argparse.ArgumentParser(
        prog="python -m devcluster",
        description="Emulated Kubernetes cluster for development and tests (never production).",
    )
    parser.add_argument("--data-dir", required=True, help="folder for PVC data, pods, kubeconfig")
    parser.add_argument("--host", default="127.0.0.1", help="API server address")
    parser.add_argument("--port", type=int, default=0, help="API server port (0: any free one)")
    parser.add_argument("--nodes", help="node layout file (YAML or JSON list of nodes)")
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="NAME=PREFIX",
        help="map a container image to a local Python environment prefix (repeatable; "
        "NAME '*' for every other image)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=2.0,
        help="seconds between SIGTERM and SIGKILL of pod processes at shutdown",
    )
    parser.add_argument(  # N: devcluster.podnet
        "--pod-network",
        choices=("auto", "isolated", "host"),
        default=None,
        help="isolated: one network namespace per pod; host: pods share this machine's; "
        "auto: isolated where possible (default: $DEVCLUSTER_POD_NETWORK, else "
        f"{DEFAULT_POD_NETWORK})",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (stderr)")
    args = parser.parse_args(argv)
    images = {}
    for item in args.image:
        name, sep, prefix = item.partition("=")
        if not sep or not name or not prefix:
            parser.error(f"--image expects NAME=PREFIX, got {item!r}")
        images[name] = prefix
    args.images = images
    return args


async def serve(args: argparse.Namespace) -> None:
    """Start the cluster, print the ready line, wait for SIGINT/SIGTERM, stop."""
    cluster = DevCluster(
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        nodes=args.nodes,
        images=args.images,
        kubelet=KubeletConfig(
            shutdown_grace=args.shutdown_grace,
            **({"pod_network": args.pod_network} if args.pod_network else {}),  # N
        ),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await cluster.start()
    try:
        line = {
            "url": cluster.url,
            "kubeconfig": str(cluster.kubeconfig_path),
            "data_dir": str(cluster.data_dir),
            "host_address": cluster.host_address,  # N
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        await stop.wait()
        logging.getLogger(__name__).info("devcluster stopping")
    finally:
        await cluster.stop()


def main(argv: list[str] | None = None) -> int:
    """Command entry point; returns the exit status (0 after SIGINT/SIGTERM, 2 on bad
    arguments or node layout)."""
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(serve(args))
    except NodeConfigError as exc:
        sys.stderr.write(f"devcluster: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
