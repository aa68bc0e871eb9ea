"""Fades: frames at a clip's start or end that show no picture yet, or no longer.

A clip cut in an editor may open on a black leader or fade in from black or white, and close
with a fade out. The subject search on such a first frame finds nothing to go on (it fell back
to the image's centre, and the drift read 21.1 px on a development orbit that reads 18.5 px
without the fade). The reference, finding the subject with a detector, leaves a frame without a
detection out of the drift; here the frames of a leading or trailing fade are left out the same
way, and the subject is looked for on the first frame that shows the picture
(:func:`circle_rotate.eval.drift.subject_masks`).

A fade scales the picture's contrast towards nothing while its brightness goes to black or to
white. A dim or flat frame in the middle of a clip is content, and so is a clip whose first
frames are merely less busy than its last (a camera pulling back): only a leading or trailing run
of frames both far flatter and far darker (or brighter) than the clip's typical frame is a fade.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: A fade's frame has under this share of the clip's typical contrast (grey-level standard
#: deviation, median over frames), and its mean brightness under ``2 * FAINT`` of the typical
#: (towards black) or its distance to white under ``2 * FAINT`` of the typical (towards white).
FAINT = 0.25
#: Once a fade is found, the frames next to it with under this share of the typical contrast are
#: still its ramp (the picture half-faded in, where dense flow mistakes the brightening for
#: motion); without a fade no frame is left out for its contrast alone.
RAMP = 0.85
#: How many frames past a ramp's frame its contrast is measured against.
NEAR = 8
#: Contrast (grey levels) under which a clip's typical frame shows nothing: a blank clip has no
#: fade to find.
FLAT = 1.0


@dataclass(frozen=True)
class Shown:
    """The frames (``first`` to ``last``, inclusive) of a ``count``-frame clip that show the picture."""

    first: int
    last: int
    count: int

    def __bool__(self) -> bool:
        """True where a fade leaves frames out."""
        return self.first > 0 or self.last < self.count - 1

    def keep(self, indices: np.ndarray) -> np.ndarray:
        """The ``indices`` that show the picture."""
        indices = np.asarray(indices)
        return indices[(indices >= self.first) & (indices <= self.last)]

    def describe(self) -> str:
        def frames(a: int, b: int) -> str:
            return f"frame {a}" if a == b else f"frames {a}-{b}"

        parts = []
        if self.first > 0:
            parts.append(f"{frames(0, self.first - 1)} (a fade-in or leader)")
        if self.last < self.count - 1:
            parts.append(f"{frames(self.last + 1, self.count - 1)} (a fade-out)")
        return " and ".join(parts)


def _faint(contrast: np.ndarray, brightness: np.ndarray) -> np.ndarray:
    typical_contrast = float(np.median(contrast))
    typical = float(np.median(brightness))
    flat = contrast < FAINT * typical_contrast
    dark = brightness < 2 * FAINT * typical
    light = 255.0 - brightness < 2 * FAINT * (255.0 - typical)
    return flat & (dark | light)


def _ramp(contrast: np.ndarray, i: int, beyond: np.ndarray) -> bool:
    """Is frame ``i`` still a fade's ramp: flatter than the frames ``beyond`` it, further into the
    clip? (The picture's own contrast drifts over a clip: the ramp is measured against its next
    frames, not the clip's typical one.)"""
    return beyond.size > 0 and bool(contrast[i] < RAMP * float(np.median(beyond)))


@dataclass(frozen=True)
class Levels:
    """Per frame of a clip: its grey levels' standard deviation (contrast) and mean (brightness)."""

    contrast: np.ndarray
    brightness: np.ndarray


def frame_levels(grey: np.ndarray) -> Levels:
    """The :class:`Levels` of (T, H, W) grey frames (the clip's are :attr:`Clip.levels`, computed once)."""
    # every fourth pixel each way: a frame's mean and spread, not its detail
    small = grey[:, ::4, ::4].reshape(grey.shape[0], -1).astype(np.float32)
    return Levels(small.std(axis=1), small.mean(axis=1))


def is_blank(levels: Levels) -> bool:
    """Is every frame one flat colour (no picture at all)?"""
    return bool((levels.contrast < FLAT).all())


def find_shown(levels: Levels) -> Shown:
    """The frames of a clip between its leading and trailing fades."""
    contrast, brightness = levels.contrast, levels.brightness
    count = contrast.shape[0]
    if float(np.median(contrast)) < FLAT:
        return Shown(0, count - 1, count)
    # at least half the frames have the typical contrast, so some frame is not faint
    faint = _faint(contrast, brightness)
    first, last = 0, count - 1
    if faint[0]:
        while first < count - 1 and (faint[first] or _ramp(contrast, first, contrast[first + 1:first + 1 + NEAR])):
            first += 1
    if faint[-1]:
        while last > first and (faint[last] or _ramp(contrast, last, contrast[max(first, last - NEAR):last])):
            last -= 1
    return Shown(first, last, count)
