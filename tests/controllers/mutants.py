"""Break one piece of controller logic at a time, in a copy of the operator, and run the controller
tier against it: every mutant must make at least one test fail (`python -m tests.controllers.mutants`
from the repository root; the checkout itself is never changed)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
SRC = ROOT / "operator"
MUTANTS = {
    "removal unseen (containment only, the issue-11 bug)": (
        "celery_operator/reconcile.py",
        "    for manifest in map(drift.stamped, desired):",
        "    for manifest in desired:"),
    "removal unseen (the hash is stamped but not compared)": (
        "celery_operator/drift.py",
        "    return applied_hash(live) != applied_hash(desired) or not holds(desired, live)",
        "    return not holds({**desired, 'metadata': {k: v for k, v in desired['metadata'].items() "
        "if k != 'annotations'}}, live)"),
    "converge always applies (no compare before write)": (
        "celery_operator/reconcile.py",
        "        if current is not None and not drift.needs_apply(manifest, current):",
        "        if False:"),
    "status written on every pass": (
        "celery_operator/status.py",
        "    if not part.changed(old, new):\n        return False",
        "    pass"),
    "pod failures not read": (
        "celery_operator/reconcile.py",
        "    if not unsettled:\n        return {}",
        "    return {}"),
    "a full broker unseen": (
        "celery_operator/reconcile.py",
        "    if not memory.full:",
        "    if True:"),
    "scaler tick never scales": (
        "celery_operator/scaler.py",
        "        if decision.changed:\n            _scale(tick, view, decision)",
        "        if False:\n            _scale(tick, view, decision)"),
    "scaler does not price busy pods": (
        "celery_operator/scaler.py",
        "    if decision.direction == \"down\" and view.pods:\n        _protect_busy_pods(tick, view)",
        "    pass"),
    "scaler ignores an unreadable broker": (
        "celery_operator/scaler.py",
        "        return scaling_policy.Unknown(tick.unreadable or \"broker unreadable\")",
        "        return scaling_policy.Observation(pending=0, in_flight=0)"),
    "scaling policy rounds down": (
        "celery_operator/scaling_policy.py",
        "    unclamped = math.ceil(work / policy.target_tasks_per_replica) if work > 0 else 0",
        "    unclamped = work // policy.target_tasks_per_replica"),
    "the TaskQueue's beat sync writes nothing": (
        "celery_operator/reconcile.py",
        "    if not changes.empty:",
        "    if False:"),
    "PeriodicJob entry never written": (
        "celery_operator/periodicjobs.py",
        "    if text != current:",
        "    if False:"),
    "PeriodicJob invalid edit leaves its entry": (
        "celery_operator/periodicjobs.py",
        "        remove_from_taskqueue(runtime, body, taskqueue, children.values())\n",
        ""),
    "PeriodicJob moved away stays in the old beat": (
        "celery_operator/periodicjobs.py",
        "        if moved_from is not None:\n            remove_from_taskqueue(runtime, body, *moved_from)",
        "        pass"),
}



def run_mutant(path: str, old: str, new: str) -> tuple[str, list[str]]:
    """The tier's summary line and the tests that failed, with `old` replaced by `new` in `path`."""
    with tempfile.TemporaryDirectory(prefix="mutant-") as work:
        copy = pathlib.Path(work) / "operator"
        shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        target = copy / path
        text = target.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"{path}: the code to break is not there (once); update this mutant")
        target.write_text(text.replace(old, new))
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "controllers", "-p", "no:cacheprovider",
                              "tests/controllers"], cwd=ROOT, capture_output=True, text=True,
                             env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    failed = sorted({line.split(" ")[1] for line in run.stdout.splitlines() if line.startswith("FAILED")})
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-300:]
    return summary, failed


def main() -> int:
    survivors = []
    for name, (path, old, new) in MUTANTS.items():
        summary, failed = run_mutant(path, old, new)
        print(f"- {name}: {summary}")
        for test in failed:
            print(f"    {test}")
        if not failed:
            survivors.append(name)
    if survivors:
        print("not caught: " + "; ".join(survivors))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
