"""What the drift measured, to look at: the sampled frames with the mask outline (and the
forward pass's, where it counts), the centroid path, and the boxes the user bound the mask to."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

#: Long side (pixels) of each tile.
TILE = 240
_OUTLINE = (255, 64, 0)  # RGB
_SECOND = (64, 255, 64)
_PATH = (0, 255, 255)
_NOW = (255, 0, 255)
_BOUND = (255, 255, 255)


def contact_sheet(frames: Sequence[np.ndarray], masks: Sequence[np.ndarray], centroids: np.ndarray, *,
                  second: Optional[Sequence[np.ndarray]] = None,
                  bounds: Sequence[Optional[Tuple[float, float, float, float]]] = (),
                  numbers: Optional[Sequence[int]] = None, columns: int = 8,
                  title: Optional[str] = None) -> np.ndarray:
    """One RGB image: per sampled frame a tile with the mask's outline (orange), the whole
    centroid path (thin) and that frame's centroid (a dot).

    Args:
        frames: K (H, W, 3) RGB uint8 frames.
        masks: K (H, W) bool masks.
        centroids: (K, 2) x, y in the frames' pixels.
        second: K more masks whose outlines are drawn too (green): the forward pass's, where
            the centroid is the mean of both passes'.
        bounds: per frame, a box (x0, y0, x1, y1 in the frames' pixels) the mask was kept
            within (the user's boxes), or None; drawn white. Empty: none.
        numbers: each frame's number in the video, written on its tile (what a box drawn on a
            later frame is keyed by); default: the tiles' order.
        columns: tiles per row.
        title: a line written above the tiles.

    Returns:
        (rows, cols, 3) uint8 RGB.
    """
    h, w = frames[0].shape[:2]
    scale = TILE / max(h, w)
    th, tw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    path = np.round(np.asarray(centroids, np.float64) * scale).astype(np.int32)
    tiles = []
    for k, (frame, mask) in enumerate(zip(frames, masks)):
        tile = np.ascontiguousarray(cv2.resize(frame, (tw, th), interpolation=cv2.INTER_AREA))
        outlines = ((second[k], _SECOND),) if second is not None else ()
        if k < len(bounds) and bounds[k] is not None:
            x0, y0, x1, y1 = (int(round(v * scale)) for v in bounds[k])
            cv2.rectangle(tile, (x0, y0), (x1, y1), _BOUND, 1)
        for m, colour in outlines + ((mask, _OUTLINE),):
            small = cv2.resize(m.astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(tile, contours, -1, colour, 1)
        cv2.polylines(tile, [path.reshape(-1, 1, 2)], False, _PATH, 1)
        cv2.circle(tile, tuple(int(v) for v in path[k]), 3, _NOW, -1)
        label = str(k if numbers is None else numbers[k])
        cv2.putText(tile, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    sheet = np.vstack(rows)
    if title:
        band = np.full((18, sheet.shape[1], 3), 255, np.uint8)
        cv2.putText(band, title, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        sheet = np.vstack([band, sheet])
    return sheet


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of an RGB image."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the contact sheet as PNG")
    return buf.tobytes()
