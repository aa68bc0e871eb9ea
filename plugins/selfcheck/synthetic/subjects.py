"""The turntable's subjects as textured polygons: single solids, and subjects made of parts.

A multi-part subject (a box with a cylinder and a ball on top, a figure holding a ball) is
one subject: every part belongs to the ground-truth mask. Each part gets its own object id
(``PART_ID_BASE + k``) so the truth can say how much of each part is visible, and casts
its own shadow. The single-solid subjects keep ``SUBJECT_ID`` and draw their textures
from the scene's random stream in the same order as always, so their pixels do not change.
"""

from __future__ import annotations

from typing import Callable, List

import numpy as np

from circle_rotate.selfcheck.synthetic import geometry as geo

SUBJECTS = ("box", "cylinder", "figure", "lshape", "car")
MULTIPART_SUBJECTS = ("stack", "holder", "tower")
SUBJECT_ID = 1  # object id of a single-solid subject in the id buffer; clutter uses 2, 3, ...
PART_ID_BASE = 1000  # part k of a multi-part subject has id PART_ID_BASE + k

Texture = Callable[[int, int], np.ndarray]  # (height, width) -> RGB uint8


def is_subject(ids: np.ndarray) -> np.ndarray:
    """The subject's pixels in an id buffer: the single solid, or any part."""
    return (ids == SUBJECT_ID) | (ids >= PART_ID_BASE)


def subject_parts(subject: str, scale: float, yaw_deg: float, texture: Texture) -> List[List[geo.Polygon]]:
    """The subject's parts (one list of polygons per part) standing at the origin."""
    if subject in SUBJECTS:
        return [_single_solid(subject, scale, np.radians(yaw_deg), texture)]
    return _multipart(subject, scale, np.radians(yaw_deg), texture)


def _placer(yaw: float):
    def at(x: float, z: float) -> np.ndarray:  # a point of the subject's own (yawed) frame, on the ground
        return np.array([np.cos(yaw) * x + np.sin(yaw) * z, 0, -np.sin(yaw) * x + np.cos(yaw) * z])
    return at


def _single_solid(subject: str, s: float, yaw: float, texture: Texture) -> List[geo.Polygon]:
    tex = [texture(256, 256) for _ in range(6)]
    sid = SUBJECT_ID
    at = _placer(yaw)
    if subject == "box":
        return geo.box_polygons([0, 0.7 * s, 0], [1.6 * s, 1.4 * s, 1.0 * s], yaw, tex, sid)
    if subject == "cylinder":
        wide = np.concatenate([texture(256, 256) for _ in range(4)], axis=1)
        return geo.prism_polygons([0, 0, 0], 0.7 * s, 1.6 * s, 16, wide, tex[0], sid, yaw=yaw)
    if subject == "figure":  # body, head off to one side, one arm: an asymmetric silhouette
        polys = geo.box_polygons([0, 0.6 * s, 0], [0.8 * s, 1.2 * s, 0.5 * s], yaw, tex, sid)
        polys += geo.box_polygons(at(0.15 * s, 0) + [0, 1.43 * s, 0], [0.45 * s] * 3, yaw, tex[2:], sid)
        polys += geo.box_polygons(at(0.62 * s, 0) + [0, 0.95 * s, 0], [0.45 * s, 0.2 * s, 0.2 * s], yaw, tex[4:], sid)
        return polys
    if subject == "lshape":
        polys = geo.box_polygons(at(-0.3 * s, 0) + [0, 0.75 * s, 0], [0.6 * s, 1.5 * s, 1.2 * s], yaw, tex, sid)
        polys += geo.box_polygons(at(0.45 * s, 0.35 * s) + [0, 0.4 * s, 0], [0.9 * s, 0.8 * s, 0.5 * s], yaw, tex[3:], sid)
        return polys
    # car: long body, cabin set back
    polys = geo.box_polygons([0, 0.45 * s, 0], [2.4 * s, 0.6 * s, 1.1 * s], yaw, tex, sid)
    polys += geo.box_polygons(at(-0.3 * s, 0) + [0, 0.98 * s, 0], [1.3 * s, 0.46 * s, 1.0 * s], yaw, tex[2:], sid)
    return polys


