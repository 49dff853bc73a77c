"""`python -m bench` (`make bench`): every benchmark in sequence with the arguments of its documented
run, their figures collected (bench/figures.py) into docs/benchmarks.json, and the summary table of
docs/benchmarks.md rewritten between its marker comments from it. A bench not run this time keeps
its previous rows and their date; a failed bench is a failed row, and the runner exits non-zero.

    .venv/bin/python -m bench [--only NAME[,NAME]] [--quick] [--list] [--render]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from bench.figures import Figure, parse

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "docs" / "benchmarks.json"
START = "<!-- bench:summary:start -->"
END = "<!-- bench:summary:end -->"


@dataclasses.dataclass(frozen=True)
class Bench:
    name: str  # bench/<name>.py
    argv: tuple[str, ...]  # the run docs/benchmarks.md documents
    quick: tuple[str, ...]  # smaller, for a quick check that it still runs
    needs: str

    @property
    def script(self) -> str:
        return f"bench/{self.name}.py"

    def arguments(self, quick: bool) -> tuple[str, ...]:
        return self.quick if quick else self.argv

    def command(self, quick: bool) -> str:
        return shlex.join([".venv/bin/python", self.script, *self.arguments(quick)])


# Cheapest first. Every bench/bench_*.py has its line (tests/unit/test_bench_runner.py holds it so).
BENCHES: tuple[Bench, ...] = (
    Bench("bench_scaler_tick", ("--queues", "400", "--iterations", "200", "--unacked", "0,2000"),
          ("--queues", "100", "--iterations", "20", "--unacked", "0"), "redis-server on the host"),
    Bench("bench_devcluster", ("--runs", "3"), ("--runs", "1"),
          "the devcluster's binaries and images; brings up its own clusters, one after another"),
    Bench("bench_pods", ("--idle-seconds", "30"), ("--sizes", "1,10", "--idle-seconds", "10"),
          "a devcluster of its own (1 node), the debian-base image"),
    Bench("bench_taskqueues", ("--count", "200", "--settle", "60"), ("--count", "20", "--settle", "30"),
          "a devcluster of its own (1 node, managed Redis pods)"),
    Bench("bench_autoscaling", ("--trials", "12", "--tasks", "400", "--replicas", "10"),
          ("--trials", "3", "--tasks", "80", "--replicas", "4"),
          "a devcluster of its own (1 node), the sample-app image, redis-server on the host"),
    Bench("bench_broker_durability", ("--messages", "20000", "--trials", "3", "--restarts", "5"),
          ("--messages", "2000", "--trials", "1", "--restarts", "1"),
          "redis-server on the host; a devcluster of its own (1 node), the operator on the host"),
    Bench("bench_operator_takeover", ("--trials", "6"), ("--trials", "2"),
          "a devcluster of its own (2 nodes), the operator image, helm"),
    Bench("bench_keda", ("--trials", "5"), ("--quick",),
          "a devcluster of its own (1 node), KEDA's image (devcluster/keda.py), the operator and sample-app images"),
)


@dataclasses.dataclass(frozen=True)
class Run:
    """One bench's latest run, as docs/benchmarks.json keeps it."""

    bench: str
    date: str  # ISO 8601, UTC
    seconds: float
    machine: str
    command: str
    figures: tuple[Figure, ...] = ()
    failure: str | None = None
    load: float | None = None  # the machine's mean 1-minute load average while it ran: others share the cores

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "figures": [dataclasses.asdict(f) for f in self.figures]}

    @classmethod
    def from_json(cls, data: Mapping) -> Run:
        return cls(**{**data, "figures": tuple(Figure(**f) for f in data.get("figures", ()))})


# pure: what the machine is, the table, the section


