"""python -m devcluster.agent --dir CLUSTER_DIR --kubeconfig KUBECONFIG --node-name NODE
--pod-network 127.A.0.0/16 --project-root PROJECT_ROOT"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from devcluster.agent.agent import AgentSettings, run_agent


def parse_arguments(argv: list[str]) -> AgentSettings:
    parser = argparse.ArgumentParser(prog="python -m devcluster.agent", description=__doc__)
    parser.add_argument("--dir", type=Path, required=True, help="the cluster directory")
    parser.add_argument("--kubeconfig", type=Path, required=True, help="admin kubeconfig of the API server")
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--pod-network", required=True, help="pod IPs come from here, e.g. 127.150.0.0/16")
    parser.add_argument("--project-root", type=Path, required=True,
                        help="its .venv/bin goes first on PATH, its app/ on PYTHONPATH")
    parser.add_argument("--cpu-capacity", default=None,
                        help="report this many CPUs instead of the machine's (default: the machine's)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    return AgentSettings(cluster_dir=args.dir.resolve(), kubeconfig=args.kubeconfig.resolve(),
                         node_name=args.node_name, pod_network=args.pod_network,
                         project_root=args.project_root.resolve(), cpu_capacity=args.cpu_capacity)


def main(argv: list[str] | None = None) -> int:
    run_agent(parse_arguments(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
