"""A fade at a clip's start or end: its frames found exactly through a real codec, never where
there is none, and left out of the subject drift, which is read on the frames that show the
picture and checked against the truth on those frames."""

from __future__ import annotations

import numpy as np
import pytest

from circle_rotate.eval.context import EvalContext
from circle_rotate.eval.drift import compute_subject_drift
from circle_rotate.eval.fades import Shown, find_shown, frame_levels
from circle_rotate.eval.frames import clip_from_frames, load_clip, sample_indices
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.video_io import write_video
from circle_rotate.selfcheck.synthetic.turntable import DriftPath, TurntableSpec, drift_value, mask_stats, render_frames

FADE = 8  # frames of each fade


@pytest.fixture(scope="module")
def orbit():
    """A rendered orbit's frames and exact masks."""
    spec = TurntableSpec(name="fades", width=224, height=128, frames=33, subject="box", total_angle_deg=60.0,
                         drift=DriftPath("linear", 12.0), seed=97)
    rendered = list(render_frames(spec))
    return np.stack([r.image for r in rendered]), np.stack([r.subject_mask for r in rendered])


def _faded(frames: np.ndarray, *, into_black: bool = True, out_to_white: bool = False) -> np.ndarray:
    """``frames`` fading in from black over the first :data:`FADE` frames, and out to white over
    the last where asked (frame k of a fade shows k / FADE of the picture)."""
    out = frames.astype(np.float32)
    for k in range(FADE):
        a = k / FADE
        if into_black:
            out[k] *= a
        if out_to_white:
            out[-1 - k] = a * out[-1 - k] + (1 - a) * 255
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def test_fades_are_found_through_a_real_codec(orbit, tmp_path):
    frames, _ = orbit
    n = len(frames)
    for name, clip, want in (("in", _faded(frames), (FADE, n - 1)),
                             ("both", _faded(frames, out_to_white=True), (FADE, n - 1 - FADE)),
                             ("plain", frames, (0, n - 1))):
        write_video(tmp_path / f"{name}.mp4", clip, fps=16)
        got = find_shown(load_clip(tmp_path / f"{name}.mp4").levels)
        # the ramp's last frames show most of the picture: they may count as shown (a frame either way)
        assert got.count == n and abs(got.first - want[0]) <= 1 and abs(got.last - want[1]) <= 1, (name, got)
        assert bool(got) == (name != "plain")
    assert Shown(8, 24, 33).describe() == "frames 0-7 (a fade-in or leader) and frames 25-32 (a fade-out)"
    assert list(Shown(8, 24, 33).keep(sample_indices(33))) == [8, 10, 12, 14, 17, 19, 21, 23]
    # one black frame before the picture (some encoders' leader)
    leader = np.concatenate([np.zeros_like(frames[:1]), frames])
    write_video(tmp_path / "leader.mp4", leader, fps=16)
    got = find_shown(load_clip(tmp_path / "leader.mp4").levels)
    assert got == Shown(1, n, n + 1) and got.describe() == "frame 0 (a fade-in or leader)"


def test_no_fade_where_frames_are_only_flatter_or_darker_or_the_clip_is_blank(orbit):
    frames, _ = orbit
    n = len(frames)
    # a camera pulling back: the first frames flat (a close-up on a plain surface), not dark
    flat = frames.copy()
    flat[:FADE] = np.clip(128 + (flat[:FADE].astype(np.float32) - 128) * 0.1, 0, 255).astype(np.uint8)
    assert not find_shown(clip_from_frames(flat, fps=16).levels)
    # a dark frame in the middle (a flash of shadow) is content
    dark = frames.copy()
    dark[n // 2] //= 10
    assert not find_shown(clip_from_frames(dark, fps=16).levels)
    # all black: there is no picture to fade into, nothing to leave out
    assert find_shown(frame_levels(np.zeros((9, 32, 32), np.uint8))) == Shown(0, 8, 9)


def test_a_blank_video_is_an_error_that_says_why(orbit, tmp_path):
    # a sampler that produced NaNs decodes to black: read as a clip it would score drift 0, reliable
    write_video(tmp_path / "black.mp4", np.zeros((17, 128, 224, 3), np.uint8), fps=16)
    with pytest.raises(UserError, match="every frame is one flat colour") as err:
        load_clip(tmp_path / "black.mp4")
    assert "black.mp4" in str(err.value) and "regenerate" in str(err.value)
    grey_flashes = np.repeat(np.arange(0, 170, 10, dtype=np.uint8)[:, None, None, None], 3, axis=3)
    with pytest.raises(UserError, match="flat colour"):
        clip_from_frames(np.broadcast_to(grey_flashes, (17, 64, 64, 3)), fps=16)
    faded = _faded(orbit[0])
    assert clip_from_frames(faded, fps=16).count == len(faded)  # a fade is not blank


def test_the_drift_is_read_on_the_frames_that_show_the_picture(orbit):
    frames, truth_masks = orbit
    faded = _faded(frames, out_to_white=True)
    result = compute_subject_drift(EvalContext(clip_from_frames(faded, fps=16)))
    kept = result.series["frames"]
    shown = find_shown(clip_from_frames(faded, fps=16).levels)
    assert kept == [int(i) for i in shown.keep(sample_indices(len(frames)))]
    assert kept[0] >= FADE - 1 and kept[-1] <= len(frames) - FADE and len(result.series["centroids"]) == len(kept)
    truth, _ = drift_value(np.array([mask_stats(truth_masks[i])[0] for i in kept]))
    drift = result.values["drift"]
    assert abs(drift - truth) < max(3.0, 0.15 * truth), (drift, truth)
    note = next(n for n in result.notes if "left out of the drift" in n)
    assert "a fade-in or leader" in note and "a fade-out" in note and f"{len(kept)} of 16 sampled frames kept" in note
    assert np.isfinite(result.values["subject_flow"])
