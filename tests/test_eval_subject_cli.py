"""``circle-rotate eval``'s subject flags: --subject-box / --subject-mask / --subject-boxes and --save-masks."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from circle_rotate.cli.main import main
from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, load_masks, write_turntable


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("subject_cli")
    files = write_turntable(TurntableSpec(name="orbit", width=256, height=160, frames=21, subject="box", seed=4), d)
    return files.video, load_masks(files.masks)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize("box", ["10,20,5,40", "1,2,3", "a,b,c,d", "nan,1,2,3", "0,0,inf,40"])
def test_a_bad_box_is_one_line_and_exit_2(clip, box, capsys):
    assert main(["-q", "eval", str(clip[0]), f"--subject-box={box}"]) == 2
    line = _error_line(capsys)
    assert "--subject-box" in line and "fix:" in line


def test_a_boxes_file_without_frame_0_names_the_file_and_key(clip, tmp_path, capsys):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"orbit.mp4": {"boxes": {"5": [1, 2, 30, 40]}}}))
    assert main(["-q", "eval", str(clip[0]), "--subject-boxes", str(boxes)]) == 2
    line = _error_line(capsys)
    assert str(boxes) in line and "'orbit.mp4'" in line and "frame 0" in line


def test_a_mask_of_another_size_is_an_error_row_naming_the_video(clip, tmp_path, capsys):
    mask = tmp_path / "mask.png"
    cv2.imwrite(str(mask), np.full((50, 60), 255, np.uint8))
    assert main(["-q", "eval", str(clip[0]), "--subject-mask", str(mask), "--metrics", "subject_drift"]) == 1
    assert "60x50" in capsys.readouterr().out


@pytest.mark.parametrize("box, problem", [
    ("300,10,400,100", "the box 300,10,400,100 lies outside the 256x160 frame"),
    ("0,0,10000,10000", "the box 0,0,10000,10000 reaches past the 256x160 frame"),
    ("60,70,300,170", "the box 60,70,300,170 reaches past the 256x160 frame"),  # another orientation's pixels
    ("0,0,1,1", "the box 0,0,1,1 is under 8 pixels a side"),
    ("250,0,256,5", "the box 250,0,256,5 is under 8 pixels a side"),
])
def test_a_box_that_does_not_fit_the_frame_is_an_error_row_saying_so(clip, box, problem, capsys):
    assert main(["-q", "eval", str(clip[0]), f"--subject-box={box}", "--metrics", "subject_drift"]) == 1
    out = capsys.readouterr().out
    assert problem in out and "(256x160, as displayed)" in out


def test_a_box_a_little_past_the_edge_is_cut_off_and_read(clip, capsys):
    video, truth = clip
    ys, xs = np.nonzero(truth[0])
    assert main(["-q", "eval", str(video), "--metrics", "subject_drift",
                 f"--subject-box={xs.min()},{ys.min()},{xs.max() + 1},{ys.max() + 1 + 4}"]) == 0  # 4 px under the frame


def test_a_mask_reads_the_same_from_a_jpeg_or_a_cut_out_and_an_inverted_one_is_refused(clip, tmp_path, capsys):
    """The true first-frame mask as a PNG, as a JPEG (faint pixels around it), and as a background
    remover's cut-out (the frame's colours, the subject in the alpha channel): one reading."""
    from circle_rotate.kernel.video_io import read_video

    video, truth = clip
    first = cv2.cvtColor(read_video(video)[0], cv2.COLOR_RGB2BGR)
    white = np.where(truth[0], 255, 0).astype(np.uint8)
    files = {"png": tmp_path / "m.png", "jpeg": tmp_path / "m.jpg", "cutout": tmp_path / "cut.png"}
    cv2.imwrite(str(files["png"]), white)
    cv2.imwrite(str(files["jpeg"]), cv2.GaussianBlur(white, (5, 5), 0), [cv2.IMWRITE_JPEG_QUALITY, 70])
    cv2.imwrite(str(files["cutout"]), np.dstack([first, white]))
    drifts = {}
    for kind, path in files.items():
        out = tmp_path / f"{kind}.json"
        assert main(["-q", "eval", str(video), "--subject-mask", str(path), "--metrics", "subject_drift",
                     "-o", str(out)]) == 0
        drifts[kind] = json.loads(out.read_text())["videos"][0]["drift"]
    assert drifts["jpeg"] == pytest.approx(drifts["png"], abs=0.3) and drifts["cutout"] == pytest.approx(drifts["png"])
    inverted = tmp_path / "inverted.png"
    cv2.imwrite(str(inverted), 255 - white)
    assert main(["-q", "eval", str(video), "--subject-mask", str(inverted), "--metrics", "subject_drift"]) == 2
    line = _error_line(capsys)
    assert "of the image's border: its background is painted" in line and "invert it" in line


def test_a_mask_of_the_whole_frame_is_refused(clip, tmp_path, capsys):
    mask = tmp_path / "all.png"
    cv2.imwrite(str(mask), np.full((160, 256), 255, np.uint8))
    assert main(["-q", "eval", str(clip[0]), "--subject-mask", str(mask), "--metrics", "subject_drift"]) == 1
    assert "the subject mask covers 100% of the frame: its centroid cannot move" in capsys.readouterr().out


def test_a_mask_under_8_pixels_across_a_later_frames_bad_box_and_a_repeated_key_are_named(clip, tmp_path, capsys):
    mask = tmp_path / "dot.png"
    image = np.zeros((160, 256), np.uint8)
    image[40:44, 50:54] = 255
    cv2.imwrite(str(mask), image)
    assert main(["-q", "eval", str(clip[0]), "--subject-mask", str(mask), "--metrics", "subject_drift"]) == 1
    assert "the subject mask is under 8 pixels across" in capsys.readouterr().out
    later = tmp_path / "later.json"
    later.write_text(json.dumps({"orbit.mp4": {"boxes": {"0": [40, 40, 120, 120], "8": [300, 20, 400, 80]}}}))
    assert main(["-q", "eval", str(clip[0]), "--subject-boxes", str(later), "--metrics", "subject_drift"]) == 1
    assert "the box 300,20,400,80 of frame 8 lies outside the 256x160 frame" in capsys.readouterr().out
    twice = tmp_path / "twice.json"
    twice.write_text('{"orbit.mp4": [40, 20, 120, 80], "orbit.mp4": [0, 0, 50, 50]}')
    assert main(["-q", "eval", str(clip[0]), "--subject-boxes", str(twice)]) == 2
    assert "key 'orbit.mp4' appears twice" in _error_line(capsys)


def test_boxes_keyed_by_no_video_given_are_refused_and_a_video_named_twice_is_one_row(clip, tmp_path, capsys):
    boxes = tmp_path / "boxes.json"
    # a labelled set's file names more videos than one run is given: their keys are noted, not refused
    boxes.write_text(json.dumps({"orbit.mp4": [40, 40, 120, 120], "nomatch.mp4": [1, 2, 30, 40]}))
    assert main(["-q", "eval", str(clip[0]), "--subject-boxes", str(boxes), "--metrics", "motion"]) == 0
    assert "1 key(s) name no video given, so their boxes are not used: 'nomatch.mp4'" in capsys.readouterr().err
    boxes.write_text(json.dumps({"nomatch.mp4": [1, 2, 30, 40]}))
    assert main(["-q", "eval", str(clip[0]), "--subject-boxes", str(boxes)]) == 2
    assert "no --subject-boxes key names a video given (1 key(s): 'nomatch.mp4')" in _error_line(capsys)
    out = tmp_path / "r.json"
    assert main(["-q", "eval", str(clip[0]), str(clip[0].parent / "." / clip[0].name), "--metrics", "motion",
                 "-o", str(out)]) == 0
    assert len(json.loads(out.read_text())["videos"]) == 1


def test_save_masks_writes_the_masks_and_the_contact_sheet(clip, tmp_path, capsys):
    video, truth = clip
    ys, xs = np.nonzero(truth[0])
    out, masks = tmp_path / "results.json", tmp_path / "masks"
    assert main(["-q", "eval", str(video), "--metrics", "subject_drift", "--out", str(out), "--save-masks", str(masks),
                 f"--subject-box={xs.min()},{ys.min()},{xs.max() + 1},{ys.max() + 1}"]) == 0
    row = json.loads(out.read_text())["videos"][0]
    series = row["series"]["subject_drift"]
    files = sorted((masks / "orbit").glob("frame_*.png"))
    assert [int(f.stem[6:]) for f in files] == sorted(set(series["frames"]))
    for k, i in enumerate(series["frames"]):
        m = cv2.imread(str(masks / "orbit" / f"frame_{i:04d}.png"), cv2.IMREAD_GRAYSCALE) > 0
        assert m.sum() == series["mask_area"][k]
        # the user's box was followed: the mask overlaps the true subject
        assert (m & truth[i]).sum() >= 0.6 * m.sum()
    sheet = cv2.imread(row["contact_sheet"])
    assert row["contact_sheet"] == str(masks / "orbit.drift.png") and sheet.shape[0] > 200
    assert row["subject_found_by"] == "user_box"
    # a given subject's centroid is the mean of two passes: both outlines are drawn (BGR)
    orange, green = (sheet == (0, 64, 255)).all(-1).sum(), (sheet == (64, 255, 64)).all(-1).sum()
    assert orange > 100 and green > 100, (orange, green)


def test_each_tile_is_numbered_as_its_frame_in_the_video():
    """A box drawn on a later frame is keyed by the frame's number in the video, so the contact
    sheet writes that number on each tile, not the tile's place in the row."""
    from circle_rotate.eval.contact_sheet import TILE, contact_sheet

    frames = [np.zeros((TILE, TILE, 3), np.uint8)] * 2
    mask = np.zeros((TILE, TILE), bool)
    mask[200:220, 200:220] = True
    centroids = np.array([[210.0, 210.0], [210.0, 210.0]])
    sheet = contact_sheet(frames, [mask, mask], centroids, numbers=[0, 20], columns=2)
    expected = np.zeros((TILE, TILE, 3), np.uint8)
    cv2.putText(expected, "20", (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    assert (sheet[:20, TILE:TILE + 40] == expected[:20, :40]).all()
    by_order = contact_sheet(frames, [mask, mask], centroids, columns=2)
    assert not (by_order[:20, TILE:TILE + 40] == expected[:20, :40]).all()


def test_save_masks_into_an_earlier_runs_folder_needs_force_and_leaves_no_stale_frame(clip, tmp_path, capsys):
    masks = tmp_path / "masks"
    args = ["-q", "eval", str(clip[0]), "--metrics", "subject_drift", "--save-masks", str(masks)]
    assert main(args) == 0
    stale = masks / "orbit" / "frame_9999.png"  # as a run sampling other frames would have left
    stale.write_bytes(sorted((masks / "orbit").glob("frame_*.png"))[0].read_bytes())
    (masks / "orbit" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # Finder's, in any folder it shows
    assert main(args) == 2
    assert "already holds the contact sheets and masks of an earlier run" in _error_line(capsys)
    assert main([*args, "--force"]) == 0
    assert not stale.exists() and list((masks / "orbit").glob("frame_*.png"))


def test_save_masks_never_overwrites_or_removes_files_it_did_not_write(clip, tmp_path, capsys):
    """The video's own frames extracted to masks/orbit/ under the names the masks take."""
    from circle_rotate.kernel.video_io import read_video

    masks = tmp_path / "masks"
    (masks / "orbit").mkdir(parents=True)
    frames = read_video(clip[0])
    for i, f in enumerate(frames):
        cv2.imwrite(str(masks / "orbit" / f"frame_{i:04d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    before = {p.name: p.read_bytes() for p in (masks / "orbit").iterdir()}
    for extra in ([], ["--force"]):  # --force replaces eval's own outputs, never these
        assert main(["-q", "eval", str(clip[0]), "--metrics", "subject_drift", "--save-masks", str(masks), *extra]) == 2
        line = _error_line(capsys)
        assert "which holds files eval did not write (first: frame_0000.png)" in line and "another --save-masks" in line
        assert {p.name: p.read_bytes() for p in (masks / "orbit").iterdir()} == before
        assert not (masks / "orbit.drift.png").exists()


def test_save_masks_where_nothing_can_be_written_is_refused_before_the_work(clip, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert main(["-q", "eval", str(clip[0]), "--metrics", "subject_drift", "--save-masks", str(blocker / "sub")]) == 2
    line = _error_line(capsys)
    assert "afile/sub: cannot write here" in line and "afile is a file, not a folder" in line


def test_a_boxes_key_naming_two_videos_given_is_refused(clip, tmp_path, capsys):
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    shutil.copy(clip[0], a / "orbit.mp4")
    shutil.copy(clip[0], b / "orbit.mp4")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"orbit.mp4": [40, 40, 120, 120]}))
    assert main(["-q", "eval", str(a), str(b), "--subject-boxes", str(boxes)]) == 2
    assert "--subject-boxes key 'orbit.mp4' names 2 videos given" in _error_line(capsys)
