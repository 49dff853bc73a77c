"""`make bench` (bench/runner.py, bench/figures.py): no bench is left out of the run, each can hand
its figures over, and the summary table of docs/benchmarks.md is rewritten from them (a failed bench
shown as failed, a bench not run keeping its previous rows) without touching the rest of the file.
The benches themselves are not run here: the subprocesses below only parse arguments."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import figures, runner
from bench.figures import Figure
from bench.runner import Bench, Run

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MACHINE = "2 cores (AMD EPYC), 23.4 GiB memory, Linux 6.18.44"
SCALER = Bench("bench_scaler_tick", ("--queues", "400"), ("--queues", "10"), "redis-server")
PODS = Bench("bench_pods", ("--idle-seconds", "30"), (), "a devcluster")
TAKEOVER = Bench("bench_operator_takeover", ("--trials", "6"), (), "a devcluster")


def run_of(bench: str, date: str, *measured: Figure, failure: str | None = None, machine: str = MACHINE,
           load: float | None = None) -> Run:
    return Run(bench, date, 12.0, machine, f".venv/bin/python bench/{bench}.py", tuple(measured), failure, load)


def rows(table: str) -> list[list[str]]:
    """The cells of a markdown table's rows, `\\|` inside a cell kept."""
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])] for line in table.splitlines()[2:]]


def test_every_bench_script_is_in_the_registry() -> None:
    scripts = {path.stem for path in (ROOT / "bench").glob("bench_*.py")}
    assert scripts == {bench.name for bench in runner.BENCHES}


