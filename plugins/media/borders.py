"""Bars: black bands along a clip's edges, the same in every frame.

A clip letterboxed or pillarboxed into another frame (a repost, a side-by-side cut apart, a
conditioning image that had bars) carries them. The subject search would take their straight,
still edges for evidence: on two of the study's GIFs with bars added above and below, the drift
read 8.96 and 14.55 px where the GIFs themselves read 1.05 and 1.82. So the subject is looked
for in the picture between them (:func:`circle_rotate.eval.drift.subject_masks`). The other
metrics keep their definitions over the whole frame, as the reference computes them; the note
gives the crop that leaves the bars out of those too. ``prepare`` looks for them in each clip it
cuts, and notes the source's crop that leaves them out of training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Brightest grey level a bar's pixel may have in any frame: H.264 and GIF palettes leave a few
#: levels of noise in black. Only black counts, as FFmpeg's cropdetect has it, so that a plain
#: studio backdrop or a clear sky along an edge is not taken for a bar.
DARK = 24
#: Smallest band reported, as a fraction of the side it cuts off.
LEAST = 0.02


@dataclass(frozen=True)
class Bars:
    """Rows (top, bottom) and columns (left, right) of black band along each edge."""

    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0

    def __bool__(self) -> bool:
        return bool(self.top or self.bottom or self.left or self.right)

    def crop(self, width: int, height: int) -> str:
        """FFmpeg's ``crop=W:H:X:Y`` that leaves the picture."""
        return (f"crop={width - self.left - self.right}:{height - self.top - self.bottom}:"
                f"{self.left}:{self.top}")

    def describe(self) -> str:
        sides = [f"{n} {'rows' if s in ('top', 'bottom') else 'columns'} at the {s}"
                 for s, n in (("top", self.top), ("bottom", self.bottom), ("left", self.left), ("right", self.right))
                 if n]
        return ", ".join(sides)


def _black_run(lines: np.ndarray) -> int:
    """How many of ``lines`` (n, length: each pixel's brightest over the clip), from the first
    on, are black throughout."""
    black = lines.max(axis=1) <= DARK
    return int(np.argmin(black)) if not black.all() else len(black)


def find_bars(grey: np.ndarray) -> Bars:
    """The black bands along the edges of a clip's grey frames (T, H, W); none under
    :data:`LEAST` of a side, and never all of it."""
    _, h, w = grey.shape
    # every frame: a dark subject passing through an edge in one frame is not a bar there
    brightest = grey.max(axis=0)
    top, bottom = _black_run(brightest), _black_run(brightest[::-1])
    left, right = _black_run(brightest.T), _black_run(brightest.T[::-1])
    if top + bottom >= h or left + right >= w:  # a black clip: nothing to crop to
        return Bars()
    def kept(n: int, side: int) -> int:
        return n if n >= max(2, LEAST * side) else 0

    return Bars(kept(top, h), kept(bottom, h), kept(left, w), kept(right, w))
