"""A worker process killed mid-video (the OOM killer: one 481-frame 1280x720 clip peaks at 6 GB)
breaks its whole pool: the run starts a fresh one, and names only the video whose worker died
with it alone in flight; the others are measured as usual."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from circle_rotate.eval import runner
from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, write_turntable

#: The real one, as a spawned worker imports it too: the monkeypatch lives in this process only.
_REAL = runner.evaluate_video


def _wait_for(pattern: str, folder: Path) -> None:
    deadline = time.monotonic() + 30
    while not list(folder.glob(pattern)) and time.monotonic() < deadline:
        time.sleep(0.02)


def killing(path, names, *, options=None, threads=1):
    """``evaluate_video``, except that a video named ``culprit*`` kills its worker outright
    (SIGKILL, as the OOM killer does): every time, or (``culprit_once``) only the first, as a
    marker file beside it says; with ``v1`` in flight beside it (held there the first time), or
    (``culprit_alone``) once the others are done. Module level: a spawned worker imports it."""
    p, folder = Path(path), Path(path).parent
    alone = (folder / "culprit_alone.mp4").exists()
    if p.stem.startswith("culprit"):
        killed = p.with_suffix(".killed")
        if not (p.stem.endswith("_once") and killed.exists()):
            for name in ("v1.done", "v2.done") if alone else ("v1.started",):
                _wait_for(name, folder)
            time.sleep(1.0 if alone else 0)  # the others' rows on their way back
            killed.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    elif p.stem == "v1" and not (folder / "v1.started").exists():
        (folder / "v1.started").touch()
        if not alone:  # busy when the culprit's worker dies: the broken pool stops it here
            _wait_for("*.killed", folder)
            time.sleep(60)
    row = _REAL(path, names, options=options, threads=threads)
    p.with_suffix(".done").touch()
    return row


def _videos(folder: Path, culprit: str) -> list:
    # the culprit first (sorted), v1 in flight beside it, v2 queued behind them
    for i, name in enumerate([culprit, "v1", "v2"]):
        write_turntable(TurntableSpec(name=name, width=64, height=48, frames=9, seed=i), folder)
    return sorted(folder.glob("*.mp4"))


@pytest.mark.parametrize("culprit, pools", [
    ("culprit", [2, 2, 1]),  # killed beside v1: v1 and v2 in a fresh pool, the culprit alone, killed again
    ("culprit_once", [2, 2, 1]),  # killed once beside v1: alone, it is measured
    ("culprit_alone", [2]),  # killed with nothing else in flight: named at once
])
def test_a_killed_worker_costs_its_own_video_only(tmp_path, monkeypatch, culprit, pools):
    videos = _videos(tmp_path, culprit)
    monkeypatch.setattr(runner, "evaluate_video", killing)
    started, real_pool = [], runner.worker_pool
    monkeypatch.setattr(runner, "worker_pool", lambda workers: started.append(workers) or real_pool(workers))
    rows = {r["video"]: r for r in runner.evaluate(videos, metrics=["psnr"], jobs=2).rows}
    assert started == pools
    assert list(rows) == [v.name for v in videos]  # input order, one row each
    for v in videos[1:]:  # in flight beside it, or queued behind it: measured as if nothing happened
        expected = _REAL(v, ["psnr"])
        assert rows[v.name]["status"] == "ok", rows[v.name]["error"]
        assert rows[v.name]["psnr"] == pytest.approx(expected["psnr"])
    row = rows[f"{culprit}.mp4"]
    if culprit == "culprit_once":
        assert row["status"] == "ok", row["error"]
        return
    assert row["status"] == "error"
    assert row["error"].startswith(f"{videos[0]}: the worker process evaluating it was killed, most likely for want "
                                   "of memory; fix: ")
    assert "--jobs 1" in row["error"] and "\n" not in row["error"]


def test_the_default_worker_count_is_capped_by_the_memory_available(tmp_path, monkeypatch, caplog):
    videos = [tmp_path / f"v{i}.mp4" for i in range(4)]
    gb = 10 ** 9
    monkeypatch.setattr(runner, "video_bytes", lambda p: {"v0.mp4": 3 * gb}.get(p.name, gb))
    monkeypatch.setattr(runner, "available_memory", lambda: 5 * gb)
    estimates = {}
    with caplog.at_level("INFO", logger="circle_rotate.eval.runner"):
        # the largest videos at once: 3 GB + 1 GB (+ a worker's own 0.2 GB each) fit, a third does not
        assert runner.memory_workers(videos, 4, estimates) == 2
    assert "evaluating 2 videos at once, not 4: 5.0 GB of memory is available, and the 4 largest would need about " \
           "6.8 GB together (the largest alone 3.2 GB)" in caplog.text
    assert estimates[videos[0]] == 3 * gb  # kept for the error of a video whose worker is killed
    assert "was killed, most likely for want of memory; it needs about 3.0 GB; fix: " in \
        runner._killed_row(videos[0], estimates[videos[0]])["error"]
    monkeypatch.setattr(runner, "available_memory", lambda: 100 * gb)
    assert runner.memory_workers(videos, 4) == 4
    monkeypatch.setattr(runner, "available_memory", lambda: gb // 2)
    assert runner.memory_workers(videos, 4) == 1  # one at least, in a worker of its own
    monkeypatch.setattr(runner, "available_memory", lambda: None)  # unknown: as asked
    assert runner.memory_workers(videos, 4) == 4


def test_the_cap_applies_to_the_default_only_and_an_estimate_reads_the_header(tmp_path, monkeypatch):
    write_turntable(TurntableSpec(name="a", width=64, height=48, frames=9), tmp_path)
    write_turntable(TurntableSpec(name="b", width=64, height=48, frames=9, seed=1), tmp_path)
    assert runner.video_bytes(tmp_path / "a.mp4") == 9 * 64 * 48 * runner.BYTES_PER_PIXEL
    assert runner.video_bytes(tmp_path / "a.txt") == 0
    asked, pooled = [], []
    monkeypatch.setattr(runner, "memory_workers", lambda videos, workers, estimates: asked.append(workers) or 1)
    monkeypatch.setattr(runner, "usable_cores", lambda: 8)
    monkeypatch.setattr(runner, "_in_pools", lambda videos, names, rows, **kw: pooled.append(kw["workers"]))
    runner.evaluate([tmp_path], metrics=["psnr"], jobs=0)
    assert asked == [2] and pooled == [1]  # capped to one: still in a worker, so a kill names the video
    runner.evaluate([tmp_path], metrics=["psnr"], jobs=2)  # the user's count: as given
    assert asked == [2] and pooled == [1, 2]


def test_eval_passes_no_jobs_count_of_its_own_when_none_is_given(tmp_path, monkeypatch):
    from circle_rotate.cli.main import main

    write_turntable(TurntableSpec(name="a", width=64, height=48, frames=9), tmp_path)
    seen = []

    def evaluate(paths, *, jobs, **kwargs):
        seen.append(jobs)
        return runner.EvalResults([], ["psnr"])

    monkeypatch.setattr(runner, "evaluate", evaluate)
    assert main(["-q", "eval", str(tmp_path), "--metrics", "psnr"]) == 0
    assert main(["-q", "eval", str(tmp_path), "--metrics", "psnr", "--jobs", "3"]) == 0
    assert seen == [0, 3]  # 0: the runner's one per core within the memory available
