"""Entry point: `python -m celery_operator [--namespace NS ...| --all-namespaces]`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m celery_operator",
        description="Run the celery-operator: reconcile TaskQueues and PeriodicJobs into a running Celery system.",
        epilog="Settings come from CELERY_OPERATOR_* environment variables.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--liveness", default=None, metavar="URL",
                        help="serve the probe endpoint at this URL, e.g. http://0.0.0.0:8080/healthz")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import kopf

    from celery_operator.lifecycle import install_default
    from celery_operator.rediscovery import new_insights

    # `kopf run` sets up logging itself; run programmatically, kopf leaves that to us
    settings = install_default()
    level = settings.log_level.upper()
    kopf.configure(debug=level == "DEBUG", quiet=level in ("WARNING", "ERROR"))

    def run(write_guard: Callable[[], None] | None = None) -> None:
        insights = new_insights()  # shared with the rescans of CRDs installed after the start
        kopf.run(
            insights=insights,
            memo=kopf.Memo(kopf_insights=insights, write_guard=write_guard),
            standalone=True,  # kopf's peering pauses operators, it elects none: election.py does
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.liveness,
        )

    if not settings.leader_election_lease:
        run()
        return 0
    from celery_operator.election import run_elected
    return run_elected(settings, args.liveness, run)


if __name__ == "__main__":
    sys.exit(main())
