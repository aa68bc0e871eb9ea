"""Snapping a rough subject mask to the image's edges, on constructed images with a known subject."""

from __future__ import annotations

import cv2
import numpy as np

from circle_rotate.eval.mask_snap import SnapParams, neighbour_majority, snap_clip, snap_to_edges
from circle_rotate.eval.parallax import GroundLook


def _scene(h=360, w=480, seed=0):
    """A tiled grey floor with noise and a two-coloured, textured L-shaped subject: (image, true mask)."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    tiles = rng.uniform(110, 170, size=(h // 40 + 1, w // 40 + 1))
    img[:] = np.kron(tiles, np.ones((40, 40)))[:h, :w, None] * np.float32([1.0, 1.02, 1.08])
    truth = np.zeros((h, w), bool)
    truth[90:290, 170:250] = True  # the tall part
    truth[200:290, 250:320] = True  # the low part to its right
    stripes = (np.arange(w)[None, :] // 7 % 2).astype(np.float32)
    img[truth] = (np.stack([150 + 60 * stripes, 40 + 20 * stripes, 60 + 0 * stripes], -1)
                  * np.ones((h, 1, 1), np.float32))[truth]
    img[200:290, 250:320] *= np.float32([0.45, 0.9, 0.7])  # its darker side
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), truth


def _centroid(m):
    ys, xs = np.nonzero(m)
    return np.array([xs.mean(), ys.mean()])


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_a_lopsided_halo_snaps_back_to_the_subject():
    img, truth = _scene()
    rough = cv2.dilate(truth.astype(np.uint8), np.ones((13, 13), np.uint8)) > 0
    rough[:, :178] = False  # short on the left, 6 px too wide elsewhere: the centroid is ~3 px off
    rough[:, 178:] |= truth[:, 178:]
    assert np.linalg.norm(_centroid(rough) - _centroid(truth)) > 2.0
    snapped = snap_to_edges(img, rough, None)
    assert _iou(snapped, truth) >= 0.97
    assert np.linalg.norm(_centroid(snapped) - _centroid(truth)) <= 0.5


def test_the_crop_is_scaled_down_and_the_mask_comes_back_at_full_size():
    small, truth = _scene(seed=1)
    img = cv2.resize(small, (960, 720), interpolation=cv2.INTER_NEAREST)
    big = cv2.resize(truth.astype(np.uint8), (960, 720), interpolation=cv2.INTER_NEAREST) > 0
    rough = cv2.dilate(big.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    snapped = snap_to_edges(img, rough, None, SnapParams(crop=200))
    assert snapped.shape == big.shape
    assert _iou(snapped, big) >= 0.93
    assert np.linalg.norm(_centroid(snapped) - _centroid(big)) <= 1.5


def test_ground_the_parallax_explains_stays_out_though_it_is_as_dark_as_the_subject():
    img, truth = _scene(seed=2)
    shadow = np.zeros_like(truth)
    shadow[230:300, 320:372] = True  # beside the dark side, the same darkness, on the floor
    img[shadow] = img[200:270, 250:302].reshape(-1, 3)[: shadow.sum()] * 0 + np.uint8([66, 40, 44])
    rough = cv2.dilate(truth.astype(np.uint8), np.ones((11, 11), np.uint8)) > 0
    evidence = np.where(truth, 1.5, 0.0).astype(np.float32)  # the floor and its shadow: no parallax
    snapped = snap_to_edges(img, rough, evidence)
    assert snapped[shadow].mean() < 0.05
    assert _iou(snapped, truth) >= 0.95


def test_ground_that_looks_as_the_ground_warp_predicts_stays_out_below_the_subject():
    # a cast shadow under the dark side with its very texture (colour alone cannot tell them
    # apart), and the parallax mask bled 16 px into it; just below the mask the parallax is
    # no help (the subject's foot has none either), the ground's look is
    img, truth = _scene(seed=3)
    shadow = np.zeros_like(truth)
    shadow[290:335, 250:320] = True
    img[290:335, 250:320] = img[200:245, 250:320]
    rough = truth.copy()
    rough[290:306, 250:320] = True
    evidence = np.where(rough, 1.5, 0.0).astype(np.float32)
    blind = snap_to_edges(img, rough, evidence)
    looked = snap_to_edges(img, rough, evidence, ground=GroundLook(~truth, np.zeros_like(truth)))
    assert blind[shadow & ~rough].mean() > 0.3  # without the look the shadow is taken in
    assert looked[shadow & ~rough].mean() < 0.05
    err = [np.linalg.norm(_centroid(m) - _centroid(truth)) for m in (blind, looked)]
    assert err[1] < err[0] - 2.0, err


def test_a_shadow_that_moved_leaves_the_mask_though_the_parallax_took_it_in():
    img, truth = _scene(seed=4)
    shadow = np.zeros_like(truth)
    shadow[230:290, 320:380] = True  # beside the dark side, its texture, slid there with the light
    img[230:290, 320:380] = img[230:290, 250:310]
    rough = truth.copy()
    rough[230:290, 320:350] = True  # the flow read the shadow's near half as standing
    evidence = np.where(rough, 1.5, 0.0).astype(np.float32)
    blind = snap_to_edges(img, rough, evidence)
    looked = snap_to_edges(img, rough, evidence, ground=GroundLook(np.zeros_like(truth), shadow))
    assert blind[shadow].mean() >= 0.45  # the half the parallax took in stays
    assert looked[shadow].mean() < 0.1
    assert _iou(looked, truth) >= 0.95


def test_the_majority_of_neighbours_drops_one_frames_slip():
    base = np.zeros((50, 50), bool)
    base[10:40, 20:30] = True
    masks = [base.copy() for _ in range(5)]
    masks[2][10:40, 30:45] = True  # frame 2 took in a patch of ground
    masks[4] = np.zeros_like(base)  # the last frame lost the subject
    voted = neighbour_majority(masks)
    assert all((v == base).all() for v in voted[:4])
    assert (voted[4] == base).all()  # the last three frames: two of them agree
    assert (neighbour_majority(masks[:2])[1] == masks[1]).all()  # too few frames to vote: unchanged


def test_a_flat_frame_or_a_tiny_mask_is_left_as_it_was():
    flat = np.full((120, 160, 3), 128, np.uint8)
    tiny = np.zeros((120, 160), bool)
    tiny[60:63, 80:83] = True
    assert (snap_to_edges(flat, tiny, None) == tiny).all()
    whole = np.ones((120, 160), bool)
    assert (snap_to_edges(flat, whole, None) == whole).all()


def test_a_clip_keeps_one_non_empty_mask_per_frame():
    frames, truths = zip(*(_scene(seed=s) for s in range(4)))
    rough = [cv2.dilate(t.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0 for t in truths]
    out = snap_clip(frames, rough, [None] * 4)
    assert len(out) == 4 and all(m.any() and m.shape == truths[0].shape for m in out)
    assert min(_iou(m, t) for m, t in zip(out, truths)) >= 0.95
