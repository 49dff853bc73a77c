"""All broker I/O: queue depth, reserved messages, tasks in flight, busy workers, reachability.
Sync APIs with timeouts everywhere; the scaler calls them from a worker thread.

One module per concern:

- `urls`: broker URL schemes, redaction and scrubbing of passwords, `BrokerUnavailable`.
- `connections`: the one way connections are made and owned (see its docstring).
- `probe`: is the broker reachable from the operator (BrokerReady).
- `workers`: the `<queue>@<pod>` node names the operator gives Celery workers.
- `depth`: pending and reserved messages per queue (Redis: `depth.lua`, one call; AMQP: passive declares).
- `control`: a Celery control app whose commands cannot retry forever, and `busy_workers` (inspect).
- `heartbeats`: tasks in flight and busy pods, from the workers' own heartbeat events.
- `arrivals`: Redis keyspace notifications that wake the scaler when a queue's backlog outgrows its
  workers (a queue at zero: its first message), between two polls.
- `registry`: the operator's broker port: one set of readers per broker URL, shared by its TaskQueues.

How the scaler puts it together (all calls blocking, bounded by `timeout`; run them in a thread):

    session = registry.session(user, url)             # depth reader + heartbeat monitor, kept across ticks
    depths = session.read_depths(queues)               # BrokerUnavailable -> scaling_policy.Unknown()
    activity = session.activity(q, pods=pod_names)     # BrokerUnavailable -> scaling_policy.Unknown()
    Observation(pending=depths[q].pending,
                in_flight=depths[q].reserved + activity.in_flight,
                busy_workers=len(activity.busy_pods))
    # only when a scale-down is about to happen, fresh from the workers themselves:
    session.busy_workers([worker_hostname(q, pod) for pod in pod_names], timeout=1.0)

Secrets: the broker URL carries a password. It never appears in an exception, log line, repr or
thread name from this package: `redact(url)` replaces it with `***`, and error texts are scrubbed of it.
"""
