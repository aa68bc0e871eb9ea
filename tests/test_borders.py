"""Black bars around a clip: found exactly, never where there are none, and the subject is
looked for in the picture between them, its masks and centroids still in the frame's pixels."""

from __future__ import annotations

import numpy as np
import pytest

from circle_rotate.media.borders import Bars, find_bars
from circle_rotate.eval.context import EvalContext
from circle_rotate.eval.drift import compute_subject_drift, subject_masks
from circle_rotate.eval.frames import clip_from_frames, load_clip
from circle_rotate.eval.subject_mask import SubjectHint
from circle_rotate.kernel.video_io import write_video
from circle_rotate.selfcheck.synthetic.turntable import DriftPath, TurntableSpec, drift_value, mask_stats, render_frames

TOP, SIDE = 40, 32


@pytest.fixture(scope="module")
def orbit():
    """A rendered orbit (its frames and exact masks), and the same with black bars: letterboxed
    top and bottom, and pillarboxed left and right."""
    spec = TurntableSpec(name="bars", width=224, height=128, frames=25, subject="car", total_angle_deg=45.0,
                         drift=DriftPath("linear", 10.0), seed=83)
    rendered = list(render_frames(spec))
    frames = np.stack([r.image for r in rendered])
    letterbox = np.pad(frames, ((0, 0), (TOP, TOP), (0, 0), (0, 0)))
    pillarbox = np.pad(frames, ((0, 0), (0, 0), (SIDE, SIDE), (0, 0)))
    return frames, np.stack([r.subject_mask for r in rendered]), letterbox, pillarbox


def test_bars_are_found_through_a_real_codec(orbit, tmp_path):
    frames, _, letterbox, pillarbox = orbit
    for name, clip, want in (("letterbox", letterbox, Bars(top=TOP, bottom=TOP)),
                             ("pillarbox", pillarbox, Bars(left=SIDE, right=SIDE)), ("plain", frames, Bars())):
        write_video(tmp_path / f"{name}.mp4", clip, fps=16)
        got = find_bars(load_clip(tmp_path / f"{name}.mp4").grey)
        assert got == want, (name, got)
    assert Bars(top=TOP, bottom=TOP).crop(224, 208) == "crop=224:128:0:40"
    assert Bars(top=TOP, bottom=TOP).describe() == "40 rows at the top, 40 rows at the bottom"


def test_no_bars_where_the_edge_is_dark_only_at_times_or_only_in_part(orbit):
    frames = orbit[0].copy()
    faded = frames.copy()
    faded[:6] = 0  # a fade from black: black at first, the picture after
    assert not find_bars(clip_from_frames(faded, fps=16).grey)
    night = frames.copy()
    night[:, :20] = np.clip(night[:, :20].astype(int) // 8, 0, 255).astype(np.uint8)  # a dark sky with stars in it
    night[:, 3:20:7, ::9] = 200
    assert not find_bars(clip_from_frames(night, fps=16).grey)
    assert not find_bars(np.zeros((5, 64, 64), np.uint8))  # all black: nothing to crop to
    thin = np.pad(frames, ((0, 0), (1, 1), (0, 0), (0, 0)))  # a line of black under 2% of the side: not a bar
    assert not find_bars(clip_from_frames(thin, fps=16).grey)


def test_the_subject_is_looked_for_between_the_bars(orbit):
    frames, truth_masks, letterbox, pillarbox = orbit
    plain = EvalContext(clip_from_frames(frames, fps=16))
    truth, _ = drift_value(np.array([mask_stats(m)[0] for m in truth_masks]))
    reading = compute_subject_drift(plain).values["drift"]
    for boxed, (dx, dy) in ((letterbox, (0, TOP)), (pillarbox, (SIDE, 0))):
        ctx = EvalContext(clip_from_frames(boxed, fps=16))
        masks = subject_masks(ctx)
        h, w = frames.shape[1:3]
        assert masks.masks.shape[1:] == boxed.shape[1:3] and masks.picture == (dx, dy, dx + w, dy + h)
        assert not masks.masks[:, :dy].any() and not masks.masks[:, :, :dx].any()  # nothing in the bars
        result = compute_subject_drift(ctx)
        drift = result.values["drift"]
        note = next(n for n in result.notes if "black bars" in n)
        assert ("40 rows at the top, 40 rows at the bottom" if dy else "32 columns at the left, 32 columns at the right") \
            in note and (f"crop=224:128:{dx}:{dy}" in note)
        # the same reading as without bars, give or take what the bars change in the flow near the
        # picture's edge; both against the truth
        assert abs(drift - reading) < 1.0 and abs(drift - truth) < max(3.0, 0.15 * truth), (drift, reading, truth)
        centre = masks.centroids().mean(axis=0) - (dx, dy)
        assert np.allclose(centre, subject_masks(plain).centroids().mean(axis=0), atol=2.0)


def test_a_given_box_is_in_the_frames_pixels_bars_and_all(orbit):
    frames, truth_masks, letterbox, _ = orbit
    ys, xs = np.nonzero(truth_masks[0])
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    plain = subject_masks(EvalContext(clip_from_frames(frames, fps=16), options={"subject": SubjectHint(box=box)}))
    shifted = (box[0], box[1] + TOP, box[2], box[3] + TOP)
    boxed = subject_masks(EvalContext(clip_from_frames(letterbox, fps=16),
                                      options={"subject": SubjectHint(box=shifted)}))
    assert boxed.found.basis == "user_box"
    assert np.allclose(boxed.centroids() - (0, TOP), plain.centroids(), atol=1.0)