def describe_machine(cpuinfo: str, meminfo: str, cores: int, kernel: str) -> str:
    pairs = (line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {key.strip(): value for key, value in pairs}
    model = " ".join(fields.get("model name", "unknown CPU").split())
    memory_kib = next(int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:"))
    return f"{cores} cores ({model}), {memory_kib / 1024 ** 2:.1f} GiB memory, Linux {kernel}"


def format_value(value: float, unit: str) -> str:
    if float(value).is_integer() and abs(value) < 1e6:
        number = f"{int(value)}"
    elif abs(value) >= 100:
        number = f"{value:.0f}"
    elif abs(value) >= 10:
        number = f"{value:.1f}"
    elif abs(value) >= 0.01:
        number = f"{value:.2f}"
    else:
        number = f"{value:.2g}"
    return f"{number} {unit}" if unit else number


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _met(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: ""}[met]


def render_table(benches: Iterable[Bench], runs: Mapping[str, Run]) -> str:
    """Rows in the registry's order; a bench without a run yet has one row saying so."""
    latest = max(runs.values(), key=lambda run: run.date, default=None)
    lines = ["| figure | value | target | met | date | command |", "|---|---|---|---|---|---|"]
    for bench in benches:
        run = runs.get(bench.name)
        if run is None:
            lines.append(f"| {bench.name} | not measured by `make bench` yet | | | | `{bench.command(False)}` |")
            continue
        date = run.date[:10] + ("" if run.load is None else f", load {run.load:.0f}") + (
            "" if latest is None or run.machine == latest.machine else f" (on {run.machine})")
        command = f"`{run.command}`"
        if run.failure is not None:
            lines.append(f"| {bench.name} | **failed**: {_cell(run.failure)} | | | {date} | {command} |")
            continue
        for figure in run.figures:
            target = _cell(figure.target) if figure.target is not None else ""
            lines.append(f"| {_cell(figure.name)} | {_cell(format_value(figure.value, figure.unit))} | {target} "
                         f"| {_met(figure.met)} | {date} | {command} |")
    return "\n".join(lines)


def render_section(benches: Iterable[Bench], runs: Mapping[str, Run]) -> str:
    latest = max(runs.values(), key=lambda run: run.date, default=None)
    when = ("no bench has run yet" if latest is None else
            f"last run {latest.date[:16].replace('T', ' ')} UTC on {latest.machine}")
    return "\n".join([
        START,
        "<!-- written by `make bench` (python -m bench) from docs/benchmarks.json: change bench/, not this section -->",
        "",
        f"Machine and date: {when}. A bench not run then keeps the rows and the date of its own last run; "
        "the load is the machine's mean load average while the bench ran (other work shares its cores).",
        "",
        render_table(benches, runs),
        END,
    ])


def replace_section(document: str, section: str) -> str:
    """The document with the text from START to END (both included) replaced by `section`."""
    start, end = document.find(START), document.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the document has no {START} ... {END} section")
    return document[:start] + section + document[end + len(END):]


def merge(previous: Mapping[str, Run], new: Iterable[Run]) -> dict[str, Run]:
    return {**previous, **{run.bench: run for run in new}}


def select(names: Iterable[str], benches: tuple[Bench, ...] = BENCHES) -> tuple[Bench, ...]:
    wanted = list(names)
    known = {bench.name for bench in benches}
    unknown = [name for name in wanted if name not in known and f"bench_{name}" not in known]
    if unknown:
        raise SystemExit(f"unknown bench {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    chosen = {name if name in known else f"bench_{name}" for name in wanted}
    return tuple(bench for bench in benches if not wanted or bench.name in chosen)


# I/O: run one bench, keep the results


def this_machine() -> str:
    return describe_machine(Path("/proc/cpuinfo").read_text(), Path("/proc/meminfo").read_text(),
                            os.cpu_count() or 1, platform.release())


class LoadAverage:
    """The machine's 1-minute load average every 10 s while a bench runs; `stop()` gives their mean."""

    def __init__(self) -> None:
        self._samples = [os.getloadavg()[0]]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stopped.wait(10):
            self._samples.append(os.getloadavg()[0])

    def stop(self) -> float:
        self._stopped.set()
        self._thread.join()
        return round(statistics.fmean(self._samples), 1)


def run_bench(bench: Bench, quick: bool, machine: str) -> Run:
    """Runs it with its output on this terminal; the last line of its stderr says why it failed."""
    started, date = time.monotonic(), datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load = LoadAverage()
    with tempfile.TemporaryDirectory(prefix="bench-figures-") as directory:
        path = Path(directory) / "figures.jsonl"
        process = subprocess.Popen([sys.executable, bench.script, *bench.arguments(quick), "--figures", str(path)],
                                   cwd=ROOT, stderr=subprocess.PIPE, text=True)
        last = collections.deque(maxlen=1)
        assert process.stderr is not None
        for line in process.stderr:
            sys.stderr.write(line)
            if line.strip():
                last.append(line.strip())
        returncode = process.wait()
        figures = tuple(parse(path.read_text())) if path.exists() else ()
    failure = None
    if returncode != 0:
        failure = f"exit {returncode}" + (f": {last[0][:160]}" if last else "")
    elif not figures:
        failure = "it reported no figures"
    return Run(bench.name, date, round(time.monotonic() - started, 1), machine, bench.command(quick),
               figures if failure is None else (), failure, load.stop())


def load_runs(path: Path) -> dict[str, Run]:
    if not path.exists():
        return {}
    return {name: Run.from_json(data) for name, data in json.loads(path.read_text()).items()}


def save_runs(runs: Mapping[str, Run], results: Path, doc: Path) -> None:
    results.write_text(json.dumps({name: run.to_json() for name, run in runs.items()}, indent=1,
                                  ensure_ascii=False) + "\n")
    doc.write_text(replace_section(doc.read_text(), render_section(BENCHES, runs)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME[,NAME]",
                        help="run only these benches (bench_pods or pods)")
    parser.add_argument("--quick", action="store_true", help="smaller arguments per bench, for a quick check")
    parser.add_argument("--list", action="store_true", help="list the benches, their commands and needs")
    parser.add_argument("--render", action="store_true",
                        help="run nothing: rewrite the section from the results file (after a change to the registry)")
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    chosen = select(name for names in args.only for name in names.split(",") if name)
    if args.list:
        for bench in chosen:
            print(f"{bench.name}: {bench.command(args.quick)}\n    needs {bench.needs}")
        return 0
    if args.render:
        save_runs(load_runs(args.results), args.results, args.doc)
        return 0

    replace_section(args.doc.read_text(), "")  # no markers: say so before an hour of benches
    machine, failed = this_machine(), []
    for bench in chosen:
        print(f"\n=== {bench.name}: {bench.command(args.quick)} (needs {bench.needs})", flush=True)
        run = run_bench(bench, args.quick, machine)
        # after each bench: an interrupted run keeps what it measured
        save_runs(merge(load_runs(args.results), [run]), args.results, args.doc)
        print(f"=== {bench.name}: " + (f"FAILED ({run.failure})" if run.failure else
                                       f"{len(run.figures)} figures in {run.seconds:.0f} s"), flush=True)
        if run.failure:
            failed.append(bench.name)
    print(f"\n{len(chosen) - len(failed)} of {len(chosen)} benches ran; {args.doc} rewritten"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
