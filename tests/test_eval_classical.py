"""The classical metrics against the reference formulas, computed here independently.

The expected values follow the reference (``Jklaity/Circle-Rotate``, circle_rotate/metrics)
step by step: frames decoded by OpenCV (BGR, then BGR2GRAY), a separate Farneback pass per
metric, scipy's Gaussian filter for SSIM, numpy for the rest.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from circle_rotate.eval.context import EvalContext
from circle_rotate.eval.frames import load_clip, sample_indices
from circle_rotate.eval.registry import resolve
from circle_rotate.selfcheck.synthetic.turntable import DriftPath, TurntableSpec, write_turntable

FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    spec = TurntableSpec(name="classic", width=256, height=160, frames=21, subject="figure", clutter=2,
                         lighting="flicker", drift=DriftPath("sine", 6.0, angle_deg=20))
    return write_turntable(spec, tmp_path_factory.mktemp("classic")).video


def _cv2_frames(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def _ref_motion(bgr):
    mags = []
    prev = cv2.cvtColor(bgr[0], cv2.COLOR_BGR2GRAY)
    for f in bgr[1:]:
        cur = cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)
        flow = cv2.calcOpticalFlowFarneback(prev, cur, None, *FARNEBACK)
        mags.append(np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2).mean())
        prev = cur
    return float(np.mean(mags))


def _ref_dynamic(bgr, threshold=10):
    ratios = []
    prev = cv2.cvtColor(bgr[0], cv2.COLOR_BGR2GRAY)
    for f in bgr[1:]:
        cur = cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)
        diff = np.abs(cur.astype(float) - prev.astype(float))
        ratios.append(np.sum(diff > threshold) / diff.size)
        prev = cur
    return float(np.mean(ratios))


def _ref_psnr(a, b):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 10 * np.log10(255.0 ** 2 / mse)


def _ref_ssim(a_rgb, b_rgb):
    a = cv2.cvtColor(a_rgb, cv2.COLOR_RGB2GRAY).astype(float)
    b = cv2.cvtColor(b_rgb, cv2.COLOR_RGB2GRAY).astype(float)

    def g(x):  # an 11-tap window of sigma 1.5 (radius 5), mirrored borders like OpenCV's default
        return gaussian_filter(x, 1.5, truncate=5 / 1.5, mode="mirror")

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = g(a), g(b)
    s1, s2, s12 = g(a * a) - mu1 ** 2, g(b * b) - mu2 ** 2, g(a * b) - mu1 * mu2
    return float((((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s1 + s2 + c2))).mean())


def _run(path, names):
    ctx = EvalContext(load_clip(path))
    values = {}
    for m in resolve(names):
        values.update(m.compute(ctx).values)
    return ctx, values


def test_pyav_decode_matches_the_references_opencv_decode(video):
    ours = load_clip(video).frames
    ref = np.stack([f[..., ::-1] for f in _cv2_frames(video)])
    assert ours.shape == ref.shape
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


def test_motion_dynamic_psnr_ssim_match_the_reference_formulas(video):
    bgr = _cv2_frames(video)
    rgb = [f[..., ::-1].copy() for f in bgr]
    _, got = _run(video, ["motion_magnitude", "dynamic_degree", "psnr", "ssim"])
    assert got["motion_magnitude"] == pytest.approx(_ref_motion(bgr), rel=1e-3)
    assert got["dynamic_degree"] == pytest.approx(_ref_dynamic(bgr), rel=1e-3)
    assert got["psnr"] == pytest.approx(_ref_psnr(rgb[0], rgb[-1]), rel=1e-3)
    assert got["ssim"] == pytest.approx(_ref_ssim(rgb[0], rgb[-1]), rel=1e-3)
    assert 0 < got["dynamic_degree"] < 1 and got["motion_magnitude"] > 0.1  # the clip really moves


def test_subject_and_global_flow_and_drift_follow_the_definitions(video):
    ctx, got = _run(video, ["subject_drift"])
    bgr = _cv2_frames(video)
    idx = np.linspace(0, len(bgr) - 1, 16).astype(int)
    assert idx.tolist() == sample_indices(len(bgr)).tolist()
    masks = ctx.shared("subject_masks", None).masks
    sub, glob = [], []
    for k in range(15):
        a = cv2.cvtColor(bgr[idx[k]][..., ::-1], cv2.COLOR_RGB2GRAY)
        b = cv2.cvtColor(bgr[idx[k + 1]][..., ::-1], cv2.COLOR_RGB2GRAY)
        flow = cv2.calcOpticalFlowFarneback(a, b, None, *FARNEBACK)
        mag = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2)
        glob.append(mag.mean())
        sub.append(mag[masks[k]].mean())
    assert got["global_flow"] == pytest.approx(np.mean(glob), rel=1e-3)
    assert got["subject_flow"] == pytest.approx(np.mean(sub), rel=1e-3)
    cents = np.array([[np.nonzero(m)[1].mean(), np.nonzero(m)[0].mean()] for m in masks])
    assert got["drift"] == pytest.approx(np.sqrt(cents[:, 0].std() ** 2 + cents[:, 1].std() ** 2), rel=1e-9)


def test_each_flow_is_computed_once_for_the_default_set(video):
    ctx, _ = _run(video, ["default"])
    n = ctx.clip.count
    idx = sample_indices(n)
    sampled_pairs = {(int(a), int(b)) for a, b in zip(idx[:-1], idx[1:])}
    consecutive = {(i, i + 1) for i in range(n - 1)}
    assert ctx.flows.computed == len(sampled_pairs | consecutive)


def test_identical_first_and_last_frames_give_infinite_psnr_and_ssim_one(tmp_path):
    from circle_rotate.eval.frames import clip_from_frames

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 32, 48, 3), dtype=np.uint8)
    frames[-1] = frames[0]
    ctx = EvalContext(clip_from_frames(frames, fps=16))
    psnr = resolve(["psnr"])[0].compute(ctx)
    assert psnr.values["psnr"] == float("inf") and psnr.notes
    assert resolve(["ssim"])[0].compute(ctx).values["ssim"] == pytest.approx(1.0)


def test_flows_computed_on_two_threads_are_the_same_flows_each_computed_once(video):
    one, two = EvalContext(load_clip(video)), EvalContext(load_clip(video), threads=2)
    pairs = [(i, i + 1) for i in range(one.clip.count - 1)] + [(0, 5), (0, 5)]
    one.flows.prefetch(pairs)
    two.flows.prefetch(pairs)
    two.flows.prefetch(pairs)  # a second call computes nothing
    assert one.flows.computed == two.flows.computed == len(set(pairs))
    for i, j in set(pairs):
        np.testing.assert_array_equal(one.flows.get(i, j), two.flows.get(i, j))
    assert two.flows.computed == len(set(pairs))


def test_the_default_set_reads_the_same_whatever_the_threads(video):
    from circle_rotate.eval.runner import evaluate

    rows = [evaluate([video], jobs=1, threads=t).rows[0] for t in (1, 2)]
    # to rounding: OpenCV may split a Farneback pass over its own threads differently when
    # it is called from several threads at once
    for name in ("motion_magnitude", "drift", "subject_flow", "global_flow", "psnr"):
        assert rows[0][name] == pytest.approx(rows[1][name], rel=1e-9), name
    assert rows[0]["orbit_motion"] == rows[1]["orbit_motion"]
