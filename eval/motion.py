"""Motion magnitude and dynamic degree over every pair of consecutive frames.

As in the reference (``circle_rotate/metrics/motion.py``): motion magnitude is the mean over
consecutive pairs of the mean Farneback flow length; dynamic degree is the mean over
consecutive pairs of the fraction of pixels whose grey level changes by more than 10.
"""

from __future__ import annotations

import cv2
import numpy as np

from circle_rotate.eval.context import EvalContext, MetricResult

#: Grey-level change that counts a pixel as "changed" (the reference's ``threshold=10``).
DYNAMIC_THRESHOLD = 10


def motion_magnitude(pair_means: np.ndarray) -> float:
    """Mean of the per-pair mean flow lengths."""
    return float(np.mean(pair_means))


def changed_fraction(grey_a: np.ndarray, grey_b: np.ndarray, *, threshold: int = DYNAMIC_THRESHOLD) -> float:
    """Fraction of pixels with ``|b - a| > threshold`` (grey uint8 frames)."""
    diff = cv2.absdiff(grey_a, grey_b)
    return float(np.count_nonzero(diff > threshold)) / diff.size


def dynamic_degree(grey: np.ndarray, *, threshold: int = DYNAMIC_THRESHOLD) -> float:
    """Mean changed fraction over consecutive pairs of (T, H, W) uint8 frames."""
    return float(np.mean([changed_fraction(grey[i - 1], grey[i], threshold=threshold) for i in range(1, len(grey))]))


def compute_motion_magnitude(ctx: EvalContext) -> MetricResult:
    """Mean Farneback magnitude between every pair of consecutive frames (shared flows)."""
    n = ctx.clip.count
    ctx.flows.consecutive()  # all at once, on the clip's threads
    means = np.array([ctx.flows.mean_magnitude(i, i + 1) for i in range(n - 1)])
    return MetricResult({"motion_magnitude": motion_magnitude(means)}, series={"pair_motion": means.round(4).tolist()})


def compute_dynamic_degree(ctx: EvalContext) -> MetricResult:
    """Fraction of pixels whose grey level changes by more than 10 between consecutive frames."""
    return MetricResult({"dynamic_degree": dynamic_degree(ctx.clip.grey)})