def _ball(center: np.ndarray, radius: float, yaw: float, texture: Texture, object_id: int) -> List[geo.Polygon]:
    return geo.sphere_polygons(center, radius, texture(256, 448), object_id, yaw=yaw)


def _cylinder(base: np.ndarray, radius: float, height: float, yaw: float, texture: Texture,
              object_id: int) -> List[geo.Polygon]:
    return geo.prism_polygons(base, radius, height, 16, texture(256, 1024), texture(128, 128), object_id, yaw=yaw)


def _box(center: np.ndarray, size, yaw: float, texture: Texture, object_id: int) -> List[geo.Polygon]:
    return geo.box_polygons(center, size, yaw, [texture(256, 256) for _ in range(3)], object_id)


def _multipart(subject: str, s: float, yaw: float, texture: Texture) -> List[List[geo.Polygon]]:
    at = _placer(yaw)
    up = np.array([0, 1.0, 0])
    ids = iter(range(PART_ID_BASE, PART_ID_BASE + 16))
    if subject == "stack":  # a box with a cylinder and a ball on top (the parts a mask tends to lose)
        top = 0.9 * s
        return [_box(up * top / 2, [1.5 * s, top, 1.0 * s], yaw, texture, next(ids)),
                _cylinder(at(-0.38 * s, 0.05 * s) + up * top, 0.24 * s, 0.62 * s, yaw, texture, next(ids)),
                _ball(at(0.38 * s, -0.08 * s) + up * (top + 0.28 * s), 0.28 * s, yaw, texture, next(ids))]
    if subject == "holder":  # a figure on two thin legs, holding a ball out at arm's length
        leg, body = 0.55 * s, 0.7 * s
        return [_box(at(-0.15 * s, 0) + up * leg / 2, [0.2 * s, leg, 0.24 * s], yaw, texture, next(ids)),
                _box(at(0.15 * s, 0) + up * leg / 2, [0.2 * s, leg, 0.24 * s], yaw, texture, next(ids)),
                _box(up * (leg + body / 2), [0.62 * s, body, 0.4 * s], yaw, texture, next(ids)),
                _ball(up * (leg + body + 0.2 * s), 0.2 * s, yaw, texture, next(ids)),
                _box(at(0.52 * s, 0) + up * (leg + 0.55 * body), [0.45 * s, 0.14 * s, 0.14 * s], yaw, texture, next(ids)),
                _ball(at(0.88 * s, 0) + up * (leg + 0.55 * body + 0.07 * s + 0.24 * s), 0.24 * s, yaw, texture,
                      next(ids))]
    if subject == "tower":  # a drum, a box on it, a ball on top: tall, three looks
        drum, cube = 0.5 * s, 0.62 * s
        return [_cylinder(np.zeros(3), 0.6 * s, drum, yaw, texture, next(ids)),
                _box(up * (drum + cube / 2), [cube, cube, cube], yaw + 0.4, texture, next(ids)),
                _ball(up * (drum + cube + 0.3 * s), 0.3 * s, yaw, texture, next(ids))]
    raise ValueError(subject)


def clutter_solids(count: int, subject_scale: float, rng: np.random.Generator, texture: Texture,
                   first_id: int) -> List[List[geo.Polygon]]:
    """``count`` small boxes and drums scattered on the floor around the subject."""
    out = []
    for k in range(count):
        ang = rng.uniform(0, 2 * np.pi)
        r = rng.uniform(1.7, 3.2) * max(subject_scale, 0.6)
        h = rng.uniform(0.15, 0.55)
        c = [r * np.cos(ang), h / 2, r * np.sin(ang)]
        if rng.random() < 0.5:
            out.append(geo.box_polygons(c, [rng.uniform(0.2, 0.5), h, rng.uniform(0.2, 0.5)], rng.uniform(0, np.pi),
                                        [texture(64, 64) for _ in range(3)], first_id + k))
        else:
            wide = texture(64, 64 * 8)
            out.append(geo.prism_polygons([c[0], 0, c[2]], rng.uniform(0.1, 0.25), h, 8, wide, texture(64, 64),
                                          first_id + k))
    return out
