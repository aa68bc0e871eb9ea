"""``circle-rotate eval``: files and folders, error rows, exit codes, outputs, both call shapes."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from circle_rotate.cli.main import main
from circle_rotate.eval.runner import evaluate, find_videos, options_for
from circle_rotate.eval.subject_mask import SubjectHint
from circle_rotate.kernel.video_io import write_video
from circle_rotate.selfcheck.synthetic.turntable import DriftPath, TurntableSpec, write_turntable


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two good clips, one portrait GIF, and the bad kinds: corrupt, empty, one frame, not a video."""
    d = tmp_path_factory.mktemp("videos")
    write_turntable(TurntableSpec(name="orbit_a", width=256, height=160, frames=21, subject="box", clutter=1,
                                  drift=DriftPath("linear", 10.0)), d)
    write_turntable(TurntableSpec(name="orbit_b", width=256, height=160, frames=21, subject="car", direction="left"), d)
    raw = (d / "orbit_a.mp4").read_bytes()
    (d / "corrupt.mp4").write_bytes(raw[: len(raw) // 3])
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.webm").write_text("this is not a video\n")
    write_video(d / "still.mp4", [np.full((64, 64, 3), 90, np.uint8)], fps=16)
    return d


def test_a_video_cut_short_is_measured_with_a_note_saying_so(folder, tmp_path):
    """A Matroska file cut off keeps its index: it decodes cleanly, just short, and says how short."""
    from circle_rotate.kernel.video_io import read_video

    write_video(tmp_path / "whole.mkv", read_video(folder / "orbit_b.mp4"), fps=16)
    data = (tmp_path / "whole.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) * 6 // 10])
    res = evaluate([tmp_path / "whole.mkv", tmp_path / "cut.mkv"], metrics=["motion_magnitude"])
    whole, cut = res.rows
    assert whole["status"] == cut["status"] == "ok" and cut["frames"] < whole["frames"] == 21
    assert not any("cut short" in n for n in whole["notes"])
    assert any(n.startswith(f"decoded {cut['frames'] / 16:.2f} s ({cut['frames']} frames) of the 1.31 s the file "
                            "declares: cut short") for n in cut["notes"]), cut["notes"]


def test_bad_videos_become_error_rows_and_the_others_still_run(folder):
    res = evaluate([folder], metrics=["motion_magnitude", "psnr"], jobs=2)
    rows = {r["video"]: r for r in res.rows}
    assert set(rows) == {"orbit_a.mp4", "orbit_b.mp4", "corrupt.mp4", "empty.mp4", "notes.webm", "still.mp4"}
    assert [r["video"] for r in res.rows] == sorted(rows)  # input (sorted folder) order, whatever finished first
    for good in ("orbit_a.mp4", "orbit_b.mp4"):
        assert rows[good]["status"] == "ok" and rows[good]["motion_magnitude"] > 0
    assert "0 bytes" in rows["empty.mp4"]["error"]
    assert "1 frame" in rows["still.mp4"]["error"]
    assert rows["notes.webm"]["status"] == "error" and "notes.webm" in rows["notes.webm"]["error"]
    assert rows["corrupt.mp4"]["status"] == "error" or rows["corrupt.mp4"]["frames"] < 21  # truncated mid-stream
    assert res.aggregate["motion_magnitude"]["n"] == sum(r["status"] == "ok" for r in res.rows)


def test_exit_status_says_something_failed_unless_keep_going(folder, tmp_path, capsys):
    assert main(["-q", "eval", str(folder / "orbit_b.mp4"), str(folder / "empty.mp4"), "--metrics", "psnr"]) == 1
    assert "could not be evaluated" in capsys.readouterr().err
    assert main(["-q", "eval", str(folder / "orbit_b.mp4"), str(folder / "empty.mp4"), "--metrics", "psnr",
                 "--keep-going"]) == 0
    assert main(["-q", "eval", str(tmp_path / "missing.mp4")]) == 2  # a path that is not there: a usage error
    (tmp_path / "empty_folder").mkdir()
    assert main(["-q", "eval", str(tmp_path / "empty_folder")]) == 2  # a folder without videos is a usage error
    assert main(["-q", "eval", str(folder / "orbit_b.mp4"), "--metrics", "nonsense"]) == 2


def test_outputs_json_csv_png_and_force(folder, tmp_path, capsys):
    out = tmp_path / "results.json"
    args = ["-q", "eval", str(folder / "orbit_a.mp4"), str(folder / "orbit_b.mp4"), "--out", str(out), "--csv",
            "--jobs", "1"]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert [r["video"] for r in data["videos"]] == ["orbit_a.mp4", "orbit_b.mp4"]
    row = data["videos"][0]
    for col in ("drift", "subject_flow", "global_flow", "motion_magnitude", "dynamic_degree", "psnr", "ssim",
                "orbit_direction", "angular_speed_deg_s"):
        assert col in row
    assert len(row["series"]["subject_drift"]["centroids"]) == 16
    doubtful = sum(bool(r.get("drift_unreliable")) for r in data["videos"])  # orbit_b's mask: left out of the mean
    assert (data["aggregate"]["drift"]["n"], data["aggregate"]["drift"]["left_out_unreliable"]) == (2 - doubtful, doubtful)
    with open(out.with_suffix(".csv"), encoding="utf-8-sig") as fh:  # with a BOM, for Excel
        table = list(csv.DictReader(fh))
    assert [t["video"] for t in table] == ["orbit_a.mp4", "orbit_b.mp4"]
    assert float(table[1]["psnr"]) == pytest.approx(data["videos"][1]["psnr"])
    png = cv2.imread(str(out.with_suffix(".png")))
    assert png is not None and png.shape[0] > 100
    capsys.readouterr()
    assert main(args) == 2  # exists: refused before any work
    assert "--force" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0


def _missing(*packages: str) -> str:
    """What a learned metric says first when one of its packages is absent here ("" when all are present)."""
    absent = [p for p in packages if importlib.util.find_spec(p) is None]
    return f"the '{absent[0]}' package is not installed" if absent else ""


def test_reference_call_shape(folder, tmp_path, capsys, monkeypatch):
    d = tmp_path / "outputs"
    d.mkdir()
    shutil.copy(folder / "orbit_b.mp4", d)
    out = tmp_path / "results.json"
    # no learned weights for this run, whatever this machine has cached: an empty torch hub, a CLIP
    # folder that does not exist, no YOLO/SAM files; so every learned metric must say what it lacks
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for name in ("CLIP", "YOLO", "SAM"):
        monkeypatch.delenv(f"CIRCLE_ROTATE_{name}_WEIGHTS", raising=False)
    assert main(["-q", "eval", "--metric", "all", "--input_dir", str(d), "--output", str(out),
                 "--weights", f"clip={tmp_path / 'no_clip'}"]) == 2  # a path given must be there
    assert "--weights clip=" in capsys.readouterr().err
    (tmp_path / "no_clip").mkdir()  # there, and holding no weights
    assert main(["-q", "eval", "--metric", "all", "--input_dir", str(d), "--output", str(out),
                 "--weights", f"clip={tmp_path / 'no_clip'}"]) == 0
    row = json.loads(out.read_text())["videos"][0]
    assert row["status"] == "ok" and row["drift"] >= 0
    skipped = {s.split(":")[0]: s for s in row["skipped"]}
    says = {"clip_i": _missing("transformers") or "are not on this machine",
            "lpips": _missing("lpips") or "needs torchvision's AlexNet weights",
            "vbench_sc": "DINO is not in the torch hub cache",
            "subject_drift_sam": _missing("ultralytics", "segment_anything") or "need local weights"}
    assert sorted(skipped) == sorted(says)
    for name, column in (("clip_i", "clip_first_last"), ("lpips", "lpips"), ("vbench_sc", "vbench_sc"),
                         ("subject_drift_sam", "drift_sam")):
        assert skipped[name].startswith(f"{name}: skipped: ") and says[name] in skipped[name], skipped[name]
        assert column not in row


@pytest.mark.parametrize("frames", [30, 50])
def test_small_portrait_gifs_evaluate_without_error(tmp_path, frames):
    spec = TurntableSpec(name=f"portrait_{frames}", width=180, height=320, frames=frames, fps=16, subject="figure",
                         total_angle_deg=60, clutter=1, drift=DriftPath("sine", 5.0))
    gif = write_turntable(spec, tmp_path, suffix=".gif").video
    res = evaluate([gif], metrics=["default"])
    row = res.rows[0]
    assert row["status"] == "ok", row["error"]
    assert (row["width"], row["height"], row["frames"]) == (180, 320, frames)
    assert np.isfinite(row["drift"]) and row["ssim"] <= 1 and row["orbit_motion"]


def test_frame_folders_are_videos(tmp_path):
    spec = TurntableSpec(name="f", width=128, height=96, frames=9)
    from circle_rotate.selfcheck.synthetic.turntable import render_frames

    d = tmp_path / "clip_frames"
    d.mkdir()
    for i, fr in enumerate(render_frames(spec)):
        cv2.imwrite(str(d / f"{i:04d}.png"), fr.image[..., ::-1])
    assert find_videos([tmp_path]) == [d] and find_videos([d]) == [d]
    row = evaluate([d], metrics=["dynamic_degree", "ssim"]).rows[0]
    assert row["status"] == "ok" and row["frames"] == 9
    assert any("no frame rate stated (a folder of frames): read at 16 fps" in n for n in row["notes"])

    (d / "0004.png").unlink()  # a gap in the numbering: said, and read on
    row = evaluate([d], metrics=["dynamic_degree"]).rows[0]
    assert row["status"] == "ok" and row["frames"] == 8
    assert any("1 frame number(s) missing between 0 and 8 (first: after 3, the next is 5)" in n for n in row["notes"])

    shutil.copy(d / "0000.png", d / "b_0000.png")  # a second sequence: no one video
    row = evaluate([d], metrics=["dynamic_degree"]).rows[0]
    assert row["status"] == "error" and "2 numbered sequences of frames" in row["error"]
    (d / "b_0000.png").unlink()

    shutil.copy(d / "0000.png", d / "thumbnail.png")  # a poster beside the frames: no frame of the video
    row = evaluate([d], metrics=["dynamic_degree"]).rows[0]
    assert row["status"] == "error" and "1 image(s) that are not numbered frames (first: thumbnail.png)" in row["error"]
    (d / "thumbnail.png").unlink()

    cv2.imwrite(str(d / "0006.png"), np.zeros((50, 60, 3), np.uint8))  # another size: the frame is named
    row = evaluate([d], metrics=["dynamic_degree"]).rows[0]
    assert row["status"] == "error" and "first: 0006.png is 60x50" in row["error"]


def test_each_video_is_sent_its_own_hint_only(tmp_path):
    hints = {"orbit_a.mp4": SubjectHint(box=(80, 40, 180, 140)), "orbit_b": SubjectHint(mask=np.ones((160, 256), bool)),
             "other.mp4": SubjectHint(box=(1, 2, 3, 4))}
    options = {"subject_boxes": hints, "sheet_dir": "sheets"}
    assert options_for(tmp_path / "orbit_a.mp4", options) == {"subject_boxes": {"orbit_a.mp4": hints["orbit_a.mp4"]},
                                                            "sheet_dir": "sheets"}
    assert options_for(tmp_path / "orbit_b.mp4", options)["subject_boxes"] == {"orbit_b": hints["orbit_b"]}
    assert options_for(tmp_path / "none.mp4", options)["subject_boxes"] == {}
    assert options["subject_boxes"] is hints and len(hints) == 3  # the caller's options are left as they were
    assert options_for(tmp_path / "a.mp4", {"subject": hints["other.mp4"]}) == {"subject": hints["other.mp4"]}


def test_workers_follow_the_hint_of_their_own_video(folder):
    videos = [folder / "orbit_a.mp4", folder / "orbit_b.mp4"]
    drawn = np.zeros((160, 256), bool)
    drawn[30:150, 60:200] = True
    hints = {"orbit_a.mp4": SubjectHint(box=(60, 30, 200, 150)), "orbit_b.mp4": SubjectHint(mask=drawn)}
    rows = evaluate(videos, metrics=["subject_drift"], jobs=2, options={"subject_boxes": hints}).rows
    assert [r["subject_found_by"] for r in rows] == ["user_box", "user_mask"]


def test_the_cores_are_shared_out_between_the_videos_evaluated_at_once(tmp_path, monkeypatch):
    from circle_rotate.eval import runner

    for i in range(2):
        write_turntable(TurntableSpec(name=f"v{i}", width=64, height=48, frames=9, seed=i), tmp_path)
    seen = []

    def spy(path, names, *, options=None, threads=1):
        seen.append(threads)
        return {"video": Path(path).name, "path": str(path), "status": "ok", "error": None}

    monkeypatch.setattr(runner, "evaluate_video", spy)
    monkeypatch.setattr(runner, "usable_cores", lambda: 8)
    runner.evaluate([tmp_path], metrics=["motion"], jobs=1)
    runner.evaluate([tmp_path / "v0.mp4"], metrics=["motion"], jobs=4)  # one video: in this process
    runner.evaluate([tmp_path], metrics=["motion"], jobs=1, threads=3)
    assert seen == [8, 8, 8, 3, 3]


def test_running_out_of_memory_is_an_error_row_that_says_how_big_the_clip_is(folder, monkeypatch):
    from circle_rotate.eval import runner

    class Starved:  # the first allocation a metric makes fails, as numpy's would
        def __init__(self, clip, **_):
            raise MemoryError

    monkeypatch.setattr(runner, "EvalContext", Starved)
    row = runner.evaluate_video(folder / "orbit_a.mp4", ["motion_magnitude"])
    assert row["status"] == "error" and "\n" not in row["error"]
    assert row["error"].startswith(f"{folder / 'orbit_a.mp4'}: out of memory while evaluating (21 frames of 256x160)")
    assert "--jobs 1" in row["error"] and "trim it" in row["error"]


def test_a_folder_whose_videos_are_one_level_down_says_where(folder, tmp_path, capsys):
    # ComfyUI's SaveVideo node saves to output/video/ by default; output/ itself holds only stills
    output = tmp_path / "output"
    (output / "video").mkdir(parents=True)
    shutil.copy(folder / "orbit_b.mp4", output / "video" / "ComfyUI_00001_.mp4")
    cv2.imwrite(str(output / "ComfyUI_00002_.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(output / "ComfyUI_00003_.png"), np.zeros((9, 9, 3), np.uint8))  # not one clip's frames either
    (output / "empty").mkdir()
    assert main(["-q", "eval", str(output), "--metrics", "psnr"]) == 2  # a usage error: nothing ran
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pass the folder they are in: {output / 'video'}" in err
    assert find_videos([output / "video"]) == [output / "video" / "ComfyUI_00001_.mp4"]


def test_output_names_are_unique_in_a_run():
    from circle_rotate.eval.mask_outputs import output_names

    assert output_names([Path("a/x.mp4"), Path("a/y.mp4")]) == ["x", "y"]
    assert output_names([Path("a/x.mp4"), Path("a/x.webp"), Path("b/x.mp4"), Path("a/z.gif")]) == \
        ["a_x.mp4", "x.webp", "b_x.mp4", "z"]
    assert output_names([Path("a/x.mp4"), Path("a/x.mp4")]) == ["x.mp4_2", "x.mp4_3"]  # the same file twice
    assert output_names([Path("x.mp4"), Path("c/x.webp"), Path("x")]) == ["x.mp4", "x.webp", "x"]


def _one_name_in_two_folders(folder, tmp_path, name: str):
    """``a/<name>`` and ``b/<name>``: two videos sharing a file name."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    shutil.copy(folder / "orbit_a.mp4", a / name)
    shutil.copy(folder / "orbit_b.mp4", b / name)
    return a, b


def test_videos_sharing_a_stem_write_their_own_contact_sheets(folder, tmp_path):
    a, b = _one_name_in_two_folders(folder, tmp_path, "x.mp4")
    sheets = tmp_path / "sheets"
    rows = evaluate([a, b], metrics=["subject_drift"], jobs=2,
                    options={"sheet_dir": str(sheets), "mask_dir": str(sheets)}).rows
    written = [Path(r["contact_sheet"]) for r in rows]
    assert [p.name for p in written] == ["a_x.mp4.drift.png", "b_x.mp4.drift.png"]
    assert [Path(r["masks_dir"]).name for r in rows] == ["a_x.mp4", "b_x.mp4"]
    first, second = (cv2.imread(str(p)) for p in written)
    assert first.shape != second.shape or not np.array_equal(first, second)  # each its own video's frames


def test_a_rerun_with_the_masks_inside_the_videos_folder_reads_the_same_videos(folder, tmp_path, capsys):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    shutil.copy(folder / "orbit_a.mp4", outputs / "a.mp4")
    shutil.copy(folder / "orbit_b.mp4", outputs / "b.mp4")
    masks = outputs / "masks"
    args = ["-q", "eval", str(outputs), "--metrics", "subject_drift", "--save-masks", str(masks),
            "--out", str(tmp_path / "r.json"), "--force"]
    assert main(args) == 0
    # two contact sheets: read as frames, they would be one more two-frame "video"
    assert sorted(p.name for p in masks.glob("*.drift.png")) == ["a.drift.png", "b.drift.png"]
    assert main(args) == 0
    rows = json.loads((tmp_path / "r.json").read_text())["videos"]
    assert [r["video"] for r in rows] == ["a.mp4", "b.mp4"]
    capsys.readouterr()
    for wrong in (masks, masks / "a"):  # the sheets, or one video's masks
        assert main(["-q", "eval", str(wrong), "--metrics", "psnr", "--out", str(tmp_path / "x.json")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "eval --save-masks wrote" in err
        assert "pass the folder of the videos" in err


def test_a_cjk_file_name_gives_no_glyph_warnings_and_the_csv_names_each_path(folder, tmp_path):
    import warnings

    a, b = _one_name_in_two_folders(folder, tmp_path, "动画.mp4")
    out = tmp_path / "r.json"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["-q", "eval", str(a), str(b), "--metrics", "motion", "-o", str(out), "--csv"]) == 0
    assert not [w for w in caught if "Glyph" in str(w.message)]
    lines = out.with_suffix(".csv").read_text(encoding="utf-8-sig").splitlines()
    assert lines[0].startswith("video,path,") and {line.split(",")[1] for line in lines[1:]} == {
        str(a / "动画.mp4"), str(b / "动画.mp4")}


def test_a_csv_cell_a_spreadsheet_would_run_as_a_formula_is_text():
    from circle_rotate.eval.results_io import csv_text

    rows = [{"video": "=HYPERLINK(\"http://x\").gif", "path": "/v/=1+1.gif", "status": "ok", "drift": -1.5,
             "notes": ["-- a note"]}]
    line = next(csv.reader(csv_text(rows).splitlines()[1:]))
    assert line[0] == "'=HYPERLINK(\"http://x\").gif" and line[1] == "/v/=1+1.gif"
    assert "-1.5" in line and line[-1] == "'-- a note"  # numbers stay numbers


def test_results_name_each_video_by_its_absolute_path(folder, tmp_path, monkeypatch):
    """Failed before: outputs/demo1.mp4, as given, which names another video (or none) read from
    any other folder (eval compare)."""
    (tmp_path / "outputs").mkdir()
    shutil.copy(folder / "orbit_b.mp4", tmp_path / "outputs" / "demo1.mp4")
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "eval", "outputs", "--metrics", "psnr", "-o", "r.json", "--csv"]) == 0
    (row,) = json.loads((tmp_path / "r.json").read_text())["videos"]
    assert row["video"] == "demo1.mp4" and Path(row["path"]).is_absolute()
    assert Path(row["path"]).samefile(tmp_path / "outputs" / "demo1.mp4")
    (line,) = list(csv.DictReader((tmp_path / "r.csv").read_text(encoding="utf-8-sig").splitlines()))
    assert line["path"] == row["path"]


def test_results_moved_with_their_videos_still_find_them(folder, tmp_path, monkeypatch):
    """A project folder (videos and results) copied elsewhere: the absolute paths name the old
    place, the path from the results file finds the copy. Failed before: the moved results read
    the videos where they no longer are (or, if still there, the old copies)."""
    from circle_rotate.eval.results_io import read_results

    project = tmp_path / "project"
    (project / "outputs").mkdir(parents=True)
    shutil.copy(folder / "orbit_b.mp4", project / "outputs" / "demo1.mp4")
    monkeypatch.chdir(project)
    assert main(["-q", "eval", "outputs", "--metrics", "psnr", "-o", "r.json"]) == 0
    (stored,) = json.loads((project / "r.json").read_text())["videos"]
    assert stored["path_from_results"] == "outputs/demo1.mp4"
    moved = tmp_path / "moved"
    shutil.move(str(project), moved)
    monkeypatch.chdir(tmp_path)
    (row,) = read_results(moved / "r.json")
    assert Path(row["path"]).samefile(moved / "outputs" / "demo1.mp4")


def test_a_force_rerun_leaves_no_earlier_figure_or_csv_it_did_not_write(folder, tmp_path):
    """Failed before: r.png and r.csv of the earlier run stayed beside the new r.json."""
    out, video = tmp_path / "r.json", str(folder / "orbit_a.mp4")
    assert main(["-q", "eval", video, "--metrics", "subject_drift", "-o", str(out), "--csv", "--jobs", "1"]) == 0
    assert out.with_suffix(".png").is_file() and out.with_suffix(".csv").is_file()
    argv = ["-q", "eval", video, "--metrics", "psnr", "-o", str(out), "--force", "--jobs", "1"]
    assert main(argv) == 0  # no drift to plot, no --csv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    out.with_suffix(".csv").write_text("video,my own notes\n")  # a CSV eval did not write is the user's
    assert main(argv) == 0
    assert out.with_suffix(".csv").read_text() == "video,my own notes\n"


def test_the_mean_drift_leaves_out_readings_marked_unreliable_as_compare_does(capsys):
    """Failed before: a mask that lost the subject (223.7 px) was most of the mean drift, which
    eval compare leaves out of its statistics."""
    from circle_rotate.cli.eval import _print_table
    from circle_rotate.eval.runner import aggregate
    rows = [{"video": "a.mp4", "status": "ok", "drift": 2.0, "subject_flow": 1.0, "motion_magnitude": 3.0},
            {"video": "b.mp4", "status": "ok", "drift": 4.0, "subject_flow": 3.0, "motion_magnitude": 5.0},
            {"video": "lost.mp4", "status": "ok", "drift": 223.7, "subject_flow": 40.0, "motion_magnitude": 7.0,
             "drift_unreliable": "the mask lost the subject"}]
    agg = aggregate(rows)
    assert (agg["drift"]["n"], agg["drift"]["mean"], agg["drift"]["max"], agg["drift"]["left_out_unreliable"]) == \
        (2, 3.0, 4.0, 1)
    assert (agg["subject_flow"]["mean"], agg["subject_flow"]["left_out_unreliable"]) == (2.0, 1)
    assert agg["motion_magnitude"]["n"] == 3 and "left_out_unreliable" not in agg["motion_magnitude"]
    assert aggregate(rows[:2])["drift"]["left_out_unreliable"] == 0
    assert aggregate(rows[2:])["drift"] == {"n": 0, "left_out_unreliable": 1}  # no mean at all, and why
    _print_table(rows, agg)
    table = capsys.readouterr().out.splitlines()
    mean = next(line for line in table if line.startswith("mean"))
    assert mean.split()[1:3] == ["3", "2"]
    assert "(the mean drift px and subj.flow leave out 1 unreliable reading: lost.mp4)" in table[-1]
