"""Scene cuts, with PySceneDetect's content detector fed the small frames we already have.

PySceneDetect normally decodes the video itself; ``prepare`` decodes each source once, so
it hands the detector the analysis-size frames it makes anyway (PySceneDetect downscales
to a similar size by default). Cuts are looked for between consecutive *samples* at the
target frame rate, which is where a clip could straddle one.

A fast camera move changes the picture as much as a cut does, so PySceneDetect's
candidates can be confirmed with the motion-compensated difference of the pair (what is
left after warping one frame onto the next with the optical flow): a real cut leaves a
residual several times the recent ones; fast motion does not.

A cut between two takes of the same turntable set changes the colours too little for
PySceneDetect, yet the picture jumps (the subject turned to another angle): such a residual,
several times the recent ones and ``RESIDUAL_MIN`` grey levels at least (orbit QC rejects a clip
on a like rule, :mod:`circle_rotate.media.orbit`), is a cut on its own.
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
#: A cut PySceneDetect did not see (:class:`CutDetector`) needs a residual this many times the
#: recent median, and this many grey levels (contrast-normalised analysis frames): a 15-degree
#: jump between two takes of one set left 10.7 over a median of 2.9; compression and motion
#: blur stay under 2x.
RESIDUAL_ONLY_FACTOR = 3.0
RESIDUAL_MIN = 8.0


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
        self._min_gap = max(1, round(min_scene_s * fps))
        self._last_cut = -self._min_gap

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
            if len(self._recent) >= 3:
                median = float(np.median(self._recent))
                is_cut = (residual > RESIDUAL_FACTOR * median if is_cut else
                          residual > RESIDUAL_ONLY_FACTOR * median and residual >= RESIDUAL_MIN
                          and self._count - self._last_cut > self._min_gap)
            if is_cut:
                self._recent.clear()  # the new scene has its own level of residual
            else:
                self._recent.append(residual)
        if is_cut:
            self._last_cut = self._count
        return is_cut

