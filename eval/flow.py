"""Farneback optical flow, each pair of frames computed once and shared between metrics.

Motion magnitude needs the flow between every pair of consecutive frames, subject and
global flow need it between consecutive *sampled* frames, and the weight-free subject mask
and the orbit metrics reuse the consecutive flows. The reference computes the same flows
again for each metric; a :class:`FlowCache` computes each one once.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Tuple

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
        threads: how many flows :meth:`prefetch` computes at once. OpenCV's Farneback runs on
            one core and releases the GIL, so a clip evaluated alone can use every core.
    """

    def __init__(self, grey: np.ndarray, *, threads: int = 1):
        self._grey = grey
        self._flows: Dict[Tuple[int, int], np.ndarray] = {}
        self.threads = max(1, int(threads))
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

    def prefetch(self, pairs: Iterable[Tuple[int, int]]) -> None:
        """Compute the flows of ``pairs`` not yet kept, ``threads`` at a time. Each is the
        same flow to rounding whichever thread computes it (OpenCV may split a pass over its
        own threads differently when it is called from several at once)."""
        todo = list(dict.fromkeys((int(i), int(j)) for i, j in pairs if (i, j) not in self._flows))
        if self.threads <= 1 or len(todo) <= 1:
            for i, j in todo:
                self.get(i, j)
            return
        with ThreadPoolExecutor(max_workers=min(self.threads, len(todo))) as pool:
            for pair, flow in zip(todo, pool.map(lambda p: farneback(self._grey[p[0]], self._grey[p[1]]), todo)):
                self._flows[pair] = flow
                self.computed += 1

    def has(self, i: int, j: int) -> bool:
        return (i, j) in self._flows

    def mean_magnitude(self, i: int, j: int) -> float:
        """Mean flow length over the whole frame."""
        return float(np.mean(magnitude(self.get(i, j)), dtype=np.float64))

    def consecutive(self) -> List[np.ndarray]:
        """Flows ``i -> i + 1`` for every frame."""
        pairs = [(i, i + 1) for i in range(self._grey.shape[0] - 1)]
        self.prefetch(pairs)
        return [self._flows[p] for p in pairs]
