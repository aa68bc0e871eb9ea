"""Boxes drawn on several frames bound the subject's mask: the interpolation, the bound, how a
labelled set's JSON is read, and a clip whose subject the first box alone does not keep apart
from a patch of its colour that grows against it (the truth: the subject never moves)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from circle_rotate.cli.main import main
from circle_rotate.eval.drift import drift_of
from circle_rotate.eval.frames import sample_indices
from circle_rotate.eval.boxes import grown
from circle_rotate.eval.keyframe_boxes import LEAST_MARGIN, MARGIN, bound_at, box_at, margin_at, outside
from circle_rotate.eval.subject_hints import read_boxes
from circle_rotate.eval.subject_mask import SubjectHint, segment_subject
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.video_io import write_video

from test_subject_track import H, W, _flows, _texture


def test_a_box_between_two_labelled_frames_is_interpolated_corner_by_corner():
    boxes = {0: (0.0, 0.0, 10.0, 10.0), 10: (10.0, 20.0, 30.0, 30.0)}
    assert box_at(boxes, 0) == (0.0, 0.0, 10.0, 10.0)
    assert box_at(boxes, 10) == (10.0, 20.0, 30.0, 30.0)
    assert box_at(boxes, 5) == pytest.approx((5.0, 10.0, 20.0, 20.0))
    assert box_at(boxes, 8) == pytest.approx((8.0, 16.0, 26.0, 26.0))
    # before the first and after the last labelled frame nothing is assumed
    assert box_at(boxes, -1) is None and box_at(boxes, 11) is None
    assert box_at({4: (1.0, 2.0, 3.0, 4.0)}, 4) == (1.0, 2.0, 3.0, 4.0)


def test_the_bound_is_the_box_grown_by_the_margin_on_every_side():
    box = (10.0, 10.0, 30.0, 20.0)
    assert grown(box, 0.1) == pytest.approx((8.0, 9.0, 32.0, 21.0))
    out = outside(grown(box, 0.1), (40, 50))
    assert out.shape == (40, 50)
    rows, cols = np.nonzero(~out)
    # pixel centres within x 8..32 and y 9..21: columns 8..31, rows 9..20
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (8, 31, 9, 20)
    assert (~out).sum() == 24 * 12


def test_the_margin_is_least_on_a_labelled_frame_and_most_halfway_between():
    labelled = [0, 10, 20]
    assert margin_at(labelled, 0) == pytest.approx(LEAST_MARGIN)
    assert margin_at(labelled, 10) == pytest.approx(LEAST_MARGIN)
    assert margin_at(labelled, 5) == pytest.approx(MARGIN)
    assert margin_at(labelled, 15) == pytest.approx(MARGIN)
    assert margin_at(labelled, 2) == pytest.approx(LEAST_MARGIN + (MARGIN - LEAST_MARGIN) * 0.4)
    assert margin_at([4], 4) == pytest.approx(LEAST_MARGIN)
    box = (10.0, 10.0, 30.0, 20.0)
    drawn = {0: box, 10: box}
    assert bound_at(drawn, 0) == pytest.approx(grown(box, LEAST_MARGIN))
    assert bound_at(drawn, 5) == pytest.approx(grown(box, MARGIN))
    assert bound_at(drawn, 11) is None


def test_a_labelled_sets_later_boxes_are_read_in_frame_order(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"videos": {"a.gif": {"boxes": {"24": [2, 3, 12, 13], "0": [0, 1, 10, 11],
                                                               "12": [1, 2, 11, 12]}, "box_centre_drift": 1.4},
                                           "b.mp4": [5, 5, 50, 50]}}))
    hints = read_boxes(path)
    assert hints["a.gif"].box == (0, 1, 10, 11)
    assert hints["a.gif"].later_boxes == ((12, (1, 2, 11, 12)), (24, (2, 3, 12, 13)))
    assert hints["b.mp4"].box == (5, 5, 50, 50) and hints["b.mp4"].later_boxes == ()


@pytest.mark.parametrize("boxes, words", [
    ({"0": [0, 1, 10, 11], "12": [1, 2, 11]}, ["'a.gif', frame 12", "on frame 12"]),
    ({"0": [0, 1, 10, 11], "12": [11, 2, 1, 12]}, ["frame 12", "x1 > x0"]),
    ({"0": [0, 1, 10, 11], "twelve": [1, 2, 11, 12]}, ["'twelve' is not a frame number"]),
    ({"5": [0, 1, 10, 11], "12": [1, 2, 11, 12]}, ["first labelled frame is 5"]),
])
def test_a_bad_later_box_is_refused_naming_the_video_and_the_frame(tmp_path, boxes, words):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"a.gif": {"boxes": boxes}}))
    with pytest.raises(UserError) as err:
        read_boxes(path)
    message = str(err.value)
    assert "\n" not in message and "fix:" in message and "boxes.json" in message
    for w in words:
        assert w in message


def _clip(frames: int = 25, *, grow: int = 40):
    """A textured red block that holds still while the greenish backdrop slides past, and a flat
    patch of the block's colour growing from nothing to ``grow`` px against its left side: no
    texture for the flow to part it from the block, the block's colours for the cut. The truth
    masks (the block alone)."""
    back = _texture(H, W + 3 * frames + 8, 1, (60, 160, 70))
    block = _texture(60, 70, 2, (200, 60, 50))
    rng = np.random.default_rng(5)
    x0, y0 = 100, 70
    out, truth = [], []
    for t in range(frames):
        f = back[:, 3 * t:3 * t + W].copy()
        width = int(round(grow * t / (frames - 1)))
        if width:
            f[y0:y0 + 60, x0 - width:x0] = np.clip(np.array([200, 60, 50]) + rng.normal(0, 4, (60, width, 3)), 0, 255)
        f[y0:y0 + 60, x0:x0 + 70] = block
        m = np.zeros((H, W), bool)
        m[y0:y0 + 60, x0:x0 + 70] = True
        out.append(f)
        truth.append(m)
    return np.stack(out), np.stack(truth)


def _box(mask):
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def test_later_boxes_keep_the_mask_from_a_patch_of_the_subjects_colour():
    frames, truth = _clip()
    idx, flows = sample_indices(len(frames)), _flows(frames)
    labelled = np.linspace(0, len(frames) - 1, 5).astype(int)
    first = SubjectHint(box=_box(truth[0]))
    every = SubjectHint(box=_box(truth[0]), later_boxes=tuple((int(k), _box(truth[k])) for k in labelled[1:]))

    alone = segment_subject(frames, idx, flows, hint=first)
    # the first box alone: the cut takes the growing patch in and the centroid walks left (measured 6.3 px)
    assert drift_of(alone.centroids()) > 4.0
    assert alone.bounds == ()

    bound = segment_subject(frames, idx, flows, hint=every)
    # the block never moves (truth 0): with every box the mask may take in only the margin (measured 0.9 px)
    assert drift_of(bound.centroids()) < 2.0
    assert len(bound.bounds) == len(idx)
    widest, tightest = grown(_box(truth[0]), MARGIN), grown(_box(truth[0]), LEAST_MARGIN)
    for mask, b in zip(bound.masks, bound.bounds):
        # the block's box is the same on every frame, and only the margin changes
        assert widest[0] <= b[0] <= tightest[0] and widest[1] <= b[1] <= tightest[1]
        assert tightest[2] <= b[2] <= widest[2] and tightest[3] <= b[3] <= widest[3]
        assert not (mask & outside(b, mask.shape)).any()


def test_eval_takes_later_boxes_from_the_json_and_draws_the_bound(tmp_path, capsys):
    frames, truth = _clip()
    video = tmp_path / "patch.mp4"
    write_video(video, frames, fps=16)
    labelled = np.linspace(0, len(frames) - 1, 5).astype(int)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"patch.mp4": {"boxes": {str(int(k)): list(_box(truth[k])) for k in labelled}}}))
    out = tmp_path / "r.json"
    assert main(["-q", "eval", str(video), "--metrics", "subject_drift", "--subject-boxes", str(boxes),
                 "--save-masks", str(tmp_path / "masks"), "-o", str(out)]) == 0
    row = json.loads(out.read_text())["videos"][0]
    assert row["drift"] < 2.0 and row["subject_found_by"] == "user_box"
    sheet = cv2.cvtColor(cv2.imread(str(tmp_path / "masks" / "patch.drift.png")), cv2.COLOR_BGR2RGB)
    # the first tile (1:1 here, under an 18 px title band) has the bound's top edge in white
    x0, y0, x1, _ = (int(round(v)) for v in grown(_box(truth[0]), LEAST_MARGIN))  # frame 0 is labelled
    assert (sheet[18 + y0, x0:x1 + 1] == 255).all()

    boxes.write_text(json.dumps({"patch.mp4": {"boxes": {"0": list(_box(truth[0])), "80": list(_box(truth[0]))}}}))
    assert main(["-q", "eval", str(video), "--metrics", "subject_drift", "--subject-boxes", str(boxes),
                 "-o", str(tmp_path / "bad.json")]) == 1
    err = capsys.readouterr().err
    assert "frame 80" in err and "25 frames" in err and "fix:" in err


def test_compare_refuses_later_boxes_that_one_side_would_lend_the_other(tmp_path, capsys):
    frames, truth = _clip(frames=9)
    for side in ("base", "lora"):
        (tmp_path / side).mkdir()
        write_video(tmp_path / side / "patch.mp4", frames, fps=16)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"patch.mp4": {"boxes": {"0": list(_box(truth[0])), "8": list(_box(truth[8]))}}}))
    report = tmp_path / "report"
    assert main(["eval", "compare", str(tmp_path / "base"), str(tmp_path / "lora"), "-o", str(report),
                 "--subject-boxes", str(boxes)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'patch.mp4'" in err[0] and "later frames" in err[0] and "eval run" in err[0]
    assert not report.exists()
