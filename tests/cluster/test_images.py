"""Every devcluster image builds here (slow only the first time), is what its archive claims, runs
as its user, runs its entry point, and loads into a containerd as the nodes load it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster import images
from devcluster.images import Image

pytestmark = pytest.mark.cluster

USERS = {"operator": "10001:10001", "sample-app": "10001:10001", "redis": "999:999", "flower": "1000:1000",
         "pause": "65535:65535"}


@pytest.fixture(scope="module")
def built() -> dict[str, Image]:
    return images.build_images()


def archive_manifest(image: Image) -> tuple[dict[str, Any], dict[str, Any]]:
    """The docker-archive's manifest entry and image config."""
    with tarfile.open(image.archive) as archive:
        [entry] = json.load(archive.extractfile("manifest.json"))
        config = json.load(archive.extractfile(entry["Config"]))
    return entry, config


def test_every_image_is_built(built: dict[str, Image]) -> None:
    assert list(built) == list(images.IMAGE_KEYS)
    for key, image in built.items():
        assert image.key == key and image.archive.is_file()


def test_each_archive_holds_the_reference_it_claims(built: dict[str, Image]) -> None:
    for image in built.values():
        entry, _ = archive_manifest(image)
        assert entry["RepoTags"] == [image.reference], image.key
        assert f"sha256:{entry['Config'].removesuffix('.json')}" == images.read_record(image).image_id


def test_images_run_as_their_users(built: dict[str, Image]) -> None:
    for key, user in USERS.items():
        _, config = archive_manifest(built[key])
        assert config["config"].get("User") == user, key


def test_redis_works_in_data_as_the_official_image_does(built: dict[str, Image]) -> None:
    _, config = archive_manifest(built["redis"])
    assert config["config"]["WorkingDir"] == "/data"


def _run(docker: images.PrivateDocker, image: Image, *argv: str, entrypoint: str | None = None,
         read_only: bool = True) -> str:
    """Run the image as pods run it: no network, a read-only root filesystem (unless told)."""
    options = (["--entrypoint", entrypoint] if entrypoint else []) + (["--read-only"] if read_only else [])
    result = docker.output("run", "--rm", "--network", "none", *options, image.reference, *argv)
    assert result.returncode == 0, f"{image.key} {argv}: {result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def test_entry_points_run(built: dict[str, Image]) -> None:
    with images.docker_with(built.values()) as docker:
        assert "--all-namespaces" in _run(docker, built["operator"], "--help")
        assert "usage" in _run(docker, built["operator"], "-m", "celery_operator.beat", "--help",
                               entrypoint="python").lower()
        assert "5.7.0" in _run(docker, built["sample-app"], "celery", "--version")
        assert _run(docker, built["sample-app"], "id", "-u").strip() == "10001"
        assert "2.0" in _run(docker, built["flower"], "python", "-c", "import flower; print(flower.__version__)")
        assert "Redis server v=7" in _run(docker, built["redis"], "redis-server", "--version")
        assert _run(docker, built["redis"], "sh", "-c", "touch /data/probe && id -u", read_only=False).strip() == "999"
        assert "CoreDNS-1.13" in _run(docker, built["coredns"], "-version")
        assert "local-path-provisioner" in _run(docker, built["local-path-provisioner"], "local-path-provisioner", "--help")
        # the provisioner's helper pods run the Debian base: sh, mkdir and rm
        assert _run(docker, built["debian-base"], "sh", "-c", "for c in sh mkdir rm; do command -v $c; done | wc -l").strip() == "3"


@pytest.fixture
def throwaway_containerd() -> Iterator[Path]:
    """A containerd of this test's own (root, state and socket under /tmp), stopped afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="ctr-", dir="/tmp"))
    socket = directory / "containerd.sock"
    config = directory / "config.toml"
    config.write_text("\n".join([
        "version = 2", f'root = "{directory / "root"}"', f'state = "{directory / "state"}"',
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]', "[grpc]", f'  address = "{socket}"',
        "[ttrpc]", f'  address = "{socket}.ttrpc"', '[plugins."io.containerd.internal.v1.opt"]',
        f'  path = "{directory / "opt"}"', ""]))
    with (directory / "containerd.log").open("w") as log:
        process = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["ctr", "--address", str(socket), "version"], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline and process.poll() is None, (directory / "containerd.log").read_text()
            time.sleep(0.2)
        yield socket
    finally:
        process.terminate()
        process.wait(timeout=30)
        subprocess.run(["umount", "--recursive", "--lazy", str(directory / "root")], capture_output=True)
        subprocess.run(["rm", "-rf", str(directory)], check=False)


def test_containerd_imports_every_archive(built: dict[str, Image], throwaway_containerd: Path) -> None:
    ctr = ["ctr", "--address", str(throwaway_containerd), "--namespace", "k8s.io"]
    for image in built.values():
        result = subprocess.run([*ctr, "images", "import", str(image.archive)], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, f"{image.key}: {result.stderr}"
    listed = subprocess.run([*ctr, "images", "list", "--quiet"], capture_output=True, text=True, check=True).stdout
    assert {image.reference for image in built.values()} <= set(listed.split())


def test_a_second_call_finds_the_cache_without_starting_dockerd(built: dict[str, Image],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: images.PrivateDocker) -> None:
        raise AssertionError("started dockerd although every image was cached")

    monkeypatch.setattr(images.PrivateDocker, "__enter__", refuse)
    started = time.monotonic()
    assert images.build_images() == built
    assert time.monotonic() - started < 5


def test_cli_prints_every_image() -> None:
    result = subprocess.run([sys.executable, "-m", "devcluster", "images"], capture_output=True, text=True,
                            timeout=3600)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == list(images.IMAGE_KEYS)


def test_failed_build_names_the_step_and_its_log(tmp_path: Path) -> None:
    offline = dict(os.environ, DEVCLUSTER_CACHE=str(tmp_path / "cache"), GOMODCACHE=str(tmp_path / "mod"),
                   GOPROXY="off")
    result = subprocess.run([sys.executable, "-m", "devcluster", "images", "pause"], capture_output=True, text=True,
                            env=offline, timeout=300)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("devcluster images: step 'pause-source' failed; see its log: ")
    log = Path(message.rsplit(": ", 1)[1])
    assert log.is_file() and "GOPROXY=off" in log.read_text()
