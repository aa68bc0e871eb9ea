"""Weight-free saliency (background-weighted contrast): on constructed images whose subject
we drew, the subject stands out, also when the frame's sides cut it."""

from __future__ import annotations

import cv2
import numpy as np

from circle_rotate.eval.saliency import SaliencyParams, saliency


def _noisy(image: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)


def _otsu_mask(sal: np.ndarray) -> np.ndarray:
    _, m = cv2.threshold((sal * 255).astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return m > 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def test_a_subject_off_centre_on_a_two_tone_scene_stands_out():
    h, w = 240, 320
    image = np.empty((h, w, 3), np.float32)
    image[:140] = (120, 150, 200)  # backdrop
    image[140:] = (110, 105, 95)  # floor
    truth = np.zeros((h, w), bool)
    cv2.circle(truth.view(np.uint8), (210, 120), 38, 1, -1)
    image[truth] = (200, 60, 40)
    sal = saliency(_noisy(image, 1))
    assert sal.shape == (h, w) and sal.dtype == np.float32
    assert 0.0 <= sal.min() and sal.max() <= 1.0
    assert sal[truth].mean() > 3.0 * sal[~truth].mean()
    assert _iou(_otsu_mask(sal), truth) >= 0.7


def test_a_subject_cut_by_both_sides_of_the_frame_stays_salient():
    # a portrait frame with a car-like slab wider than it: its ends touch the left and right
    # border along a short stretch of its outline; sky and road hold most of the border
    h, w = 320, 180
    image = np.empty((h, w, 3), np.float32)
    image[:170] = (150, 180, 215)
    image[170:] = (85, 85, 90)
    truth = np.zeros((h, w), bool)
    truth[140:200] = True
    image[truth] = (35, 55, 130)
    sal = saliency(_noisy(image, 2))
    assert sal[truth].mean() > 2.0 * sal[~truth].mean()
    assert _iou(_otsu_mask(sal), truth) >= 0.7


def test_a_flat_image_gives_finite_values_and_a_coarser_grid_works():
    flat = np.full((90, 160, 3), 128, np.uint8)
    sal = saliency(flat)
    assert np.isfinite(sal).all() and sal.shape == (90, 160)
    image = np.full((90, 160, 3), (60, 140, 60), np.uint8)
    image[30:60, 60:100] = (230, 230, 40)
    coarse = saliency(image, SaliencyParams(cells=150))
    assert coarse[35:55, 65:95].mean() > 3.0 * coarse[:20].mean()
