"""``circle-rotate eval`` and ``eval compare`` on what generators write: ComfyUI's counters,
VideoHelperSuite's ping-pong, Wan's and musubi's file names, short clips, a labelled set's boxes
file, a missing or cut-off video. The videos are the study's real Wan2.2 GIFs in
``../shared/eval-real`` (skipped where that folder is not there), as they are or re-encoded.
"""

from __future__ import annotations

import csv
import json
import shutil
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest

from circle_rotate.cli.main import main
from circle_rotate.eval.compare import run_compare
from circle_rotate.eval.pairing import Pair, pair_rows
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.video_io import decode_all, write_video

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "eval-real"
SCENES = ("cat", "demo1", "demo13", "demo2", "demo3", "demo4", "demo5")


def _gif(name: str) -> Path:
    path = REAL / f"{name}.gif"
    if not path.is_file():
        pytest.skip(f"the real GIFs are not here ({REAL}); they sit next to the repository in the shared folder")
    return path


def _frames(name: str) -> np.ndarray:
    return np.stack(decode_all(_gif(name))[0])


def _lora(scene: str) -> str:
    return f"{scene}_others" if scene == "cat" else f"{scene}_ours"


def _base(scene: str) -> str:
    return f"{scene}_ours" if scene == "cat" else f"{scene}_base"


def _rows(*names: str):
    return [{"video": n, "status": "ok"} for n in names]


# -- 1. a pair of two scenes (a missing video shifts ComfyUI's counters) ------------------------------------


def test_first_frames_part_the_real_pairs_from_every_wrong_pair_with_margin():
    """Also with one side's first frame or two dropped (a front end's doing): failed before, when
    the first frames alone read 15.3 dB for demo4 two frames apart."""
    from circle_rotate.eval.pairing import SAME_START_DB, start_agreement, start_psnr

    starts = {n: _frames(n)[:5] for s in SCENES for n in (_base(s), _lora(s))}
    right = [start_psnr(starts[_base(s)][0], starts[_lora(s)][0]) for s in SCENES]
    wrong = [start_psnr(starts[_base(a)][0], starts[_lora(b)][0]) for a, b in permutations(SCENES, 2)]
    assert min(right) > SAME_START_DB + 15 and max(wrong) < SAME_START_DB - 2, (min(right), max(wrong))
    dropped = [start_agreement(b[k:], l_) for s in SCENES for k in (1, 2)
               for b, l_ in ((starts[_base(s)], starts[_lora(s)]), (starts[_lora(s)], starts[_base(s)]))]
    wrong = [start_agreement(starts[_base(a)][k:], starts[_lora(b)]) for a, b in permutations(SCENES, 2) for k in (0, 1, 2)]
    assert min(dropped) > SAME_START_DB + 2 and max(wrong) < SAME_START_DB - 2, (min(dropped), max(wrong))


def _offset_and_mismatched_sides(tmp_path):
    """demo4 and demo5 with the LoRA side's first two frames dropped (the baseline's last two cut
    to keep the length), and a pair of two scenes whose lengths differ too."""
    for side in ("base", "lora"):
        (tmp_path / side).mkdir()
    for scene in ("demo4", "demo5"):
        write_video(tmp_path / "base" / f"{scene}.mp4", _frames(_base(scene))[:-2], fps=15)
        write_video(tmp_path / "lora" / f"{scene}.mp4", _frames(_lora(scene))[2:], fps=15)
    write_video(tmp_path / "base" / "other.mp4", _frames(_base("demo2")), fps=15)
    write_video(tmp_path / "lora" / "other.mp4", _frames(_lora("demo3"))[:20], fps=15)


def test_a_pair_with_a_dropped_first_frame_is_kept_and_a_shape_is_named_before_the_first_frames(tmp_path):
    """Failed before: demo4 and demo5 were left out ("first frames differ (15.x dB)"), and the pair
    of two lengths was named for its first frames, not for its lengths."""
    _offset_and_mismatched_sides(tmp_path)
    outcome = run_compare(tmp_path / "base", tmp_path / "lora", out_dir=tmp_path / "out", metrics=["psnr"])
    assert outcome.left_out == ("other",)
    (note,) = [n for n in outcome.notes if n.startswith("other:")]
    assert "not generated alike (baseline 180x320, 32 frames" in note and "LoRA 180x320, 20 frames" in note
    assert "; also, its first frames differ (" in note
    data = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert data["left_out_first_frames"] == {} and list(data["left_out_not_alike"]) == ["other"]
    assert {m["column"]: m["n"] for m in data["metrics"]}["psnr"] == 2


