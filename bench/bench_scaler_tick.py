"""One scaler tick for many queues on one Redis: round trips and the operator's CPU time for
read (broker.depth.RedisDepthReader) + decide (scaling_policy.decide) + the heartbeat table lookups.

Starts its own redis-server on a free port, fills 400 queues with real Celery messages spread
over kombu's priority lists, puts reserved messages in kombu's `unacked` hash, and compares the
Lua script with the pipeline. Prints a table.

    .venv/bin/python bench/bench_scaler_tick.py [--queues 400] [--iterations 200] [--unacked 0,400,2000]

Round trips are counted on the client (redis-py `send_packed_command` calls, each followed by a
read of the replies) and on the server (`INFO commandstats` deltas: every command the server ran,
including those inside the script). CPU is `time.process_time()` of this process (the operator
side only) divided by the iterations; Redis' own time per call is `usec_per_call` of EVALSHA, or
the sum over the pipelined commands.
"""

from __future__ import annotations

import argparse
import sys
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # devcluster runs from the checkout

from bench import figures  # noqa: E402
from devcluster.ports import free_port  # noqa: E402
from celery import Celery
from celery_operator.broker.depth import RedisDepthReader
from celery_operator.broker.heartbeats import HeartbeatTable
from celery_operator.scaling_policy import History, Observation, ScalingPolicy, decide

SEP = "\x06\x16"


def start_redis(directory: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: apt-get install -y redis-server")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir",
         str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 15
    while True:
        try:
            if redis.Redis.from_url(url).ping():
                return process, url
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                process.terminate()
                raise
            time.sleep(0.05)


def sample_message(url: str) -> dict:
    """A real Celery task message as kombu stores it in a Redis list."""
    app = Celery("bench", broker=url, set_as_current=False)
    app.send_task("bench.task", args=[1, 2], kwargs={"x": "y" * 200}, queue="sample")
    client = redis.Redis.from_url(url)
    raw = client.rpop("sample")
    return json.loads(raw)


def fill(client: redis.Redis, queues: list[str], message: dict, unacked: int) -> int:
    body = json.dumps(message)
    pipe = client.pipeline(transaction=False)
    total = 0
    for i, queue in enumerate(queues):
        for step, count in (("", i % 5), (f"{SEP}3", i % 3), (f"{SEP}9", i % 2)):
            if count:
                pipe.lpush(queue + step, *([body] * count))
                total += count
    client.delete("unacked")
    for n in range(unacked):
        pipe.hset("unacked", f"tag-{n}", json.dumps([message, "", queues[n % len(queues)]]))
    pipe.execute()
    return total


def commandstats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in stats.items()}


def delta(before: dict, after: dict) -> dict[str, tuple[int, int]]:
    out = {}
    for name, (calls, usec) in after.items():
        c0, u0 = before.get(name, (0, 0))
        if calls - c0:
            out[name] = (calls - c0, usec - u0)
    out.pop("info", None)
    return out


