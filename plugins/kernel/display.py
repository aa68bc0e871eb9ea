"""How a video's stored pixels are meant to be seen: display matrix and pixel aspect.

Phones store portrait video as landscape pixels plus a display matrix (MP4/MOV's ``tkhd``,
Matroska's projection, 3GP's as MP4's); front cameras and editors add a mirror; DV, HDV and
anamorphic footage has non-square pixels (the sample aspect ratio). A player shows all three;
a decoder hands over the stored pixels. FFmpeg puts the display matrix on every decoded frame
(``DISPLAYMATRIX`` side data), whatever the container, so it is read there.

The matrix (``libavutil/display.h``) maps a stored pixel ``(x, y)`` to
``(a*x + c*y, b*x + d*y)`` (plus a translation), ``x`` to the right and ``y`` down, with
``a b c d`` the entries 0, 1, 3 and 4 in 16.16 fixed point. A quarter-turn matrix with a
negative determinant is a mirror followed by a turn.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

_ONE = float(1 << 16)
_TURNS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


class NotQuarterTurn(ValueError):
    """The display matrix turns the picture by an angle that is not a multiple of 90 degrees."""


@dataclass(frozen=True)
class Display:
    """Stored picture -> upright picture: scale the width by ``pixel_aspect``, mirror left-right
    when ``mirror``, then turn ``rotation`` degrees clockwise."""

    rotation: int = 0
    mirror: bool = False
    pixel_aspect: Fraction = Fraction(1)

    @property
    def is_identity(self) -> bool:
        return not self.rotation and not self.mirror and self.pixel_aspect == 1

    def square_size(self, width: int, height: int) -> Tuple[int, int]:
        """The stored picture's (width, height) in square pixels, not yet turned."""
        return max(1, round(width * self.pixel_aspect)), height

    def display_size(self, width: int, height: int) -> Tuple[int, int]:
        """(width, height) of the upright picture of a ``width`` x ``height`` stored one."""
        w, h = self.square_size(width, height)
        return (h, w) if self.rotation in (90, 270) else (w, h)

    def unturned(self, width: int, height: int) -> Tuple[int, int]:
        """The stored-orientation size whose upright picture is ``width`` x ``height``."""
        return (height, width) if self.rotation in (90, 270) else (width, height)

    def upright(self, rgb: np.ndarray) -> np.ndarray:
        """Mirror and turn a picture already in square pixels."""
        if self.mirror:
            rgb = rgb[:, ::-1]
        if self.rotation:
            return cv2.rotate(np.ascontiguousarray(rgb), _TURNS[self.rotation])
        return np.ascontiguousarray(rgb) if self.mirror else rgb

    def changes(self) -> list:
        """What a player does that a plain decoder does not, in words (empty for none)."""
        out = [f"turned {self.rotation} deg"] * bool(self.rotation) + ["mirrored"] * self.mirror
        if self.pixel_aspect != 1:
            out.append(f"pixel aspect {self.pixel_aspect.numerator}:{self.pixel_aspect.denominator}")
        return out


def orientation_from_matrix(matrix: Sequence[int]) -> Tuple[int, bool]:
    """(clockwise rotation, mirror) of a display matrix (nine int32 as FFmpeg stores them).

    Raises:
        NotQuarterTurn: the matrix turns by another angle, or is degenerate.

    Example:
        >>> orientation_from_matrix((0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30))  # an iPhone portrait
        (90, False)
    """
    a, b, c, d = (matrix[i] / _ONE for i in (0, 1, 3, 4))
    det = a * d - b * c
    if abs(det) < 1e-6:
        raise NotQuarterTurn("the display matrix is degenerate")
    mirror = det < 0
    if mirror:  # M = R @ diag(-1, 1): undo the mirror on the first column to leave the turn
        a, b = -a, -b
    angle = math.degrees(math.atan2(b, a)) % 360
    quarter = round(angle / 90) % 4 * 90
    if abs((angle - quarter + 180) % 360 - 180) > 1.0:
        raise NotQuarterTurn(f"the display matrix turns the picture by {angle:.0f} degrees")
    return quarter, mirror


def frame_display(frame, pixel_aspect: Optional[Fraction]) -> Display:
    """The :class:`Display` of a decoded PyAV frame (its matrix side data) with the stream's pixel
    aspect (``video_io.pixel_aspect``: None for square pixels).

    Raises:
        NotQuarterTurn: as :func:`orientation_from_matrix`.
    """
    side = frame.side_data.get("DISPLAYMATRIX") if hasattr(frame, "side_data") else None
    rotation, mirror = orientation_from_matrix(struct.unpack("=9i", bytes(side))) if side is not None else (0, False)
    return Display(rotation, mirror, pixel_aspect or Fraction(1))