def test_a_missing_video_that_shifts_comfyui_counters_leaves_the_wrong_pairs_out(tmp_path, capsys):
    """Failed before: demo3 was compared with demo4 and every statistic counted it, with no note."""
    for i, scene in enumerate(("demo2", "demo3", "demo4"), 1):
        shutil.copy(_gif(_base(scene)), (tmp_path / "base").mkdir(exist_ok=True) or tmp_path / "base" / f"Wan_0000{i}_.gif")
    for i, scene in enumerate(("demo2", "demo4"), 1):  # demo3's LoRA video is missing
        shutil.copy(_gif(_lora(scene)), (tmp_path / "lora").mkdir(exist_ok=True) or tmp_path / "lora" / f"Wan_0000{i}_.gif")
    out = tmp_path / "report"
    assert main(["-q", "eval", "compare", str(tmp_path / "base"), str(tmp_path / "lora"), "-o", str(out),
                 "--metrics", "subject_drift", "psnr", "--jobs", "1"]) == 0
    captured = capsys.readouterr()
    assert "2 paired videos, 1 in the statistics (1 left out of every statistic" in captured.out
    assert "Wan_00002_: left out of every statistic: first frames differ (" in captured.err
    assert "not the same conditioning image; check the pairing (a missing video shifts ComfyUI's counters)" in captured.err
    data = json.loads((out / "compare.json").read_text())
    assert list(data["left_out_first_frames"]) == ["Wan_00002_"]
    assert {m["column"]: m["n"] for m in data["metrics"]}["psnr"] == 1
    # 6. the header counts what the statistics hold, and the unpaired video's sheet is linked
    html = (out / "report.html").read_text()
    assert "2 paired videos, 1 in the statistics" in html and "Left out of every statistic" in html
    assert "Unpaired videos" in html and "sheets/baseline/Wan_00003_.drift.png" in html
    assert (out / "sheets" / "baseline" / "Wan_00003_.drift.png").is_file()


def test_no_start_check_keeps_a_pair_whose_lora_changes_the_first_frame(tmp_path, capsys):
    """A LoRA that recolours the whole video, first frame included, reads as another scene; the
    user who knows the pairs are right can say so. Failed before: no such option."""
    for side in ("base", "lora"):
        (tmp_path / side).mkdir()
    frames = _frames(_base("demo2"))
    write_video(tmp_path / "base" / "demo2.mp4", frames, fps=15)
    write_video(tmp_path / "lora" / "demo2.mp4", 255 - frames, fps=15)  # a negative: nothing like the first frame
    common = [str(tmp_path / "base"), str(tmp_path / "lora"), "--metrics", "psnr", "--jobs", "1"]
    assert main(["-q", "eval", "compare", *common, "-o", str(tmp_path / "checked")]) == 0
    err = capsys.readouterr().err
    assert "demo2: left out of every statistic: first frames differ (" in err and "--no-start-check" in err
    assert main(["-q", "eval", "compare", *common, "-o", str(tmp_path / "names"), "--no-start-check"]) == 0
    captured = capsys.readouterr()
    assert "1 paired videos" in captured.out and "left out" not in captured.out
    assert "the first frames were not compared (--no-start-check)" in captured.err
    data = json.loads((tmp_path / "names" / "compare.json").read_text())
    assert data["left_out_first_frames"] == {} and {m["column"]: m["n"] for m in data["metrics"]}["psnr"] == 1


# -- 2. counters and time stamps in the names -----------------------------------------------------------------


@pytest.mark.parametrize("stem, key", [
    ("demo2_00001_", "demo2"), ("demo2_00003", "demo2"), ("demo2_base_00007_", "demo2"),
    ("i2v-A14B_832*480_1_a_car_on_a_road_20250801_101500", "i2v-A14B_832*480_1_a_car_on_a_road"),
    ("20250801-101500-123_42", "42"), ("20250801-101500-123_42_car", "42_car"),
    ("demo2", None), ("clip_2024", None), ("demo2_00012", "demo2"), ("i2v_1280*720_1_a_cat_20250801_101500",
                                                                    "i2v_1280*720_1_a_cat"),
    # a seed or a take number, a phone's or a camera's timestamp: the name's own
    ("demo_12345", None), ("scene_10000", None), ("VID_20240801_120000", None), ("clip_20240801_120000_lora", None)])
