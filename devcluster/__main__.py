"""python -m devcluster build | promtool | kube-router | kube-score | keda | images | up | down | status | keda-up"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from devcluster import build, cluster


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devcluster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build or find the cached control-plane binaries; prints the bin directory")
    commands.add_parser("promtool", help="build or find the cached promtool; prints its path")
    commands.add_parser("kube-router", help="build or find the cached kube-router (the nodes' NetworkPolicy engine); "
                                            "prints its path")
    commands.add_parser("kube-score", help="build or find the cached kube-score; prints its path")
    commands.add_parser("keda", help="build or find the cached KEDA operator and metrics server; prints their directory")
    commands.add_parser("images", help="build or find the cached images: [KEY ...]; prints each one's size and build time",
                        add_help=False)
    for name, text in (("up", "start the cluster (idempotent)"), ("down", "stop everything the cluster started"),
                       ("status", "say what runs"),
                       ("keda-up", "run KEDA (operator and metrics server) in the running cluster (idempotent)")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--dir", type=Path, default=cluster.DEFAULT_DIR, help="the cluster's directory")
    commands.choices["up"].add_argument("--nodes", type=int, default=None,
                                        help="real nodes (kubelet on containerd), default 1; 0 = control plane only")
    return parser


def _up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        running = cluster.up(args.dir, nodes=args.nodes)
    except (cluster.ClusterError, build.BuildError) as failure:
        print(f"devcluster up: {failure}", file=sys.stderr)
        return 1
    print(f"devcluster up: ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
    print(f"export KUBECONFIG={running.kubeconfig}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "images":
        from devcluster import images

        return images.main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "build":
        return build.main()
    if args.command == "promtool":
        from devcluster import promtool

        return promtool.main()
    if args.command == "kube-router":
        from devcluster import kuberouter

        return kuberouter.main()
    if args.command == "kube-score":
        from devcluster import kubescore

        return kubescore.main()
    if args.command == "keda":
        from devcluster import keda

        return keda.main()
    if args.command == "keda-up":
        from devcluster import keda_deploy

        return keda_deploy.main(args.dir)
    if args.command == "up":
        return _up(args)
    if args.command == "down":
        stopped = cluster.down(args.dir)
        print("devcluster down: stopped " + (", ".join(stopped) if stopped else "nothing (nothing was running)"))
        return 0
    report = cluster.status(args.dir)
    print(json.dumps(report, indent=2))
    return 0 if report.get("ready") else 3


if __name__ == "__main__":
    sys.exit(main())
