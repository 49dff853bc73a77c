"""docs/architecture.md matches the code: every module of the package has its line, and imports
from the package only what its line allows."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "celery_operator"
DOC = ROOT / "docs" / "architecture.md"
GROUPS = {
    "pure modules": {"status", "conditions", "reasons", "drift", "children", "podfailures", "brokerrestarts", "pause", "workerhealth", "scaling_policy",
                     "builders", "beat.jobs", "beat.schedule", "models", "naming", "settings"},
    "controllers": {"reconcile", "scaler", "periodicjobs"},
}


def _row_name(path: Path) -> str:
    """`lifecycle`, `broker/urls`, `beat/__init__`: a file's name in the doc's first column."""
    return path.relative_to(PACKAGE).with_suffix("").as_posix()


def _documented() -> dict[str, set[str]]:
    """Row (`lifecycle`, `broker/urls`, `builders/*`) -> the package modules it may import, groups expanded."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        allowed = {name.replace("/", ".").rstrip(".") for name in re.findall(r"`([a-z_./]+)`", cells[2])}
        for group, members in GROUPS.items():
            if group in cells[2]:
                allowed |= members
        rows[cells[0].strip("`")] = allowed
    return rows


def _row_of(path: Path, rows: dict[str, set[str]]) -> str:
    name = _row_name(path)
    if name in rows:
        return name
    wildcard = name.split("/")[0] + "/*"
    assert wildcard in rows, f"{name} has no line in docs/architecture.md"
    return wildcard


def _imports(path: Path) -> set[str]:
    """The package modules a file imports, as dotted names within the package (`broker.urls`)."""
    package = list(path.relative_to(PACKAGE).parent.parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            source = [*base, *(node.module.split(".") if node.module else [])]
            for alias in node.names:  # `from .beat import state` imports the module beat.state
                submodule = PACKAGE.joinpath(*source, alias.name)
                is_module = submodule.with_suffix(".py").exists() or submodule.is_dir()
                found.add(".".join([*source, alias.name] if is_module else source))
    return found


def _allowed(imported: str, path: Path, allowed: set[str]) -> bool:
    package = path.relative_to(PACKAGE).parent.parts
    if package and imported.split(".")[0] == package[0]:
        return True  # within its own subpackage
    return any(imported == name or imported.startswith(name + ".") for name in allowed)


def test_every_module_has_a_line_and_imports_only_what_it_says() -> None:
    rows = _documented()
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        row = _row_of(path, rows)
        wrong += [f"{_row_name(path)} imports {imported}, not in its line ({row})"
                  for imported in sorted(_imports(path)) if not _allowed(imported, path, rows[row])]
    assert not wrong, "\n".join(wrong)


def test_the_doc_names_no_module_that_does_not_exist() -> None:
    names = {_row_name(path) for path in PACKAGE.rglob("*.py")}
    for row in _documented():
        if row.endswith("/*"):
            assert (PACKAGE / row[:-2]).is_dir(), row
        else:
            assert row in names, f"docs/architecture.md names {row}, which does not exist"