def test_name_key_removes_counters_and_timestamps(stem, key):
    from circle_rotate.eval.pairing import name_key

    assert name_key(stem) == key


def test_counters_and_timestamps_do_not_stop_the_pairing():
    """Failed before: "no video of the baseline has a namesake among the LoRA videos"."""
    pairs = pair_rows(_rows("demo2_00001_.mp4", "demo4_00002_.mp4"), _rows("demo2_00003_.mp4", "demo4_00004_.mp4"))
    assert sorted((p.baseline["video"], p.lora["video"]) for p in pairs) == [
        ("demo2_00001_.mp4", "demo2_00003_.mp4"), ("demo4_00002_.mp4", "demo4_00004_.mp4")]
    wan = pair_rows(_rows("i2v-A14B_832*480_1_a_cat_20250801_101500.mp4", "i2v-A14B_832*480_1_a_car_20250801_101900.mp4"),
                    _rows("i2v-A14B_832*480_1_a_car_20250802_090000.mp4", "i2v-A14B_832*480_1_a_cat_20250802_090400.mp4"))
    assert len(wan) == 2 and all(p.baseline["video"][19:24] == p.lora["video"][19:24] for p in wan)
    musubi = pair_rows(_rows("20250801-101500-123_42.mp4", "20250801-101900-456_43.mp4"),
                       _rows("20250802-090000-001_43.mp4", "20250802-090400-002_42.mp4"))
    assert sorted((p.baseline["video"][-6:], p.lora["video"][-6:]) for p in musubi) == [("42.mp4", "42.mp4"),
                                                                                       ("43.mp4", "43.mp4")]


def test_a_number_or_a_phone_timestamp_of_the_name_itself_pairs_nothing():
    """Failed before: demo_12345 paired with demo_22222, and two phone videos by 'VID'."""
    for base, lora in (("demo_12345.mp4", "demo_22222.mp4"), ("VID_20240801_120000.mp4", "VID_20240802_090000.mp4")):
        with pytest.raises(UserError, match="no video of the baseline has a namesake"):
            pair_rows(_rows(base), _rows(lora))


def test_a_pair_by_timestamp_is_not_blamed_on_comfyui_counters(tmp_path):
    """Failed before: the note said "a missing video shifts ComfyUI's counters" of Wan's names."""
    from circle_rotate.eval.pairing import different_starts

    stems = ("i2v-A14B_832*480_1_a_cat_20250801_101500", "i2v-A14B_832*480_1_a_cat_20250802_090000")
    rows = []
    for stem, name in zip(stems, (_base("demo2"), _lora("demo3"))):
        shutil.copy(_gif(name), tmp_path / f"{stem}.gif")
        rows.append([{"video": f"{stem}.gif", "path": str(tmp_path / f"{stem}.gif"), "status": "ok"}])
    ((pair, why),), unchecked = different_starts(pair_rows(*rows))
    assert pair.name == "i2v-A14B_832*480_1_a_cat" and not unchecked
    assert why.endswith("check the pairing (paired because the names without their counter or timestamp agree)")


def test_a_key_two_videos_of_a_side_share_pairs_nothing_and_is_named(tmp_path):
    with pytest.raises(UserError, match="counter"):
        pair_rows(_rows("cat_00001_.mp4", "cat_00002_.mp4"), _rows("cat_00003_.mp4"))
    for name, side in (("cat_00001_.gif", "base"), ("cat_00002_.gif", "base"), ("demo2_00003_.gif", "base"),
                       ("cat_00004_.gif", "lora"), ("demo2_00005_.gif", "lora")):
        (tmp_path / side).mkdir(exist_ok=True)
        scene = "demo2" if name.startswith("demo2") else "cat"
        shutil.copy(_gif(_base(scene) if side == "base" else _lora(scene)), tmp_path / side / name)
    outcome = run_compare(tmp_path / "base", tmp_path / "lora", out_dir=tmp_path / "out", metrics=["psnr"])
    assert [(p.baseline["video"], p.lora["video"]) for p in outcome.pairs] == [("demo2_00003_.gif", "demo2_00005_.gif")]
    assert any(n.startswith("cat_00001_.gif: no namesake") and "('cat') is shared by" in n for n in outcome.notes)
    assert not outcome.left_out


# -- 3. a boxes file that names more videos than are given -----------------------------------------------------


