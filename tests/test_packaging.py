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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("src")
    # Build from a copy of the tracked tree so the test never writes build/ into the checkout.
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            dst = build / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(build)],
                   check=True, capture_output=True)
    (whl,) = out.glob("circle_rotate-*.whl")
    return whl


def test_wheel_maps_folders_and_ships_recipes_and_datasets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("circle_rotate/__init__.py", "circle_rotate/cli/main.py", "circle_rotate/tools/__init__.py",
                   "circle_rotate/eval/__init__.py", "circle_rotate/selfcheck/synthetic/turntable.py"):
        assert module in names
    shipped = [p for p in (ROOT / "recipes").glob("*.sh")] + [p for p in (ROOT / "datasets").rglob("*.toml")]
    for data in shipped:
        rel = data.relative_to(ROOT)
        assert f"circle_rotate/{rel.as_posix()}" in names, f"{rel} missing from the wheel"
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
