"""Procedural textures for synthetic scenes: rich enough in edges and gradients that optical
flow, feature tracking and codecs behave as they do on real footage, and fully determined
by a seed."""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import cv2
import numpy as np


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Value noise in [0, 1]: random values on a coarse grid, bicubically upsampled."""
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    grid = rng.random((gh, gw), dtype=np.float32)
    big = cv2.resize(grid, (gw * cell, gh * cell), interpolation=cv2.INTER_CUBIC)
    return np.clip(big[:h, :w], 0.0, 1.0)


def fractal_noise(rng: np.random.Generator, h: int, w: int, *, cells=(64, 24, 8, 3), weights=(0.45, 0.3, 0.17, 0.08)) -> np.ndarray:
    """Multi-octave value noise in [0, 1] of shape (h, w)."""
    acc = np.zeros((h, w), np.float32)
    for cell, wt in zip(cells, weights):
        acc += wt * _smooth_noise(rng, h, w, cell)
    acc -= acc.min()
    return acc / max(float(acc.max()), 1e-6)


def _palette(rng: np.random.Generator, n: int, *, saturation=(0.35, 0.9), value=(0.35, 0.95)) -> np.ndarray:
    hsv = np.stack([rng.uniform(0, 180, n), rng.uniform(*saturation, n) * 255, rng.uniform(*value, n) * 255], axis=1)
    rgb = cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0]
    return rgb.astype(np.float32)


def surface_texture(rng: np.random.Generator, h: int = 256, w: int = 256) -> np.ndarray:
    """A patterned object surface: coloured noise, a stripe or checker pattern and a few
    solid marks (stickers, labels). RGB uint8 (h, w, 3)."""
    base, accent, mark = _palette(rng, 3)
    noise = fractal_noise(rng, h, w)[..., None]
    img = base * (0.6 + 0.5 * noise)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(0, 3)
    period = rng.uniform(18, 48)
    angle = rng.uniform(0, np.pi)
    if kind == 0:  # stripes
        phase = (np.cos(angle) * xx + np.sin(angle) * yy) / period
        pattern = (np.sin(2 * np.pi * phase) > 0.3)[..., None]
    elif kind == 1:  # checker
        pattern = (((xx // period).astype(int) + (yy // period).astype(int)) % 2 == 0)[..., None]
    else:  # dots
        pattern = ((np.sin(xx / period * 2 * np.pi) * np.sin(yy / period * 2 * np.pi)) > 0.55)[..., None]
    img = np.where(pattern, 0.55 * img + 0.45 * accent, img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = min(w, x0 + int(rng.integers(12, w // 3))), min(h, y0 + int(rng.integers(8, h // 4)))
        img[y0:y1, x0:x1] = mark * (0.85 + 0.3 * noise[y0:y1, x0:x1])
    return np.clip(img, 0, 255).astype(np.uint8)


def ground_texture(rng: np.random.Generator, size: int = 2048) -> np.ndarray:
    """A floor: tiles with grout lines, stains and grain. RGB uint8 (size, size, 3)."""
    base = _palette(rng, 1, saturation=(0.05, 0.35), value=(0.45, 0.7))[0]
    noise = fractal_noise(rng, size, size, cells=(256, 96, 24, 6))[..., None]
    img = base * (0.7 + 0.45 * noise)
    tile = int(rng.integers(64, 160))
    lines = (np.arange(size) % tile) < 3
    img[lines, :] *= 0.55  # grout
    img[:, lines] *= 0.55
    n_tiles = size // tile + 1
    tiles = rng.uniform(0.85, 1.15, (n_tiles, n_tiles)).astype(np.float32)
    img *= cv2.resize(tiles, (n_tiles * tile, n_tiles * tile), interpolation=cv2.INTER_NEAREST)[:size, :size, None]
    return np.clip(img, 0, 255).astype(np.uint8)


def backdrop_texture(rng: np.random.Generator, h: int = 768, w: int = 4096, *, studio: bool = False) -> np.ndarray:
    """A 360-degree wall: buildings and windows (city) or soft panels (studio). RGB uint8."""
    if studio:
        base = _palette(rng, 1, saturation=(0.05, 0.25), value=(0.6, 0.85))[0]
        img = base * (0.8 + 0.3 * fractal_noise(rng, h, w, cells=(256, 64, 16, 4))[..., None])
        for x in range(0, w, int(rng.integers(180, 320))):
            img[:, x:x + 6] *= 0.7  # panel seams
        return np.clip(img, 0, 255).astype(np.uint8)
    sky = np.linspace(1.0, 0.75, h, dtype=np.float32)[:, None, None] * np.array([150, 180, 220], np.float32)
    img = np.broadcast_to(sky, (h, w, 3)).copy()
    x = 0
    colours = _palette(rng, 64, saturation=(0.1, 0.5), value=(0.3, 0.8))
    while x < w:
        bw = int(rng.integers(60, 220))
        top = int(rng.integers(h // 8, h * 2 // 3))
        col = colours[int(rng.integers(0, len(colours)))]
        img[top:, x:x + bw] = col * (0.85 + 0.3 * fractal_noise(rng, h - top, min(bw, w - x), cells=(32, 8, 3, 2))[..., None])
        win = int(rng.integers(14, 30))
        for wy in range(top + 10, h - 10, win):
            for wx in range(x + 6, min(x + bw, w) - 8, win):
                if rng.random() < 0.7:
                    img[wy:wy + win // 2, wx:wx + win // 2] = (255, 230, 150) if rng.random() < 0.3 else col * 0.45
        x += bw
    return np.clip(img, 0, 255).astype(np.uint8)


# Photographs shipped inside the scikit-image wheel (no download): real-world colour
# statistics, fine detail and soft gradients that procedural noise lacks. The grey ones are
# surfaces (brick, grass, gravel) and get a tint.
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "brick", "grass",
           "gravel")


@functools.lru_cache(maxsize=1)
def _photo_library() -> Tuple[Tuple[np.ndarray, ...], Optional[str]]:
    try:
        from skimage import data
    except ImportError:
        return (), "scikit-image is not installed (pip install 'circle-rotate[test]'); procedural textures used instead"
    out = []
    for name in _PHOTOS:
        img = np.asarray(getattr(data, name)())
        out.append(np.ascontiguousarray(img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)))
    return tuple(out), None


def photo_unavailable() -> Optional[str]:
    """Why photo textures cannot be used here (``None`` when they can)."""
    return _photo_library()[1]


def photo_texture(rng: np.random.Generator, h: int = 256, w: int = 256) -> np.ndarray:
    """A random crop of a real photograph, tinted and resized to (h, w). RGB uint8.

    Falls back to :func:`surface_texture` when scikit-image is absent (see :func:`photo_unavailable`).
    """
    photos, _ = _photo_library()
    if not photos:
        return surface_texture(rng, h, w)
    img = photos[int(rng.integers(0, len(photos)))]
    ph, pw = img.shape[:2]
    scale = rng.uniform(0.35, 0.9)
    ch, cw = max(16, int(ph * scale)), max(16, int(pw * scale))
    y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    tint = _palette(rng, 1, saturation=(0.1, 0.6), value=(0.8, 1.0))[0] / 255.0
    return np.clip(crop * (0.45 + 0.55 * tint), 0, 255).astype(np.uint8)


def photo_backdrop(rng: np.random.Generator, h: int = 768, w: int = 4096) -> np.ndarray:
    """A 360-degree wall of photographs side by side (a gallery, a street of posters). RGB uint8."""
    strips, x = [], 0
    while x < w:
        sw = int(rng.integers(300, 900))
        strips.append(photo_texture(rng, h, sw))
        x += sw
    return np.ascontiguousarray(np.concatenate(strips, axis=1)[:, :w])


def ground_crop(rng: np.random.Generator, ground: np.ndarray, h: int = 256, w: int = 256) -> np.ndarray:
    """A piece of the floor's own texture, for a subject that wears the ground's colours."""
    gh, gw = ground.shape[:2]
    y0, x0 = int(rng.integers(0, gh - h)), int(rng.integers(0, gw - w))
    # Upright faces catch less light than the floor (shade 0.5-0.76 against ~0.98), so the piece
    # is brightened by as much: rendered, the subject then wears the floor's own colours.
    gain = rng.uniform(1.2, 1.5)
    return np.clip(ground[y0:y0 + h, x0:x0 + w].astype(np.float32) * gain, 0, 255).astype(np.uint8)


def photo_ground(rng: np.random.Generator, size: int = 2048) -> np.ndarray:
    """A floor tiled from a photographed surface (brick, grass or gravel), mirrored at the seams."""
    photos, _ = _photo_library()
    if not photos:
        return ground_texture(rng, size)
    grey = [p for name, p in zip(_PHOTOS, photos) if name in ("brick", "grass", "gravel")]
    tile = grey[int(rng.integers(0, len(grey)))].astype(np.float32)
    row = np.concatenate([tile, tile[:, ::-1]], axis=1)
    block = np.concatenate([row, row[::-1]], axis=0)
    reps = size // block.shape[0] + 1
    img = np.tile(block, (reps, reps, 1))[:size, :size]
    tint = _palette(rng, 1, saturation=(0.1, 0.45), value=(0.7, 1.0))[0] / 255.0
    return np.clip(img * (0.35 + 0.65 * tint), 0, 255).astype(np.uint8)