def test_a_boxes_file_naming_other_videos_too_is_used_and_its_unused_keys_noted(tmp_path, capsys):
    """Failed before: both commands exited 2, "key(s) name no video given"."""
    labels = json.loads((_gif("demo2_base").parent / "boxes.json").read_text())["videos"]
    for side, name in (("base", "demo2_base"), ("lora", "demo2_ours")):
        (tmp_path / side).mkdir()
        shutil.copy(_gif(name), tmp_path / side)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({f"{k}.gif": labels[k]["boxes"]["0"] for k in ("demo2_base", "demo2_ours", "demo3_base")}))
    assert main(["-q", "eval", "compare", str(tmp_path / "base"), str(tmp_path / "lora"), "--subject-boxes", str(boxes),
                 "-o", str(tmp_path / "r"), "--metrics", "subject_drift", "--jobs", "1"]) == 0
    data = json.loads((tmp_path / "r" / "compare.json").read_text())
    assert [r["subject_found_by"] for r in data["baseline_videos"] + data["lora_videos"]] == ["user_box", "user_box"]
    assert any("1 key(s) name no video given" in n and "'demo3_base.gif'" in n for n in data["notes"])
    capsys.readouterr()
    out = tmp_path / "one.json"
    assert main(["-q", "eval", str(tmp_path / "base" / "demo2_base.gif"), "--subject-boxes", str(REAL / "boxes.json"),
                 "-o", str(out), "--metrics", "subject_drift"]) == 0
    assert "key(s) name no video given, so their boxes are not used" in capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["videos"][0]["subject_found_by"] == "user_box" and "demo3_ours" in result["notes"][0]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"nothing.gif": [1, 1, 50, 50]}))
    assert main(["-q", "eval", str(tmp_path / "base"), "--subject-boxes", str(other)]) == 2
    assert "no --subject-boxes key names a video given" in capsys.readouterr().err


# -- 4. ping-pong --------------------------------------------------------------------------------------------------


def test_a_ping_pong_video_is_measured_on_its_first_half(tmp_path):
    """Failed before: the whole clip was read (102 frames, no note); its PSNR compared the first
    frame with itself."""
    from circle_rotate.eval.runner import evaluate

    frames = _frames("demo1_base")
    write_video(tmp_path / "forward.mp4", frames, fps=16)
    write_video(tmp_path / "pingpong.mp4", np.concatenate([frames, frames[::-1]]), fps=16)  # FFmpeg reverse + concat
    write_video(tmp_path / "vhs.mp4", np.concatenate([frames, frames[-2:0:-1]]), fps=16)  # VideoHelperSuite
    rows = {r["video"]: r for r in evaluate([tmp_path], metrics=["psnr", "orbit"]).rows}
    note = "a ping-pong video (played forward then back): measured on its first half"
    assert not any(note in n for n in rows["forward.mp4"]["notes"])
    for name in ("pingpong.mp4", "vhs.mp4"):
        assert rows[name]["frames"] == len(frames) and any(note in n for n in rows[name]["notes"])
        assert rows[name]["psnr"] == pytest.approx(rows["forward.mp4"]["psnr"], abs=0.5)
        assert rows[name]["orbit_direction"] == rows["forward.mp4"]["orbit_direction"]


@pytest.mark.parametrize("scene", SCENES)
def test_no_real_video_reads_as_ping_pong(scene):
    from circle_rotate.eval.pingpong import pingpong_length

    for name in (_base(scene), _lora(scene)):
        grey = _frames(name).mean(axis=3).astype(np.uint8)
        assert pingpong_length(grey) is None
        assert pingpong_length(np.concatenate([grey, grey[::-1]])) == len(grey)
    assert pingpong_length(np.repeat(grey[:1], 12, axis=0)) is None  # a still clip mirrors itself trivially


def test_a_full_turn_played_forward_and_back_is_ping_pong(tmp_path):
    """Failed before: at 360 degrees the turn frame is the first one again, which read as a still
    clip (300 and 330 degrees were found)."""
    import cv2

    from circle_rotate.eval.pingpong import pingpong_length
    from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, render_frames

    spec = TurntableSpec(width=256, height=160, frames=49, total_angle_deg=360)
    write_video(tmp_path / "turn.mp4", np.stack([r.image for r in render_frames(spec)]), fps=16)
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in decode_all(tmp_path / "turn.mp4")[0]])
    assert pingpong_length(grey) is None  # once round
    assert pingpong_length(np.concatenate([grey, grey[-2:0:-1]])) == len(grey)
    assert pingpong_length(np.concatenate([grey, grey[::-1]])) == len(grey)


# -- 5. too few frames, or frames too far apart ----------------------------------------------------------------


