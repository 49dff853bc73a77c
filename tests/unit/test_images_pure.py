"""devcluster/images.py: what an image's cache key covers, and how the private dockerd is set up."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from devcluster import images
from devcluster.images import Context, FileEntry

pytestmark = pytest.mark.unit

OPERATOR = images.recipes()["operator"]


def _key(context: list[FileEntry], *, base: str | None = "sha256:base", wheels: list[FileEntry] | None = None,
         dockerfile: str = "dockerfile-sha", binary: dict[str, str] | None = None) -> str:
    return images.digest_of(images.dockerfile_inputs(
        OPERATOR, dockerfile_sha256=dockerfile, context=context, base_image_id=base,
        wheels=wheels if wheels is not None else [FileEntry("kopf-1.0-py3-none-any.whl", "w1", False)],
        binary=binary))


def _context(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "pkg" / "module.py").write_text("x = 1\n")
    (root / "pkg" / "__pycache__" / "module.cpython-311.pyc").write_bytes(b"bytecode")
    (root / "pyproject.toml").write_text("[project]\n")
    (root / "unrelated.txt").write_text("not in the context\n")
    return root


def test_context_lists_its_files_relative_and_without_bytecode(tmp_path: Path) -> None:
    root = _context(tmp_path)
    entries = images.context_files(Context(root, ("pyproject.toml", "pkg")))
    assert [e.path for e in entries] == ["pkg/module.py", "pyproject.toml"]


def test_key_changes_when_a_context_file_changes(tmp_path: Path) -> None:
    root = _context(tmp_path)
    context = Context(root, ("pyproject.toml", "pkg"))
    before = _key(images.context_files(context))
    (root / "pkg" / "module.py").write_text("x = 2\n")
    assert _key(images.context_files(context)) != before


def test_key_changes_when_a_context_file_is_added_or_made_executable(tmp_path: Path) -> None:
    root = _context(tmp_path)
    context = Context(root, ("pyproject.toml", "pkg"))
    before = _key(images.context_files(context))
    (root / "pkg" / "new.py").write_text("")
    added = _key(images.context_files(context))
    assert added != before
    (root / "pkg" / "new.py").chmod(0o755)
    assert _key(images.context_files(context)) != added


def test_key_stays_for_a_touched_file_bytecode_files_outside_and_another_clone(tmp_path: Path) -> None:
    root = _context(tmp_path)
    context = Context(root, ("pyproject.toml", "pkg"))
    before = _key(images.context_files(context))
    (root / "pkg" / "module.py").touch()
    (root / "pkg" / "__pycache__" / "module.cpython-311.pyc").write_bytes(b"other bytecode")
    (root / "unrelated.txt").write_text("changed, but not in the context\n")
    assert _key(images.context_files(context)) == before
    clone = tmp_path / "clone"
    shutil.copytree(root, clone)
    assert _key(images.context_files(Context(clone, ("pyproject.toml", "pkg")))) == before


def test_key_covers_the_base_the_wheels_the_dockerfile_and_the_binary() -> None:
    context = [FileEntry("pyproject.toml", "c1", False)]
    before = _key(context)
    assert _key(context, base="sha256:rebuilt-base") != before
    assert _key(context, wheels=[FileEntry("kopf-1.0-py3-none-any.whl", "w2", False)]) != before
    assert _key(context, wheels=[FileEntry("kopf-1.1-py3-none-any.whl", "w1", False)]) != before
    assert _key(context, dockerfile="edited") != before
    assert _key(context, binary={"go": "go1.26.8"}) != _key(context, binary={"go": "go1.26.9"})


def test_key_ignores_the_order_files_are_listed_in() -> None:
    files = [FileEntry("a", "1", False), FileEntry("b", "2", False)]
    assert _key(files) == _key(list(reversed(files)))


def test_wheels_are_cached_per_requirements_and_exact_python() -> None:
    wheels = images.Wheels("app", ("celery[redis]==5.7.0", "django==5.2.19"))
    reordered = images.Wheels("app", ("django==5.2.19", "celery[redis]==5.7.0"))
    key = images.digest_of(images.wheels_inputs(wheels, "3.11.2"))
    assert images.digest_of(images.wheels_inputs(reordered, "3.11.2")) == key
    assert images.digest_of(images.wheels_inputs(wheels, "3.11.7")) != key


def test_every_key_has_a_recipe_and_every_recipe_its_files() -> None:
    recipes = images.recipes()
    assert set(images.IMAGE_KEYS) <= set(recipes)
    for recipe in recipes.values():
        if isinstance(recipe, images.Dockerfile):
            assert recipe.dockerfile.is_file(), recipe.dockerfile
            assert recipe.base is None or recipe.base in recipes
            if recipe.context:
                assert images.context_files(recipe.context), recipe.key
    assert any(r.startswith("setuptools") for r in recipes["operator"].wheels.requirements), \
        "the offline build of the operator's own wheel needs its build backend"


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown image keys"):
        images.build_images(["no-such-image"])


def test_private_dockerd_leaves_host_networking_and_other_containerds_alone(tmp_path: Path) -> None:
    argv = images._dockerd_argv(tmp_path, tmp_path)
    for flag in ("--iptables=false", "--ip-masq=false", "--ip-forward=false", "--bridge=none"):
        assert flag in argv
    assert argv[argv.index("--containerd") + 1] == str(tmp_path / "containerd.sock")
    config = images._containerd_config(tmp_path, tmp_path)
    assert f'address = "{tmp_path / "containerd.sock"}"' in config
    assert "/run/containerd" not in config and "io.containerd.grpc.v1.cri" in config


def test_sockets_move_to_a_short_directory_when_the_cache_path_is_long() -> None:
    short = Path("/root/.cache/celery-operator/docker")
    assert images._socket_dir(short) == short
    long = Path("/" + "deep/" * 30)
    moved = images._socket_dir(long)
    assert moved != long and len(str(moved / "containerd.sock.ttrpc")) < images.UNIX_SOCKET_LIMIT
