"""Boxes in pixels, ``(x0, y0, x1, y1)``: grown by a margin, and the points they hold.

One test of "inside a box" serves the tracker's bound (:mod:`circle_rotate.eval.keyframe_boxes`)
and the benchmarks that judge masks and centroids against hand-labelled boxes.
"""

from __future__ import annotations

from typing import Tuple

#: x0, y0, x1, y1 in pixels.
Box = Tuple[float, float, float, float]


def grown(box: Box, margin: float) -> Box:
    """``box`` grown by ``margin`` of its width and height on each side."""
    x0, y0, x1, y1 = box
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    return x0 - mx, y0 - my, x1 + mx, y1 + my


def in_box(x, y, box: Box, *, margin: float = 0.0):
    """Do the points (``x``, ``y``: numbers or arrays, broadcast together) lie in ``box`` (edges
    included) grown by ``margin`` of its sides?"""
    x0, y0, x1, y1 = grown(box, margin)
    return (x0 <= x) & (x <= x1) & (y0 <= y) & (y <= y1)