def measure(url: str, queues: list[str], method: str, iterations: int, table: HeartbeatTable,
            policy: ScalingPolicy) -> dict[str, float]:
    reader = RedisDepthReader(url, method=method)  # type: ignore[arg-type]
    admin = redis.Redis.from_url(url)
    reader.read(queues)  # load the script, open the connection

    sends = 0
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):  # type: ignore[no-untyped-def]
        nonlocal sends
        sends += 1
        return original(self, command, check_health)

    before = commandstats(admin)
    redis.connection.AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    try:
        reader.read(queues)
    finally:
        redis.connection.AbstractConnection.send_packed_command = original  # type: ignore[method-assign]
    server = delta(before, commandstats(admin))
    round_trips = sends

    # read only
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(iterations):
        reader.read(queues)
    read_cpu = (time.process_time() - cpu_start) / iterations
    read_wall = (time.perf_counter() - wall_start) / iterations

    # the whole tick: read + heartbeat lookups + decide, per queue
    histories = {q: History() for q in queues}
    current = {q: 1 for q in queues}
    now = 1000.0
    before = commandstats(admin)
    cpu_start = time.process_time()
    for _ in range(iterations):
        now += 2.0
        depths = reader.read(queues)
        for q in queues:
            activity = table.activity(q)
            depth = depths[q]
            decision = decide(
                Observation(depth.pending, depth.reserved + activity.in_flight, len(activity.busy_pods)),
                policy, histories[q], current[q], now,
            )
            histories[q] = decision.history
            current[q] = decision.replicas
    tick_cpu = (time.process_time() - cpu_start) / iterations
    tick_server = delta(before, commandstats(admin))
    server_usec = sum(usec for calls, usec in tick_server.values() if True) / iterations
    if method == "lua":
        server_usec = sum(usec for name, (calls, usec) in tick_server.items() if name in ("evalsha", "eval")) / iterations
    reader.close()
    pending_total = sum(d.pending for d in depths.values())
    reserved_total = sum(d.reserved for d in depths.values())
    return {
        "round_trips": round_trips,
        "server_commands": sum(calls for name, (calls, _u) in server.items() if name not in ("evalsha", "eval")),
        "read_wall_ms": read_wall * 1000,
        "read_cpu_ms": read_cpu * 1000,
        "tick_cpu_ms": tick_cpu * 1000,
        "server_ms": server_usec / 1000,
        "pending": pending_total,
        "reserved": reserved_total,
    }


def tick_figures(queues: int, method: str, unacked: int, r: dict[str, float]) -> list[figures.Figure]:
    """The target (one round trip, ≤ 20 ms of operator CPU per tick) is the default Lua path's."""
    label = f"scaler tick, {queues} queues, {method}, {unacked} reserved"
    cpu = f"{label}: operator CPU per tick (read + decide)"
    return [
        figures.exactly(f"{label}: round trips per read", r["round_trips"], "", 1),
        figures.at_most(cpu, r["tick_cpu_ms"], "ms", 20) if method == "lua"
        else figures.Figure(cpu, r["tick_cpu_ms"], "ms"),
        figures.Figure(f"{label}: Redis time per read", r["server_ms"], "ms"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queues", type=int, default=400)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--unacked", default="0,400,2000", help="sizes of the unacked hash to try")
    parser.add_argument("--workers-per-queue", type=int, default=2)
    figures.add_argument(parser)
    args = parser.parse_args()
    headline: list[figures.Figure] = []

    directory = Path(tempfile.mkdtemp(prefix="bench-scaler-"))
    process, url = start_redis(directory)
    try:
        client = redis.Redis.from_url(url)
        queues = [f"queue-{i:03d}" for i in range(args.queues)]
        message = sample_message(url)
        table = HeartbeatTable()
        for i, q in enumerate(queues):
            for w in range(args.workers_per_queue):
                table.heartbeat({"hostname": f"{q}@pod-{w}", "active": (i + w) % 3, "processed": 1, "freq": 2.0})
        policy = ScalingPolicy(0, 20, 2, 60)
        print(f"{args.queues} queues on one Redis, {len(json.dumps(message))}-byte messages, "
              f"{args.queues * args.workers_per_queue} workers in the heartbeat table, {args.iterations} iterations")
        header = (f"{'method':<9} {'unacked':>7} {'round trips':>11} {'server cmds':>11} {'read wall':>10} "
                  f"{'read CPU':>9} {'tick CPU':>9} {'redis time':>10}")
        print(header)
        print("-" * len(header))
        for unacked in (int(n) for n in args.unacked.split(",")):
            fill(client, queues, message, unacked)
            for method in ("lua", "pipeline"):
                r = measure(url, queues, method, args.iterations, table, policy)
                print(f"{method:<9} {unacked:>7} {r['round_trips']:>11.0f} {r['server_commands']:>11.0f} "
                      f"{r['read_wall_ms']:>8.2f}ms {r['read_cpu_ms']:>7.2f}ms {r['tick_cpu_ms']:>7.2f}ms "
                      f"{r['server_ms']:>8.2f}ms")
                headline += tick_figures(args.queues, method, unacked, r)
            client.flushdb()
        print("tick CPU = read + heartbeat-table lookup + decide() for every queue, operator process only;")
        print("redis time = time the server spent per read (blocking other clients for a script).")
        figures.report(args.figures, headline)
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
