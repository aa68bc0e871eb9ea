"""Optical-flow statistics for orbit estimation: analysis frames, flows, per-pair summaries.

Frames are analysed small (``ANALYSIS_SIDE`` pixels on the long side, never upscaled):
an orbit's signature is in the coarse layout of the flow, and small frames keep the cost
of QC far below that of encoding. Each frame pair's flow is reduced to the medians of a
``GRID_ROWS`` x ``GRID_COLS`` grid of cells over textured pixels (flow in flat sky or
studio backdrops is noise), from which :mod:`circle_rotate.media.orbit` reads its cues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

ANALYSIS_SIDE = 160
#: OpenCV's DIS flow (preset FAST) crashes the process (a segfault, not an exception) on frames under
#: 32 rows once they are 80 or more columns wide (measured: 160x26, 320x31, 80x24; 64x31 and any
#: 32-row frame up to 3000 wide run), and refuses frames under 12 columns. Frames are padded to at
#: least this many pixels each way.
DIS_MIN_SIDE = 32
GRID_ROWS, GRID_COLS = 6, 8
_TEXTURE_GRAD = 40.0  # Sobel magnitude on the normalised frame; below it a pixel's flow is not trusted
_MIN_CELL_TEXTURE = 0.1  # fraction of textured pixels a cell needs to count


def analysis_size(width: int, height: int, side: int = ANALYSIS_SIDE) -> tuple[int, int]:
    """(w, h) of the analysis frames: long side at most ``side``, even, never upscaled; but a very
    wide or tall frame keeps ``DIS_MIN_SIDE`` pixels across where it has them (160 wide at 6:1 would
    leave 26 rows)."""
    s = min(1.0, max(side / max(width, height), DIS_MIN_SIDE / max(1, min(width, height))))
    return max(2, int(round(width * s / 2)) * 2), max(2, int(round(height * s / 2)) * 2)


def shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average ``image`` down to ``size`` (w, h): exact halvings first, which OpenCV
    does several times faster than one large non-integer area resize."""
    h, w = image.shape[:2]
    while w >= 2 * size[0] and h >= 2 * size[1] and w % 2 == 0 and h % 2 == 0:
        image = cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        h, w = image.shape[:2]
    return image if (w, h) == tuple(size) else cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def analysis_grey(frame: np.ndarray, *, side: int = ANALYSIS_SIDE) -> np.ndarray:
    """One frame (RGB (H, W, 3) or grey (H, W), uint8) to a small, contrast-normalised grey
    uint8 frame. Normalising each frame's mean and spread makes flow and differences blind
    to exposure ramps and flicker."""
    h, w = frame.shape[:2]
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
    grey = shrink(grey, analysis_size(w, h, side))
    mean, std = cv2.meanStdDev(grey)
    out = (grey.astype(np.float32) - float(mean[0, 0])) * (40.0 / (float(std[0, 0]) + 1e-3)) + 128.0
    return np.clip(out, 0, 255).astype(np.uint8)


class FlowEstimator:
    """Dense flow between consecutive analysis frames (OpenCV's DIS, seeded with the
    previous pair's flow so that fast but smooth camera motion is followed)."""

    def __init__(self):
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        self._prev: Optional[np.ndarray] = None

    def reset(self) -> None:
        """Forget the previous flow (after a cut)."""
        self._prev = None

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        rows, cols = a.shape[:2]
        pad_rows, pad_cols = max(0, DIS_MIN_SIDE - rows), max(0, DIS_MIN_SIDE - cols)
        if pad_rows or pad_cols:  # mirrored below and to the right, cut off again: see DIS_MIN_SIDE
            a, b = (cv2.copyMakeBorder(x, 0, pad_rows, 0, pad_cols, cv2.BORDER_REFLECT) for x in (a, b))
        init = self._prev.copy() if self._prev is not None and self._prev.shape[:2] == a.shape else None
        flow = self._dis.calc(a, b, init)
        self._prev = flow
        return flow[:rows, :cols]


