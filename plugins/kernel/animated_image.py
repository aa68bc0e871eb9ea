"""Animated WebP and PNG: what ComfyUI's SaveAnimatedWEBP and SaveAnimatedPNG nodes write.

FFmpeg as PyAV's wheels ship it cannot decode an animated WebP at all, and a folder of
APNGs named ``.png`` looks like a folder of still frames, each read as its first frame.
Pillow decodes both kinds, each frame composed onto the canvas, with its display time in
milliseconds, so both are read here the same way.

Encoders store a frame identical to the one before it as a longer display time of that
one: Pillow's APNG writer does, and libwebp's animation encoder does so for a frame that
differs from the one before by less than its lossy tolerance, too. So a clip can
hold fewer frames than were made, and its frames are no longer evenly spaced in time. The
frames here are spread back out on the clip's frame period (its shortest display time): a
frame shown for k periods is k frames, as it was made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from circle_rotate.kernel.errors import UserError

PathLike = Union[str, os.PathLike]

#: File name endings an animation may have (``.webp`` and ``.png`` may also be stills).
ANIMATED_SUFFIXES = (".webp", ".png", ".apng")

#: Highest frame rate a whole-millisecond period is read back to (see :func:`frame_rate`).
_MOST_FPS = 1000

_FIX_CORRUPT = "the file is corrupt or truncated; re-export or re-download it"


@dataclass(frozen=True)
class Timing:
    """When each stored frame shows, and what that makes of the clip."""

    durations: Tuple[float, ...]  # display time of each stored frame, milliseconds (0 where the file gives none)
    period: Optional[float]  # the clip's frame period, ms; None when the file gives no display times

    @property
    def repeats(self) -> List[int]:
        """How many frames each stored frame stands for."""
        if self.period is None:
            return [1] * len(self.durations)
        return [max(1, int(round(d / self.period))) for d in self.durations]

    @property
    def frame_count(self) -> int:
        return sum(self.repeats)

    @property
    def fps(self) -> float:
        """Frames per second; 0.0 when the file gives no display times."""
        return 0.0 if self.period is None else frame_rate(self.period)


@dataclass(frozen=True)
class Animation:
    """A decoded animation: its frames spread out on the frame period, and its timing."""

    frames: List[np.ndarray]  # (H, W, 3) uint8 RGB each
    timing: Timing

    @property
    def fps(self) -> float:
        return self.timing.fps


def frame_rate(period: float) -> float:
    """The frame rate a period in milliseconds was written from.

    ComfyUI's nodes hand Pillow ``int(1000 / fps)`` whole milliseconds, so 16 fps is stored
    as 62 ms, not 62.5. When exactly one whole rate truncates to the period, that rate is
    the answer (62 -> 16, 41 -> 24, 33 -> 30); otherwise ``1000 / period``.
    """
    if period <= 0:
        raise ValueError(f"a frame period must be positive, got {period}")
    if float(period).is_integer():
        rates = [f for f in range(1, _MOST_FPS + 1) if int(1000 / f) == int(period)]
        if len(rates) == 1:
            return float(rates[0])
    return 1000.0 / float(period)


def timing_of(durations: Sequence[float]) -> Timing:
    """The timing of stored frames shown for ``durations`` milliseconds each."""
    shown = [float(d) for d in durations if d and d > 0]
    return Timing(tuple(float(d or 0) for d in durations), min(shown) if shown else None)


def is_animation(path: PathLike) -> bool:
    """Is ``path`` an image file holding more than one frame (an animated WebP or PNG)?

    Reads only what Pillow needs to count the frames; False for anything Pillow cannot open.
    """
    p = Path(path)
    if p.suffix.lower() not in ANIMATED_SUFFIXES or not p.is_file():
        return False
    try:
        with Image.open(p) as im:
            return bool(getattr(im, "is_animated", False)) and getattr(im, "n_frames", 1) > 1
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise UserError("video not found", path=path, fix="check the path")
    try:
        return Image.open(path)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UserError(f"cannot be opened as an animated image ({exc})", path=path, fix=_FIX_CORRUPT) from None


def _require_frames(im: Image.Image, path: Path) -> None:
    if getattr(im, "n_frames", 1) < 2:
        # libwebp's lossy animation encoder folds frames that differ by less than its
        # tolerance into the one before; a clip that barely changes can fold into one frame
        lossy = " (a lossy WebP keeps one frame of a clip that barely changes: save it lossless)" \
            if im.format == "WEBP" else ""
        raise UserError("is a still image (one frame), not a video", path=path,
                        fix=f"pass the video, or the folder its frames are in{lossy}")


def _walk(im: Image.Image, path: Path, *, decode: bool) -> Iterator[float]:
    """The display time of each stored frame; with ``decode`` Pillow composes each one
    (a WebP's display times are known only once a frame is decoded)."""
    for i in range(getattr(im, "n_frames", 1)):
        try:
            im.seek(i)
            if decode or im.format == "WEBP":
                im.load()
        except (OSError, EOFError, ValueError) as exc:
            raise UserError(f"decoding failed at frame {i} ({exc})", path=path, fix=_FIX_CORRUPT) from None
        yield float(im.info.get("duration") or 0)


def probe_animation(path: PathLike) -> tuple[int, int, Timing]:
    """(width, height, timing) of an animated image (for a WebP this decodes every frame).

    Raises:
        UserError: missing, unreadable, or a still image (one frame is not a video).
    """
    p = Path(path)
    with _open(p) as im:
        _require_frames(im, p)
        size = im.size
        return size[0], size[1], timing_of(list(_walk(im, p, decode=False)))


def read_animation(path: PathLike) -> Animation:
    """Decode an animated WebP or PNG into RGB frames, held frames spread out (module doc).

    Raises:
        UserError: missing, unreadable, truncated (naming the frame), or a still image.
    """
    p = Path(path)
    stored, durations = [], []
    with _open(p) as im:
        _require_frames(im, p)
        for duration in _walk(im, p, decode=True):
            # Pillow gives an animated WebP an alpha channel; a generated clip is opaque
            stored.append(np.asarray(im.convert("RGB")))
            durations.append(duration)
    timing = timing_of(durations)
    frames = [frame for frame, k in zip(stored, timing.repeats) for _ in range(k)]
    return Animation(frames, timing)
