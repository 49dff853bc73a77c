"""Where a test run's time goes: per-module wall time from pytest's JUnit XML report (each test's
setup, call and teardown, so a module's fixtures and the session cluster's start count where they
ran), and the order the parallel run hands modules out in (tests/durations.json, longest first).

    python -m tests.helpers.durations REPORT.xml [--update-order]   # prints the table
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from pathlib import Path

ORDER_FILE = Path(__file__).resolve().parents[1] / "durations.json"


def module_seconds(report: Path) -> dict[str, float]:
    """Seconds per test module ("tests/e2e/test_x.py"), summed over its test cases."""
    totals: dict[str, float] = defaultdict(float)
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")
        while module and not module[-1].startswith("test_"):
            module.pop()  # a test class's name follows its module's
        if module:
            totals["/".join(module) + ".py"] += float(case.get("time", 0))
    return dict(totals)


def tier_of(module: str) -> str:
    return module.split("/")[1] if module.count("/") >= 2 else "?"


def table(seconds: dict[str, float]) -> str:
    tiers: dict[str, float] = defaultdict(float)
    for module, spent in seconds.items():
        tiers[tier_of(module)] += spent
    lines = ["| tier | seconds |", "|---|---:|"]
    lines += [f"| {tier} | {spent:.0f} |" for tier, spent in sorted(tiers.items(), key=lambda t: -t[1])]
    lines += ["", "| module | seconds |", "|---|---:|"]
    lines += [f"| {module} | {spent:.0f} |" for module, spent in sorted(seconds.items(), key=lambda m: -m[1])]
    return "\n".join(lines)


def known_order() -> dict[str, float]:
    """The seconds each module took when last measured; modules not in it count as quick."""
    try:
        return json.loads(ORDER_FILE.read_text())
    except (OSError, ValueError):
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, nargs="+")
    parser.add_argument("--update-order", action="store_true", help=f"rewrite {ORDER_FILE.name} from the reports")
    arguments = parser.parse_args()
    seconds: dict[str, float] = {}
    for report in arguments.report:
        seconds.update(module_seconds(report))
    print(table(seconds))
    if arguments.update_order:
        ordered = {module: round(spent, 1) for module, spent in sorted(seconds.items(), key=lambda m: -m[1])}
        ORDER_FILE.write_text(json.dumps(ordered, indent=1) + "\n")


if __name__ == "__main__":
    main()
