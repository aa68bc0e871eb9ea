"""First-last frame PSNR and SSIM (``circle_rotate/metrics/fidelity.py`` in the reference).

PSNR is on the RGB frames (peak 255); SSIM is on grey frames with an 11x11 Gaussian window
of sigma 1.5 (OpenCV ``GaussianBlur``, reflect-101 borders) and the usual constants
(0.01 * 255)^2 and (0.03 * 255)^2, averaged over the SSIM map.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from circle_rotate.eval.context import EvalContext, MetricResult

SSIM_WINDOW = (11, 11)
SSIM_SIGMA = 1.5
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images (``inf`` when they are identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def ssim(grey_a: np.ndarray, grey_b: np.ndarray) -> float:
    """Mean SSIM of two grey uint8 images (Gaussian window 11, sigma 1.5)."""
    a = grey_a.astype(np.float64)
    b = grey_b.astype(np.float64)

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, SSIM_WINDOW, SSIM_SIGMA)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + _C1) * (2 * cov + _C2)) / ((mu_a ** 2 + mu_b ** 2 + _C1) * (var_a + var_b + _C2))
    return float(ssim_map.mean())


def compute_psnr(ctx: EvalContext) -> MetricResult:
    """PSNR between the first and the last frame (RGB)."""
    value = psnr(ctx.clip.frames[0], ctx.clip.frames[-1])
    notes = ("psnr: first and last frames are identical (infinite PSNR)",) if math.isinf(value) else ()
    return MetricResult({"psnr": value}, notes=notes)


def compute_ssim(ctx: EvalContext) -> MetricResult:
    """SSIM between the first and the last frame (grey)."""
    return MetricResult({"ssim": ssim(ctx.clip.grey[0], ctx.clip.grey[-1])})
