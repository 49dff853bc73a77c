"""`python -m celery_operator.beat`: the beat of one TaskQueue (the operator runs it in `<tq>-beat`).

Configuration from the environment (the operator fills it from Secrets; URLs are never arguments,
so they never show in a process list):

  CELERY_BROKER_URL                  where the tasks are sent
  CELERY_OPERATOR_BEAT_STATE_URL     the Redis holding the schedule state (the broker when it is Redis)
  CELERY_OPERATOR_BEAT_KEY_PREFIX    the TaskQueue's key prefix, `celery-operator:beat:{<ns>/<tq>}:`
  CELERY_OPERATOR_BEAT_INSTANCE      this beat's name in the leader lease (the pod name)

SIGTERM or SIGINT stops it cleanly: the round in progress finishes and the lease is released.

With `--health-port N` it also answers `GET /healthz` on port N (beat/health.py): 200 while its
loop goes round, 503 once the loop is wedged. The operator's beat pod points its liveness probe there.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

from ..naming import BEAT_INSTANCE_ENV, BEAT_KEY_PREFIX_ENV, BEAT_STATE_URL_ENV, BROKER_URL_ENV, parse_beat_key_prefix


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m celery_operator.beat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-lease", action="store_true",
                        help="do not take the leader lease (every beat contends; the claims keep runs unique)")
    parser.add_argument("--max-catch-up", type=int, default=None, metavar="N",
                        help="at most N missed runs per job are caught up after an outage")
    parser.add_argument("--health-port", type=int, default=None, metavar="PORT",
                        help="serve GET /healthz on this port (the liveness probe's); none by default")
    parser.add_argument("--log-level", default=os.environ.get("CELERY_OPERATOR_LOG_LEVEL", "INFO"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("celery_operator.beat")
    missing = [name for name in (BROKER_URL_ENV, BEAT_STATE_URL_ENV, BEAT_KEY_PREFIX_ENV) if not os.environ.get(name)]
    if missing:
        log.error("missing environment: %s", ", ".join(missing))
        return 2

    from .health import HealthServer, Liveness
    from .runner import MAX_CATCH_UP, Beat, CelerySender
    from .state import BeatStore, StateLocation

    prefix = os.environ[BEAT_KEY_PREFIX_ENV]
    owner = parse_beat_key_prefix(prefix)
    if owner is None:
        log.error("%s=%r is not of the form celery-operator:beat:{<namespace>/<taskqueue>}:", BEAT_KEY_PREFIX_ENV,
                  prefix)
        return 2
    namespace, taskqueue = owner
    liveness = Liveness()
    health = None
    if args.health_port is not None:
        try:
            health = HealthServer(liveness, args.health_port).start()
        except OSError as error:
            log.error("cannot serve the liveness check on port %d: %s", args.health_port, error)
            return 2
        log.info("liveness: GET /healthz on port %d", health.port)
    broker_url = os.environ[BROKER_URL_ENV]
    store = BeatStore(StateLocation(url=os.environ[BEAT_STATE_URL_ENV], prefix=prefix))
    sender = CelerySender(broker_url)
    beat = Beat(store, sender, namespace=namespace, instance=os.environ.get(BEAT_INSTANCE_ENV) or None,
                max_catch_up=args.max_catch_up if args.max_catch_up is not None else MAX_CATCH_UP,
                lease=not args.no_lease, secrets=(broker_url,), liveness=liveness)
    stop = threading.Event()

    def on_signal(number: int, _frame: Any) -> None:
        log.info("%s: stopping", signal.Signals(number).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("beat %s for TaskQueue %s/%s starting", beat.instance, namespace, taskqueue)
    try:
        beat.run(stop)
    finally:
        if health is not None:
            health.stop()
        sender.close()
        store.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
