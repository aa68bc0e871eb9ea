"""The synthetic turntable generator: real encoded files, exact ground truth."""

from __future__ import annotations

import json

import av
import cv2
import numpy as np
import pytest

from circle_rotate.selfcheck.synthetic.turntable import (DriftPath, TurntableSpec, drift_value, load_masks, load_truth, mask_stats,
                                               render_frames, write_turntable)
from circle_rotate.kernel.video_io import probe_video, read_video


def _cv2_frames(path):
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    fps = cap.get(cv2.CAP_PROP_FPS)
    w, h = cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)
    cap.release()
    return n, fps, (int(w), int(h))


@pytest.mark.parametrize("frames,fps,size", [(17, 16.0, (320, 192)), (12, 29.97, (256, 144)), (9, 60.0, (160, 96))])
def test_video_decodes_with_opencv_and_pyav_at_requested_shape(tmp_path, frames, fps, size):
    spec = TurntableSpec(name="v", width=size[0], height=size[1], frames=frames, fps=fps, subject="figure", clutter=2)
    files = write_turntable(spec, tmp_path)
    n, cv_fps, cv_size = _cv2_frames(files.video)
    assert n == frames and cv_size == size and cv_fps == pytest.approx(fps, abs=1e-3)
    with av.open(str(files.video)) as c:
        s = c.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        assert float(s.average_rate) == pytest.approx(fps, abs=1e-3)
        assert s.codec_context.name == "h264"
    assert len(decoded) == frames and decoded[0].shape == (size[1], size[0], 3)
    info = probe_video(files.video)
    assert (info.frame_count, info.width, info.height) == (frames, *size)


def test_truth_centroids_are_recomputed_exactly_from_the_masks(tmp_path):
    spec = TurntableSpec(name="t", width=320, height=192, frames=21, subject="lshape", clutter=3,
                         drift=DriftPath("sine", 12.0, angle_deg=30))
    files = write_turntable(spec, tmp_path)
    truth = load_truth(files.truth)
    masks = load_masks(files.masks)
    assert masks.shape == (21, 192, 320)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        assert truth["mask_area"][i] == xs.size > 0
        assert truth["centroid"][i] == [xs.mean(), ys.mean()]
    value, idx = drift_value(np.array(truth["centroid"]))
    assert idx == np.linspace(0, 20, 16).astype(int).tolist()
    pts = np.array(truth["centroid"])[idx]
    assert truth["drift"] == value == pytest.approx(np.sqrt(pts[:, 0].std() ** 2 + pts[:, 1].std() ** 2))
    # Rendering again gives the same masks (deterministic), and the video's pixels match them.
    again = [f.subject_mask for f in render_frames(spec)]
    assert all(np.array_equal(a, b) for a, b in zip(again, masks))


def test_injected_drift_moves_the_centroid_by_the_offset():
    base = TurntableSpec(name="s", width=320, height=192, frames=9, camera="static", subject="box", shadow=False)
    moved = TurntableSpec(**{**base.__dict__, "drift": DriftPath("linear", 20.0, angle_deg=0)})
    c0 = [mask_stats(f.subject_mask)[0] for f in render_frames(base)]
    c1 = [mask_stats(f.subject_mask)[0] for f in render_frames(moved)]
    dx = [b[0] - a[0] for a, b in zip(c0, c1)]
    assert dx[0] == pytest.approx(0, abs=0.05)
    assert dx[-1] == pytest.approx(20.0, abs=0.6)  # rasterisation of the shifted edges
    assert all(abs(b[1] - a[1]) < 0.6 for a, b in zip(c0, c1))


def test_orbit_direction_shows_in_background_and_subject_stays(tmp_path):
    """Orbit right: the subject stays near the centre while the far wall slides right."""
    spec = TurntableSpec(name="o", width=320, height=192, frames=9, total_angle_deg=16, subject="cylinder", shadow=False,
                         noise_sigma=0)
    frames = [f for f in render_frames(spec)]
    c = [mask_stats(f.subject_mask)[0] for f in frames]
    assert abs(c[-1][0] - c[0][0]) < 4
    top0 = cv2.cvtColor(frames[0].image[:40], cv2.COLOR_RGB2GRAY)
    top1 = cv2.cvtColor(frames[2].image[:40], cv2.COLOR_RGB2GRAY)
    (shift_x, _), _ = cv2.phaseCorrelate(top0.astype(np.float32), top1.astype(np.float32))
    assert shift_x > 1.0
    left = TurntableSpec(**{**spec.__dict__, "direction": "left"})
    lf = [f.image for f in render_frames(left)]
    (shift_l, _), _ = cv2.phaseCorrelate(cv2.cvtColor(lf[0][:40], cv2.COLOR_RGB2GRAY).astype(np.float32),
                                         cv2.cvtColor(lf[2][:40], cv2.COLOR_RGB2GRAY).astype(np.float32))
    assert shift_l < -1.0


def test_negatives_static_and_pan(tmp_path):
    static = write_turntable(TurntableSpec(name="static", width=192, height=112, frames=9, camera="static"), tmp_path)
    pan = write_turntable(TurntableSpec(name="pan", width=192, height=112, frames=9, camera="pan", total_angle_deg=20),
                          tmp_path)
    ts, tp = load_truth(static.truth), load_truth(pan.truth)
    assert ts["direction"] == "none" and ts["drift"] < 0.01
    assert len(set(ts["azimuth_deg"])) == 1
    # A pan right sweeps the subject left across the frame.
    assert tp["centroid"][-1][0] < tp["centroid"][0][0] - 20
    assert tp["seen_from_above"] == "none" and tp["camera"] == "pan"


def test_rotated_phone_video_and_cut(tmp_path):
    files = write_turntable(TurntableSpec(name="phone", width=192, height=112, frames=9), tmp_path, rotation=90)
    info = probe_video(files.video)
    assert info.rotation == 90 and info.display_size == (112, 192)
    assert read_video(files.video).shape == (9, 192, 112, 3)  # upright
    assert read_video(files.video, apply_rotation=False).shape == (9, 112, 192, 3)
    cut = write_turntable(TurntableSpec(name="cut", width=192, height=112, frames=12, total_angle_deg=20, cut_at=6), tmp_path)
    v = read_video(cut.video).astype(float)
    diffs = [np.abs(v[i + 1] - v[i]).mean() for i in range(11)]
    assert int(np.argmax(diffs)) == 5 and max(diffs) > 3 * sorted(diffs)[-2]
    assert json.loads(cut.truth.read_text())["cut_at"] == 6
