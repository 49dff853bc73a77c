"""The previous release, as its users run it: its tree taken from git at the commit
tests/release/previous.json records, its operator image built by its own devcluster code (the way
every image is built here, cached by content), and its chart, for the upgrade test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from devcluster import build, images

ROOT = Path(__file__).resolve().parents[2]
RECORD = json.loads((ROOT / "tests" / "release" / "previous.json").read_text())
VERSION: str = RECORD["version"]
COMMIT: str = RECORD["commit"]

# Run inside the previous tree: its own recipes name and build its operator image.
_BUILD = ("import json; from devcluster import images; image = images.build_images(['operator'])['operator']; "
          "print(json.dumps({'reference': image.reference, 'archive': str(image.archive)}))")


def tree() -> Path:
    """The previous release's files (`git archive` of its commit), exported once into the cache."""
    target = build.cache_root() / "releases" / COMMIT
    if (target / ".exported").exists():
        return target
    partial = target.with_name(f"{COMMIT}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", COMMIT], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(partial)], input=archive, check=True)
    (partial / ".exported").touch()
    try:
        partial.rename(target)
    except OSError:  # another test worker exported it first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def chart() -> Path:
    return tree() / "charts" / "celery-operator"


def examples() -> Path:
    return tree() / "app" / "examples"


def operator_image() -> images.Image:
    """The previous release's operator image, built from its tree when the cache does not hold it."""
    source = tree()
    result = subprocess.run([sys.executable, "-c", _BUILD], cwd=source, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(source)}, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"building the {VERSION} operator image failed:\n{result.stderr[-4000:]}")
    built = json.loads(result.stdout.strip().splitlines()[-1])
    return images.Image(key=f"operator-{VERSION}", reference=built["reference"], archive=Path(built["archive"]))