def resize_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A flow of any resolution rescaled (grid and vectors) to ``size`` (w, h)."""
    h, w = flow.shape[:2]
    if (w, h) == tuple(size):
        return flow.astype(np.float32, copy=False)
    out = cv2.resize(flow.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    out[..., 0] *= size[0] / w
    out[..., 1] *= size[1] / h
    return out


@dataclass(frozen=True)
class PairStats:
    """One frame pair's flow in brief (pixels per frame at analysis resolution)."""

    u: np.ndarray  # (GRID_ROWS, GRID_COLS) median horizontal flow per cell, NaN where untextured
    v: np.ndarray  # same, vertical
    residual: float  # mean |b - a warped by the flow|, grey levels: spikes at cuts


def _nan_median_rows(x: np.ndarray) -> np.ndarray:
    """Median of each row ignoring NaN (NaN for an all-NaN row); a sort, much faster
    than ``np.nanmedian`` on many short rows."""
    s = np.sort(x, axis=1)  # NaN sorts last
    n = np.sum(~np.isnan(x), axis=1)
    rows = np.arange(len(x))
    lo, hi = s[rows, np.maximum(n - 1, 0) // 2], s[rows, np.maximum(n, 1) // 2 - (n == 0)]
    out = (lo + hi) / 2
    out[n == 0] = np.nan
    return out


def _cell_medians(flow: np.ndarray, textured: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = textured.shape
    ch, cw = h // GRID_ROWS, w // GRID_COLS
    hh, ww = ch * GRID_ROWS, cw * GRID_COLS

    def cells(x: np.ndarray) -> np.ndarray:
        x = np.where(textured, x, np.nan)[:hh, :ww]
        return x.reshape(GRID_ROWS, ch, GRID_COLS, cw).transpose(0, 2, 1, 3).reshape(GRID_ROWS * GRID_COLS, -1)

    u, v = cells(flow[..., 0]), cells(flow[..., 1])
    enough = np.mean(~np.isnan(u), axis=1) >= _MIN_CELL_TEXTURE
    mu, mv = _nan_median_rows(u), _nan_median_rows(v)
    mu[~enough] = np.nan
    mv[~enough] = np.nan
    return mu.reshape(GRID_ROWS, GRID_COLS), mv.reshape(GRID_ROWS, GRID_COLS)


def cell_centres(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell centre coordinates relative to the frame centre, in half-widths (x right, y down)."""
    xs = ((np.arange(GRID_COLS) + 0.5) / GRID_COLS - 0.5) * 2
    ys = ((np.arange(GRID_ROWS) + 0.5) / GRID_ROWS - 0.5) * 2 * height / width
    return np.meshgrid(xs, ys)


def affine_curl(u: np.ndarray, v: np.ndarray, width: int, height: int) -> float:
    """Curl (dv/dx - du/dy, px per half-width) of a robust affine fit to cell flows:
    positive when the flow turns clockwise in the image (x right, y down)."""
    ok = ~np.isnan(u)
    if ok.sum() < 4:
        return 0.0
    xx, yy = cell_centres(width, height)
    a = np.stack([np.ones(ok.sum()), xx[ok], yy[ok]], axis=1)
    coef = []
    for z in (u[ok], v[ok]):
        wt = np.ones(len(z))
        for _ in range(4):  # iteratively reweighted: the subject's own motion and clutter are outliers
            aw = a * wt[:, None]
            sol = np.linalg.solve(aw.T @ a + 1e-6 * np.eye(3), aw.T @ z)
            r = np.abs(z - a @ sol)
            scale = 1.4826 * np.median(r) + 1e-3
            wt = np.minimum(1.0, 2 * scale / np.maximum(r, 1e-9))
        coef.append(sol)
    return float(coef[1][1] - coef[0][2])


def pair_stats(a: np.ndarray, b: np.ndarray, flow: np.ndarray) -> PairStats:
    """Summarise the flow ``a -> b`` (analysis frames, flow at the same resolution)."""
    h, w = a.shape
    grad = cv2.magnitude(cv2.Sobel(a, cv2.CV_32F, 1, 0), cv2.Sobel(a, cv2.CV_32F, 0, 1))
    u, v = _cell_medians(flow, grad > _TEXTURE_GRAD)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    # b(x + flow(x)) ~ a(x): pull b back onto a's grid and compare.
    back = cv2.remap(b, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    residual = float(np.mean(cv2.absdiff(back, a)))
    return PairStats(u, v, residual)