def test_an_orbit_read_from_few_or_far_apart_frames_is_not_trusted(tmp_path):
    """Failed before: confidence 1.0 on 3 frames."""
    from circle_rotate.eval.runner import evaluate

    frames = _frames("demo1_base")
    write_video(tmp_path / "three.mp4", frames[[0, 12, 24]], fps=16)
    write_video(tmp_path / "whole.mp4", frames, fps=16)
    rows = {r["video"]: r for r in evaluate([tmp_path], metrics=["orbit"]).rows}
    assert rows["three.mp4"]["orbit_confidence"] <= 0.25
    assert any("only 3 distinct frame(s)" in n for n in rows["three.mp4"]["notes"])
    assert rows["whole.mp4"]["orbit_confidence"] > 0.5 and not any("capped" in n for n in rows["whole.mp4"]["notes"])


def test_the_cap_holds_for_implausible_motion_per_frame():
    from circle_rotate.eval.orbit_metrics import distinct_frames, doubt

    still = np.zeros((6, 32, 32), np.uint8)
    still[1::2] = 40  # two frames alternating: six frames, all new
    assert distinct_frames(still) == 6 and distinct_frames(np.repeat(still[:3], 2, axis=0)) == 3
    assert doubt(6, 1.0) is None and "degrees a frame" in doubt(6, 13.2) and "distinct" in doubt(3, 1.0)


# -- 7. the CSV opens in Excel ----------------------------------------------------------------------------------


