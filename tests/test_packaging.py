"""The wheel: one namespace mapped onto the design card's folders, recipes and dataset TOMLs inside."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds and installs a wheel

ROOT = Path(__file__).resolve().parents[1]


def _tracked() -> list:
    """The checkout's files as git sees them (tracked, and new ones not ignored)."""
    return subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.split()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(wheel, sdist, the build's output): both built by setuptools' own hooks, as `python -m build
    --no-isolation` and pip call them, from a copy of the tracked tree (no build/ in the checkout)."""
    out = tmp_path_factory.mktemp("dist")
    build = tmp_path_factory.mktemp("src")
    for rel in _tracked():
        src = ROOT / rel
        if src.is_file():
            dst = build / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    code = f"import setuptools.build_meta as b; b.build_sdist({str(out)!r}); b.build_wheel({str(out)!r})"
    done = subprocess.run([sys.executable, "-c", code], cwd=build, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (whl,) = out.glob("circle_rotate-*.whl")
    (sdist,) = out.glob("circle_rotate-*.tar.gz")
    return whl, sdist, done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(built) -> Path:
    return built[0]


def test_wheel_maps_folders_and_ships_recipes_and_datasets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("circle_rotate/__init__.py", "circle_rotate/cli/main.py", "circle_rotate/tools/__init__.py",
                   "circle_rotate/eval/__init__.py", "circle_rotate/selfcheck/synthetic/turntable.py"):
        assert module in names
    shipped = [p for p in (ROOT / "recipes").glob("*.sh")] + [p for p in (ROOT / "datasets").rglob("*.toml")]
    for data in shipped:
        rel = data.relative_to(ROOT)
        assert f"circle_rotate/{rel.as_posix()}" in names, f"{rel} missing from the wheel"
    # datasets/: exactly its tracked files (configs, the subject map), nothing a run left beside them
    assert {n for n in names if n.startswith("circle_rotate/datasets/")} == {
        f"circle_rotate/{rel}" for rel in _tracked() if rel.startswith("datasets/")}
    assert not any(n.startswith(("plugins/", "tools/", "eval/", "tests/")) for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)


def test_installed_wheel_runs_from_another_directory(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import circle_rotate, importlib.resources as r; print(circle_rotate.__file__); "
            "print(sorted(p.name for p in r.files('circle_rotate.recipes').iterdir() if p.name.endswith('.sh')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[0].startswith(str(target))
    expected = sorted(p.name for p in (ROOT / "recipes").glob("*.sh"))
    assert out.stdout.splitlines()[1] == repr(expected)
    helped = subprocess.run([sys.executable, "-m", "circle_rotate", "--help"], cwd=tmp_path, env=env, capture_output=True,
                            text=True)
    assert helped.returncode == 0 and "doctor" in helped.stdout


def test_the_build_leaves_no_folder_out_of_the_packages(built):
    """setuptools warns for a folder with files that is importable but not listed in `packages`
    (datasets/circle, datasets/custom were), and will stop shipping such folders."""
    assert "absent from the `packages` configuration" not in built[2]
    assert "absent from setuptools' `packages` configuration" not in built[2]


def test_the_sdist_runs_its_own_tests(built, tmp_path):
    """The unpacked sdist holds what its tests import and read: conftest.py, the helper modules,
    tests/data/, and .ci/ (musubi-tuner's requirements, which the install hints name); no caches."""
    import tarfile

    with tarfile.open(built[1]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    tests = {rel for rel in _tracked() if rel.startswith(("tests/", ".ci/"))}
    assert {"tests/conftest.py", "tests/model_files.py", "tests/hub_cache.py", ".ci/musubi-requirements.txt"} <= tests
    assert tests <= names, sorted(tests - names)
    assert any(n.startswith("tests/data/") for n in names)
    assert not [n for n in names if "__pycache__" in n or ".pytest_cache" in n]
    with tarfile.open(built[1]) as tar:
        tar.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (root,) = tmp_path.iterdir()
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                               cwd=root, capture_output=True, text=True)
    # pytest exits 2 on a collection error ("ERROR tests/...: ModuleNotFoundError: No module named 'model_files'")
    assert collected.returncode == 0 and "tests collected" in collected.stdout, collected.stdout[-2000:]
