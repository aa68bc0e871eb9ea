"""Nothing of the user's is lost to ``eval`` and ``eval compare``: no output replaces a file the run
reads (``--force`` or not), and an interrupted ``--force`` rerun leaves the earlier run's masks,
contact sheets and report as they were (they are staged beside their folder and moved into place
only once the run is done)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from circle_rotate.cli.main import main
from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, write_footage


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Three small orbits in one folder, and the same names in a second one (a LoRA side)."""
    root = tmp_path_factory.mktemp("kept")
    for side, seed in (("base", 80), ("lora", 80)):
        for i in range(3):
            spec = TurntableSpec(name=f"orbit_{i}", width=128, height=96, frames=17, fps=16.0, total_angle_deg=30,
                                 subject="car", seed=seed + i)
            write_footage(spec, root / side)
    return root


def _snapshot(*folders: Path) -> dict:
    return {p: p.read_bytes() for f in folders for p in sorted(Path(f).rglob("*")) if p.is_file()}


def _staging_left(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if ".circle-rotate-partial-" in p.name)


def _last_err(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("case", ["boxes_as_results", "mask_as_plot", "weights_as_results", "mask_as_saved_mask",
                                  "boxes_as_compare_json", "mask_as_compare_sheet"])
def test_no_output_replaces_a_file_the_run_reads_even_with_force(videos, tmp_path, case, capsys):
    video = videos / "base" / "orbit_0.mp4"
    mask = np.zeros((96, 128), np.uint8)
    mask[30:70, 40:90] = 255
    boxes = {"orbit_0.mp4": [40, 30, 90, 70]}
    if case == "boxes_as_results":
        kept = tmp_path / "boxes.json"
        kept.write_text(json.dumps(boxes))
        argv = ["eval", str(video), "--subject-boxes", str(kept), "-o", str(kept)]
    elif case == "mask_as_plot":  # results.png is written beside results.json
        kept = tmp_path / "smask.png"
        cv2.imwrite(str(kept), mask)
        argv = ["eval", str(video), "--subject-mask", str(kept), "-o", str(tmp_path / "smask.json")]
    elif case == "weights_as_results":
        (tmp_path / "clip").mkdir()
        kept = tmp_path / "clip" / "config.json"
        kept.write_text('{"model": "mine"}')
        argv = ["eval", str(video), "--weights", f"clip={tmp_path / 'clip'}", "-o", str(kept)]
    elif case == "mask_as_saved_mask":  # a mask taken from an earlier run's --save-masks
        kept = tmp_path / "masks" / "orbit_0" / "frame_0000.png"
        kept.parent.mkdir(parents=True)
        cv2.imwrite(str(kept), mask)
        argv = ["eval", str(video), "--subject-mask", str(kept), "--save-masks", str(tmp_path / "masks")]
    elif case == "boxes_as_compare_json":
        kept = tmp_path / "rep" / "compare.json"
        kept.parent.mkdir()
        kept.write_text(json.dumps(boxes))
        argv = ["eval", "compare", str(videos / "base"), str(videos / "lora"), "-o", str(kept.parent),
                "--subject-boxes", str(kept)]
    else:
        kept = tmp_path / "rep" / "sheets" / "baseline" / "orbit_0.drift.png"
        kept.parent.mkdir(parents=True)
        cv2.imwrite(str(kept), mask)
        argv = ["eval", "compare", str(videos / "base"), str(videos / "lora"), "-o", str(tmp_path / "rep"),
                "--subject-mask", str(kept)]
    before = kept.read_bytes()
    assert main(["-q", *argv, "--metrics", "subject_drift", "--jobs", "1", "--force"]) == 2
    line = _last_err(capsys)
    assert "a file this command reads" in line and "--force never replaces an input" in line, line
    assert kept.read_bytes() == before


def _interrupt_after_first_video(monkeypatch) -> None:
    from circle_rotate.eval import runner

    real, calls = runner.evaluate_video, []

    def evaluate_video(*args, **kwargs):
        if calls:  # the first video's masks and sheet are written: stop as Ctrl-C would
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate_video", evaluate_video)


def test_an_interrupted_force_rerun_keeps_the_earlier_masks_and_a_finished_one_replaces_them(
        videos, tmp_path, monkeypatch, capsys):
    masks, out = tmp_path / "masks", tmp_path / "r.json"
    argv = ["-q", "eval", str(videos / "base"), "-o", str(out), "--csv", "--save-masks", str(masks),
            "--metrics", "subject_drift", "--jobs", "1"]
    assert main(argv) == 0
    first = _snapshot(tmp_path)
    assert len([p for p in first if p.name.startswith("frame_")]) >= 3 * 8

    with monkeypatch.context() as m:
        _interrupt_after_first_video(m)
        assert main([*argv, "--force", "--subject-box", "30,20,100,80"]) == 130
    assert _last_err(capsys) == "circle-rotate eval: interrupted; no partial output was kept"
    assert _snapshot(tmp_path) == first  # every earlier file, byte for byte, and nothing else
    assert not _staging_left(tmp_path)

    stale = tmp_path / ".masks.circle-rotate-partial-deadbeef"  # as a run killed outright leaves it
    (stale / "orbit_0").mkdir(parents=True)
    (stale / "orbit_0.drift.png").write_bytes(b"x")
    assert main([*argv, "--force", "--subject-box", "30,20,100,80"]) == 0
    assert not _staging_left(tmp_path)
    after = _snapshot(tmp_path)
    assert set(after) == set(first) and any(after[p] != first[p] for p in first if p.name.startswith("frame_"))
    for row in json.loads(out.read_text())["videos"]:  # the results name the files where they are
        assert Path(row["contact_sheet"]).parent == masks and Path(row["contact_sheet"]).is_file()
        assert Path(row["masks_dir"]).parent == masks and list(Path(row["masks_dir"]).glob("frame_*.png"))


def test_an_interrupted_force_rerun_of_compare_keeps_the_earlier_report(videos, tmp_path, monkeypatch, capsys):
    rep, masks = tmp_path / "rep", tmp_path / "masks"
    argv = ["-q", "eval", "compare", str(videos / "base"), str(videos / "lora"), "-o", str(rep),
            "--save-masks", str(masks), "--metrics", "subject_drift", "--jobs", "1"]
    assert main(argv) == 0
    first = _snapshot(tmp_path)
    assert len([p for p in first if p.name.endswith(".drift.png")]) == 6
    assert len([p for p in first if p.name.startswith("frame_")]) >= 6 * 8

    with monkeypatch.context() as m:
        _interrupt_after_first_video(m)
        assert main([*argv, "--force", "--subject-box", "30,20,100,80"]) == 130
    assert _last_err(capsys) == "circle-rotate eval: interrupted; no partial output was kept"
    assert _snapshot(tmp_path) == first
    assert not _staging_left(tmp_path)

    assert main([*argv, "--force", "--subject-box", "30,20,100,80"]) == 0
    assert not _staging_left(tmp_path)
    after = _snapshot(tmp_path)
    assert set(after) == set(first) and after[rep / "compare.json"] != first[rep / "compare.json"]
    summary = json.loads((rep / "compare.json").read_text())
    for row in summary["baseline_videos"] + summary["lora_videos"]:
        assert Path(row["contact_sheet"]).is_relative_to(rep / "sheets") and Path(row["contact_sheet"]).is_file()
    assert "href='sheets/baseline/orbit_0.drift.png'" in (rep / "report.html").read_text()


def test_a_failed_force_rerun_keeps_the_earlier_masks(videos, tmp_path, monkeypatch):
    """A results file that cannot be written (a full disk, say) fails the run: the masks it would
    name are not moved into place either."""
    from circle_rotate.eval import results_io

    masks, out = tmp_path / "masks", tmp_path / "r.json"
    argv = ["-q", "eval", str(videos / "base" / "orbit_1.mp4"), "-o", str(out), "--save-masks", str(masks),
            "--metrics", "subject_drift", "--jobs", "1"]
    assert main(argv) == 0
    first = _snapshot(tmp_path)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device", str(out))

    monkeypatch.setattr(results_io, "write_json", broken)
    assert main([*argv, "--force", "--subject-box", "30,20,100,80"]) == 2
    assert _snapshot(tmp_path) == first and not _staging_left(tmp_path)
