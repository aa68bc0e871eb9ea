"""Scene cuts, with PySceneDetect's content detector fed the small frames we already have.

PySceneDetect normally decodes the video itself; ``prepare`` decodes each source once, so
it hands the detector the analysis-size frames it makes anyway (PySceneDetect downscales
to a similar size by default). Cuts are looked for between consecutive *samples* at the
target frame rate, which is where a clip could straddle one.

A fast camera move changes the picture as much as a cut does, so PySceneDetect's
candidates can be confirmed with the motion-compensated difference of the pair (what is
left after warping one frame onto the next with the optical flow): a real cut leaves a
residual several times the recent ones; fast motion does not.
"""

from __future__ import annotations

from collections import deque
from typing import Optional

import cv2
import numpy as np
from scenedetect import ContentDetector, FrameTimecode
from scenedetect.detector import FlashFilter

#: PySceneDetect's default: mean HSV change (0-255) that counts as a cut.
DEFAULT_THRESHOLD = 27.0
#: A confirmed cut's motion-compensated residual exceeds this many times the recent median.
RESIDUAL_FACTOR = 2.5


class CutDetector:
    """Online cut detection: :meth:`push` each frame; True means a cut lies just before it.

    Args:
        fps: the rate frames are pushed at (for the minimum scene length).
        threshold: PySceneDetect ``ContentDetector`` threshold.
        min_scene_s: a second cut within this time of the last is ignored (flashes).
    """

    def __init__(self, *, fps: float, threshold: float = DEFAULT_THRESHOLD, min_scene_s: float = 0.5):
        self.fps = float(fps)
        # SUPPRESS reports a cut on the frame it happens (MERGE would report it frames later).
        self._detector = ContentDetector(threshold=threshold, min_scene_len=max(1, round(min_scene_s * fps)),
                                         filter_mode=FlashFilter.Mode.SUPPRESS)
        self._count = 0
        self._recent: deque = deque(maxlen=16)

    def push(self, frame_rgb: np.ndarray, *, residual: Optional[float] = None) -> bool:
        """Feed the next frame (RGB uint8, any size); True when it starts a new scene.

        Args:
            frame_rgb: the frame.
            residual: optional motion-compensated difference between the previous frame
                and this one (:attr:`circle_rotate.media.orbit_flow.PairStats.residual`); when
                given, a candidate cut must also stand out from the recent residuals.
        """
        bgr = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)
        cuts = self._detector.process_frame(FrameTimecode(self._count, fps=self.fps), bgr)
        self._count += 1
        is_cut = self._count > 1 and bool(cuts)
        if residual is not None:
            if is_cut and len(self._recent) >= 3:
                is_cut = residual > RESIDUAL_FACTOR * float(np.median(self._recent))
            if is_cut:
                self._recent.clear()  # the new scene has its own level of residual
            else:
                self._recent.append(residual)
        return is_cut

