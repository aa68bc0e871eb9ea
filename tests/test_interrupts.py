"""Ctrl-C in a command that runs worker processes: it stops at once, leaves no worker behind,
keeps no output of the unfinished run, and the same command then runs as if it never had."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, write_footage

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads worker pids from Linux's /proc")


def _children(pid: int) -> set:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


@pytest.fixture(scope="module")
def sides(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("sides")
    for side, drift in (("baseline", 6.0), ("lora", 0.0)):
        for i in range(6):
            spec = TurntableSpec(name=f"orbit_{i}", width=160, height=96, frames=33, fps=16.0, total_angle_deg=40,
                                 subject="car", seed=70 + i)
            write_footage(spec, root / side)
    return root / "baseline", root / "lora"


def test_ctrl_c_to_eval_compare_alone_stops_its_workers_and_keeps_nothing(sides, tmp_path):
    """The signal reaches the main process only (``kill PID``): the workers, which never got it,
    must be stopped by it, not waited for."""
    out = tmp_path / "cmp"
    argv = [sys.executable, "-m", "circle_rotate", "-q", "eval", "compare", *map(str, sides), "-o", str(out),
            "--jobs", "2"]
    run = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    # the sheets are staged beside the report folder until the whole comparison is done
    while not list(tmp_path.glob(".cmp.circle-rotate-partial-*/sheets/*/*.drift.png")) and run.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    workers = _children(run.pid)
    os.kill(run.pid, signal.SIGINT)
    stopped = time.time()
    _, err = run.communicate(timeout=60)
    if run.returncode == 0:
        pytest.skip("the comparison finished before the signal arrived (a fast machine): nothing to see")
    assert run.returncode == 130 and time.time() - stopped < 30
    assert err.strip().splitlines()[-1] == "circle-rotate eval: interrupted; no partial output was kept", err[-2000:]
    time.sleep(1.0)
    assert workers and not [p for p in workers if _alive(p)]
    assert not [p for p in out.rglob("*") if p.is_file()]  # the first side's sheets went too
    assert not list(tmp_path.glob(".cmp.*"))  # and the staging folder they were in

    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(list((out / "sheets").rglob("*.drift.png"))) == 12


def test_ctrl_c_to_eval_removes_only_what_the_run_wrote(sides, tmp_path):
    masks = tmp_path / "masks"
    (masks / "mine" / "empty").mkdir(parents=True)  # the user's, before the run
    (masks / "notes.txt").write_text("mine")
    argv = [sys.executable, "-m", "circle_rotate", "-q", "eval", str(sides[0]), "-o", str(tmp_path / "r.json"),
            "--save-masks", str(masks), "--jobs", "2"]
    run = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".masks.circle-rotate-partial-*/*.drift.png")) and run.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGINT)
    run.communicate(timeout=60)
    if run.returncode == 0:
        pytest.skip("the evaluation finished before the signal arrived (a fast machine): nothing to see")
    assert run.returncode == 130
    left = sorted(p.relative_to(masks).as_posix() for p in masks.rglob("*"))
    assert left == ["mine", "mine/empty", "notes.txt"]
    assert not (tmp_path / "r.json").exists() and not list(tmp_path.glob(".masks.*"))


def _digests(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ctrl_c_to_a_force_rerun_keeps_the_earlier_runs_masks_and_sheets(sides, tmp_path):
    """``--save-masks DIR --force`` replaces an earlier run's files only once the rerun is done:
    stopped after its first sheets, every earlier file is there as it was, and the results file
    that names them too."""
    masks = tmp_path / "masks"
    argv = [sys.executable, "-m", "circle_rotate", "-q", "eval", str(sides[0]), "-o", str(tmp_path / "r.json"),
            "--csv", "--save-masks", str(masks), "--jobs", "2"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    before = _digests(tmp_path)
    assert len([p for p in before if p.name.endswith(".drift.png")]) == 6

    done = max(p.stat().st_mtime for p in before)
    run = subprocess.Popen([*argv, "--force", "--subject-box", "30,20,130,80"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while run.poll() is None and time.time() < deadline:  # a sheet of the rerun's, staged or (were it) in place
        sheets = [*tmp_path.glob(".masks.circle-rotate-partial-*/*.drift.png"), *masks.glob("*.drift.png")]
        if [p for p in sheets if p.exists() and p.stat().st_mtime > done]:
            break
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=60)
    if run.returncode == 0:
        pytest.skip("the evaluation finished before the signal arrived (a fast machine): nothing to see")
    assert run.returncode == 130
    assert err.strip().splitlines()[-1] == "circle-rotate eval: interrupted; no partial output was kept", err[-2000:]
    assert _digests(tmp_path) == before  # byte for byte, and nothing else
