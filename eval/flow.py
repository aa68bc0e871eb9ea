"""Farneback optical flow, each pair of frames computed once and shared between metrics.

Motion magnitude needs the flow between every pair of consecutive frames, subject and
global flow need it between consecutive *sampled* frames, and the weight-free subject mask
and the orbit metrics reuse the consecutive flows. The reference computes the same flows
again for each metric; a :class:`FlowCache` computes each one once.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Tuple

import cv2
import numpy as np

logger = logging.getLogger(__name__)

#: ``cv2.calcOpticalFlowFarneback`` arguments after the two images and ``None``: pyr_scale,
#: levels, winsize, iterations, poly_n, poly_sigma, flags (as in the reference).
FARNEBACK_PARAMS = (0.5, 3, 15, 3, 5, 1.2, 0)


def farneback(grey_a: np.ndarray, grey_b: np.ndarray) -> np.ndarray:
    """Dense Farneback flow from ``grey_a`` to ``grey_b``: (H, W, 2) float32 (dx, dy)."""
    return cv2.calcOpticalFlowFarneback(grey_a, grey_b, None, *FARNEBACK_PARAMS)


def magnitude(flow: np.ndarray) -> np.ndarray:
    """Per-pixel flow length, ``sqrt(dx^2 + dy^2)``, float32."""
    return cv2.magnitude(flow[..., 0], flow[..., 1])


class FlowCache:
    """Farneback flows of one clip, each computed on first use and kept (float32: a clip of
    81 frames at 832x480 keeps ~260 MB, at 1280x720 ~600 MB).

    Args:
        grey: (T, H, W) uint8 frames.
    """

    def __init__(self, grey: np.ndarray):
        self._grey = grey
        self._flows: Dict[Tuple[int, int], np.ndarray] = {}
        self.computed = 0  # how many Farneback passes ran (the benchmark reports it)

    def __len__(self) -> int:
        return len(self._flows)

    def get(self, i: int, j: int) -> np.ndarray:
        """Flow from frame ``i`` to frame ``j``: (H, W, 2) float32."""
        flow = self._flows.get((i, j))
        if flow is None:
            flow = self._flows[(i, j)] = farneback(self._grey[i], self._grey[j])
            self.computed += 1
        return flow

    def has(self, i: int, j: int) -> bool:
        return (i, j) in self._flows

    def mean_magnitude(self, i: int, j: int) -> float:
        """Mean flow length over the whole frame."""
        return float(np.mean(magnitude(self.get(i, j)), dtype=np.float64))

    def consecutive(self) -> List[np.ndarray]:
        """Flows ``i -> i + 1`` for every frame, computed in order."""
        return [self.get(i, i + 1) for i in range(self._grey.shape[0] - 1)]