@pytest.mark.parametrize("bench", runner.BENCHES, ids=lambda bench: bench.name)
def test_every_registered_bench_takes_the_figures_option(bench: Bench) -> None:
    shown = subprocess.run([sys.executable, bench.script, "--help"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "--figures PATH" in shown.stdout


def test_a_bench_that_fails_is_a_failed_run_with_its_last_error_line() -> None:
    broken = Bench("bench_devcluster", ("--no-such-option",), (), "nothing")  # the quickest to import
    run = runner.run_bench(broken, quick=False, machine=MACHINE)
    assert run.failure is not None and run.failure.startswith("exit 2: ")
    assert "unrecognized arguments: --no-such-option" in run.failure
    assert run.figures == ()
    assert rows(runner.render_table([broken], {run.bench: run}))[0][:2] == ["bench_devcluster",
                                                                         f"**failed**: {run.failure}"]


def test_figures_reach_the_runner_as_written(tmp_path: Path) -> None:
    written = [figures.at_most("tick CPU", 9.5, "ms", 20), figures.exactly("round trips", 2, "", 1),
               Figure("idle CPU", 7.9, "s per minute")]
    path = tmp_path / "figures.jsonl"
    figures.report(path, written[:1])
    figures.report(path, written[1:])  # appends
    figures.report(None, written)  # no option: nothing to write
    assert figures.parse(path.read_text()) == written
    assert [(f.target, f.met) for f in written] == [("≤ 20 ms", True), ("1", False), (None, None)]


def test_the_table_shows_each_figure_with_its_target_and_command_and_a_failed_or_missing_bench() -> None:
    runs = {
        "bench_scaler_tick": run_of("bench_scaler_tick", "2026-12-02T01:00:00+00:00",
                                    figures.at_most("tick CPU, Lua", 9.5, "ms", 20),
                                    figures.at_most("tick CPU | pipeline", 38.04, "ms", 20),
                                    Figure("Redis time", 0.4, "ms")),
        "bench_pods": run_of("bench_pods", "2026-12-02T01:30:00+00:00", failure="exit 1: TimeoutError: 50 Ready pods"),
    }
    table = runner.render_table([SCALER, PODS, TAKEOVER], runs)
    assert table.splitlines()[0] == "| figure | value | target | met | date | command |"
    command = "`.venv/bin/python bench/bench_scaler_tick.py`"
    assert rows(table) == [
        ["tick CPU, Lua", "9.50 ms", "≤ 20 ms", "yes", "2026-12-02", command],
        ["tick CPU \\| pipeline", "38.0 ms", "≤ 20 ms", "**no**", "2026-12-02", command],
        ["Redis time", "0.40 ms", "", "", "2026-12-02", command],
        ["bench_pods", "**failed**: exit 1: TimeoutError: 50 Ready pods", "", "", "2026-12-02",
         "`.venv/bin/python bench/bench_pods.py`"],
        ["bench_operator_takeover", "not measured by `make bench` yet", "", "", "",
         "`.venv/bin/python bench/bench_operator_takeover.py --trials 6`"],
    ]


def test_a_run_on_another_machine_says_which_and_the_load_it_ran_under() -> None:
    runs = {"bench_pods": run_of("bench_pods", "2026-11-30T10:00:00+00:00", Figure("ready", 2.09, "s"),
                                 machine="4 cores (Xeon)", load=17.8),
            "bench_scaler_tick": run_of("bench_scaler_tick", "2026-12-02T01:00:00+00:00", Figure("tick", 9.5, "ms"))}
    section = runner.render_section([SCALER, PODS], runs)
    assert f"last run 2026-12-02 01:00 UTC on {MACHINE}" in section
    assert rows(runner.render_table([SCALER, PODS], runs))[1][4] == "2026-11-30, load 18 (on 4 cores (Xeon))"


def test_merging_keeps_the_runs_of_benches_not_run_this_time() -> None:
    old_pods = run_of("bench_pods", "2026-11-30T10:00:00+00:00", Figure("ready", 2.09, "s"))
    old_scaler = run_of("bench_scaler_tick", "2026-11-30T10:00:00+00:00", Figure("tick", 12.0, "ms"))
    new_scaler = run_of("bench_scaler_tick", "2026-12-02T01:00:00+00:00", Figure("tick", 9.5, "ms"))
    merged = runner.merge({"bench_pods": old_pods, "bench_scaler_tick": old_scaler}, [new_scaler])
    assert merged == {"bench_pods": old_pods, "bench_scaler_tick": new_scaler}
    assert Run.from_json(new_scaler.to_json()) == new_scaler
    assert Run.from_json({**new_scaler.to_json(), "load": 2.5}).load == 2.5


def test_only_the_marked_section_of_the_document_changes() -> None:
    document = f"# Benchmarks\n\nprose before\n\n{runner.START}\nold table\n{runner.END}\n\n## Pods\n\nprose after\n"
    section = runner.render_section([SCALER], {})
    replaced = runner.replace_section(document, section)
    assert replaced == f"# Benchmarks\n\nprose before\n\n{section}\n\n## Pods\n\nprose after\n"
    assert runner.replace_section(replaced, section) == replaced
    with pytest.raises(ValueError, match="bench:summary:start"):
        runner.replace_section("# Benchmarks\n\nno markers\n", section)


def test_the_section_of_docs_benchmarks_md_is_the_one_its_results_render() -> None:
    document = (ROOT / "docs" / "benchmarks.md").read_text()
    assert document.count(runner.START) == 1 and document.count(runner.END) == 1
    rendered = runner.replace_section(document, runner.render_section(runner.BENCHES, runner.load_runs(runner.RESULTS)))
    assert rendered == document, "edited by hand, or the registry changed: `.venv/bin/python -m bench --render`"


def test_the_machine_from_proc() -> None:
    cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC  7B13\n\nprocessor\t: 1\nmodel name\t: AMD EPYC  7B13\n"
    meminfo = "MemTotal:       24542100 kB\nMemFree:         9000000 kB\n"
    assert runner.describe_machine(cpuinfo, meminfo, 2, "6.18.44") == \
        "2 cores (AMD EPYC 7B13), 23.4 GiB memory, Linux 6.18.44"


@pytest.mark.parametrize("value, unit, shown", [(1.0, "", "1"), (0.0, "", "0"), (9.534, "ms", "9.53 ms"),
                                                (48.62, "s", "48.6 s"), (273.4, "MiB", "273 MiB"),
                                                (22.75, "", "22.8"), (0.00031, "s", "0.00031 s")])
def test_values_are_shown_to_a_sensible_precision(value: float, unit: str, shown: str) -> None:
    assert runner.format_value(value, unit) == shown


def test_benches_are_chosen_by_name_with_or_without_the_prefix() -> None:
    assert runner.select([]) == runner.BENCHES
    assert [bench.name for bench in runner.select(["pods", "bench_scaler_tick"])] == ["bench_scaler_tick",
                                                                                       "bench_pods"]
    with pytest.raises(SystemExit, match="unknown bench nope"):
        runner.select(["nope"])