def test_the_csv_starts_with_a_byte_order_mark_and_reads_back(tmp_path):
    """Failed before: no BOM, so Excel read 动画.gif in the machine's code page."""
    shutil.copy(_gif("demo2_base"), tmp_path / "动画.gif")
    out = tmp_path / "r.json"
    assert main(["-q", "eval", str(tmp_path / "动画.gif"), "-o", str(out), "--csv", "--metrics", "psnr"]) == 0
    raw = out.with_suffix(".csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    with open(out.with_suffix(".csv"), encoding="utf-8-sig", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["video"] == "动画.gif" and float(row["psnr"]) == pytest.approx(json.loads(out.read_text())["videos"][0]["psnr"])


# -- 8. a path that is not there, an MP4 cut off before its index ----------------------------------------------


def test_a_missing_path_is_a_usage_error_naming_it(tmp_path, capsys):
    """Failed before: exit 1, "1 of 1 videos could not be evaluated"."""
    missing = tmp_path / "nope.mp4"
    assert main(["-q", "eval", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0] and "not found" in err[0]


def test_a_cut_off_mp4_error_names_the_path_first_without_errno(tmp_path):
    """Failed before: "cannot be opened as a video (InvalidDataError: [Errno 1094995529] ...: '<path>')"."""
    from circle_rotate.eval.runner import evaluate

    write_video(tmp_path / "full.mp4", _frames("demo2_base"), fps=16)
    data = (tmp_path / "full.mp4").read_bytes()
    assert data.find(b"moov") > data.find(b"mdat")  # not faststart: the index is at the end
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    (row,) = evaluate([cut], metrics=["psnr"]).rows
    assert row["status"] == "error" and row["error"].startswith(f"{cut}: ") and "Errno" not in row["error"]
    assert row["error"].count(str(cut)) == 1


def test_left_out_pairs_are_not_in_the_figures_or_the_statistics():
    from circle_rotate.eval.compare import compare_pairs

    pairs = [Pair(f"v{i}", {"psnr": 30.0 + i}, {"psnr": 31.0 + i}) for i in range(4)]
    got = {c.column: c for c in compare_pairs(pairs, left_out=pairs[:1])}
    assert got["psnr"].n == 3


# -- 9. names alike in other Unicode forms, results read from another folder -----------------------------------


def test_names_that_differ_only_in_their_unicode_form_pair():
    """Failed before: macOS writes names decomposed (NFD), so "Müller_café.mp4: no namesake on the
    other side", twice."""
    import unicodedata

    nfc, nfd = (unicodedata.normalize(form, "Müller_café") for form in ("NFC", "NFD"))
    assert nfc != nfd
    pairs = pair_rows(_rows(f"{nfc}.mp4", "b.mp4"), _rows(f"{nfd}.mp4", "b.mp4"))
    assert sorted((p.name, p.lora["video"]) for p in pairs) == [(nfc, f"{nfd}.mp4"), ("b", "b.mp4")]
    # a stem twice on a side pairs by the whole file name, and a counter is passed over, in either form
    pairs = pair_rows(_rows(f"{nfc}.mp4", f"{nfc}.gif"), _rows(f"{nfd}.gif", f"{nfd}.mp4"))
    assert sorted((p.baseline["video"], p.lora["video"]) for p in pairs) == [(f"{nfc}.gif", f"{nfd}.gif"),
                                                                              (f"{nfc}.mp4", f"{nfd}.mp4")]
    pairs = pair_rows(_rows(f"{nfc}_00001_.mp4"), _rows(f"{nfd}_00003_.mp4"))
    assert [p.name for p in pairs] == [nfc]


def _two_runs_in_two_folders(tmp_path: Path, monkeypatch) -> Path:
    """``cd X && eval outputs -o ../x.json``, and the same in Y: the probe's two runs, each on a
    folder named outputs of its own."""
    from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, write_turntable

    video = write_turntable(TurntableSpec(name="v", width=64, height=48, frames=9), tmp_path).video
    for side in ("X", "Y"):
        (tmp_path / side / "outputs").mkdir(parents=True)
        shutil.copy(video, tmp_path / side / "outputs" / "demo1.mp4")
        monkeypatch.chdir(tmp_path / side)
        assert main(["-q", "eval", "outputs", "--metrics", "psnr", "-o", f"../{side.lower()}.json"]) == 0
    return tmp_path


def test_results_made_in_two_folders_on_same_named_subfolders_compare(tmp_path, monkeypatch, capsys):
    """Failed before: both stored outputs/demo1.mp4, and compare, reading both against its own
    folder, refused: "both sides are the same videos (their paths agree)"."""
    root = _two_runs_in_two_folders(tmp_path, monkeypatch)
    monkeypatch.chdir(root)
    capsys.readouterr()
    assert main(["-q", "eval", "compare", "x.json", "y.json", "-o", "rep"]) == 0
    summary = json.loads((root / "rep" / "compare.json").read_text())
    assert summary["pairs"] == ["demo1"]
    assert [Path(r["path"]) for r in summary["baseline_videos"] + summary["lora_videos"]] == [
        root / "X" / "outputs" / "demo1.mp4", root / "Y" / "outputs" / "demo1.mp4"]
    assert not any("first frames were not compared" in n for n in summary["notes"])  # each side's own files


def test_relative_paths_of_older_results_files_are_read_beside_them_then_here(tmp_path, monkeypatch, capsys):
    """Older results files hold paths relative to the folder their run started in. Found beside the
    file (or here, marked as a guess) they are read there; found nowhere, they name no video, and
    two such files are not "the same videos". Failed before: compare refused them as the same."""
    from circle_rotate.eval.results_io import read_results

    (tmp_path / "res" / "outputs").mkdir(parents=True)
    (tmp_path / "res" / "outputs" / "beside.gif").write_bytes(b"x")
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "here.gif").write_bytes(b"x")
    rows = [{"video": n, "path": f"outputs/{n}", "status": "ok"} for n in ("beside.gif", "here.gif", "gone.gif")]
    rows.append({"video": "abs.gif", "path": "/elsewhere/abs.gif", "status": "ok"})
    (tmp_path / "res" / "r.json").write_text(json.dumps({"videos": rows}))
    monkeypatch.chdir(tmp_path)
    beside, here, gone, absolute = read_results("res/r.json")
    assert beside["path"] == str(tmp_path / "res" / "outputs" / "beside.gif") and "path_guessed" not in beside
    assert here["path"] == str(tmp_path / "outputs" / "here.gif") and here["path_guessed"] is True
    assert gone["path"] is None and gone["path_unresolved"] == "outputs/gone.gif"
    assert absolute["path"] == "/elsewhere/abs.gif"  # as written, there or not

    # two older files whose outputs/demo1.gif are found nowhere: compared, the first frames unchecked
    for side, psnr in (("x", 30.0), ("y", 32.0)):
        (tmp_path / "rj").mkdir(exist_ok=True)
        (tmp_path / "rj" / f"{side}.json").write_text(json.dumps({"videos": [
            {"video": "demo1.gif", "path": "outputs/demo1.gif", "status": "ok", "psnr": psnr}]}))
    capsys.readouterr()
    assert main(["-q", "eval", "compare", "rj/x.json", "rj/y.json", "-o", "rep"]) == 0, capsys.readouterr().err
    notes = json.loads((tmp_path / "rep" / "compare.json").read_text())["notes"]
    assert any("the first frames were not compared (the videos cannot be read where the results say)" in n
               for n in notes), notes
