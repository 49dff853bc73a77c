"""How a bench reports its headline figures as data: `add_argument(parser)` gives it `--figures PATH`,
`report(path, figures)` appends one JSON line per figure there (nothing without the option)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    target: str | None = None  # as a reader would write it: "≤ 20 ms", "0"
    met: bool | None = None  # None: no target


def at_most(name: str, value: float, unit: str, limit: float) -> Figure:
    return Figure(name, value, unit, f"≤ {limit:g} {unit}".rstrip(), value <= limit)


def exactly(name: str, value: float, unit: str, expected: float) -> Figure:
    return Figure(name, value, unit, f"{expected:g} {unit}".rstrip(), value == expected)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))]


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--figures", type=Path, default=None, metavar="PATH",
                        help="append the headline figures to PATH as JSON lines (for `python -m bench`)")


def report(path: Path | None, figures: list[Figure]) -> None:
    if path is None:
        return
    with path.open("a") as out:
        for figure in figures:
            out.write(json.dumps(dataclasses.asdict(figure), ensure_ascii=False) + "\n")


def parse(text: str) -> list[Figure]:
    return [Figure(**json.loads(line)) for line in text.splitlines() if line.strip()]
