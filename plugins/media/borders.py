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


#: Lines next to the picture's edge that may ring above :data:`DARK` (an encoder's ringing lifts
#: the last rows of a dark grey bar at level 20 to 29-31), and the brightest they may be.
RING_LINES, RING_DARK = 3, DARK + 16


def _black_run(lines: np.ndarray) -> int:
    """How many of ``lines`` (n, length: each pixel's brightest over the clip), from the first
    on, are black throughout, with up to :data:`RING_LINES` ringing ones after at least two
    black ones, where the picture starts right after them."""
    brightest = lines.max(axis=1)
    black = brightest <= DARK
    n = int(np.argmin(black)) if not black.all() else len(black)
    if n < 2:  # no bar (a grey 25-30 edge is a backdrop, as cropdetect's limit of 24 has it)
        return n
    for k in range(1, RING_LINES + 1):
        if n + k >= len(brightest) or brightest[n + k - 1] > RING_DARK:
            break
        if brightest[n + k] > RING_DARK:  # the picture's edge: the lines before it were the bar's ringing
            return n + k
    return n


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


#: Grey levels the lines just inside a bar must be above the bar's last lines, in most frames.
EDGE_STEP = 12.0
#: The least share of each side a letterbox leaves as picture.
LEAST_PICTURE = 0.5
#: Spread (grey levels, median over frames) a bar's lines may have, away from the picture's edge:
#: an encoded bar is flat (0.0-0.3), a dark sky or floor keeps its texture (3 and more).
BAR_FLAT = 1.5


def _lines(grey: np.ndarray, side: str, start: int, stop: int) -> np.ndarray:
    """Lines ``start``..``stop`` (exclusive) counted inward from ``side``'s edge, in every frame (float)."""
    h, w = grey.shape[1:]
    cut = {"top": (slice(start, stop), slice(None)), "bottom": (slice(h - stop, h - start), slice(None)),
           "left": (slice(None), slice(start, stop)), "right": (slice(None), slice(w - stop, w - start))}[side]
    return grey[:, cut[0], cut[1]].astype(np.float32)


def _flat(grey: np.ndarray, side: str, n: int) -> bool:
    """Whether the band's lines away from the picture (whose edge rings in the encode) are one level."""
    return float(np.median(_lines(grey, side, 0, max(1, n - 2)).std(axis=(1, 2)))) <= BAR_FLAT


def _edge_step(grey: np.ndarray, side: str, n: int) -> float:
    """Median over frames of (mean of the 2 lines inside the band) - (mean of its last 2 lines)."""
    band, inside = _lines(grey, side, max(0, n - 2), n), _lines(grey, side, n, n + 2)
    return float(np.median(inside.mean(axis=(1, 2)) - band.mean(axis=(1, 2))))


def letterbox(grey: np.ndarray) -> Bars:
    """The bars of :func:`find_bars` that frame a picture, for cropping them off: each band must
    be flat (one level, as an encoded bar is; a dark sky keeps its texture) and stop at an edge
    (the picture just inside is clearly brighter, in most frames; a night floor fades into its
    shadows), and the picture left must hold at least :data:`LEAST_PICTURE` of each side. ``grey``:
    frames spread over the whole video (a dark title card, or bars only in the opening seconds,
    are then not bars)."""
    found = find_bars(grey)
    _, h, w = grey.shape
    kept = {side: n if n and _flat(grey, side, n) and _edge_step(grey, side, n) >= EDGE_STEP else 0
            for side, n in (("top", found.top), ("bottom", found.bottom), ("left", found.left), ("right", found.right))}
    if kept["top"] + kept["bottom"] > (1 - LEAST_PICTURE) * h or kept["left"] + kept["right"] > (1 - LEAST_PICTURE) * w:
        return Bars()
    return Bars(kept["top"], kept["bottom"], kept["left"], kept["right"])
