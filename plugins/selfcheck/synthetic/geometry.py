"""A small exact renderer: pinhole camera, textured planar polygons with a z-buffer, a
ray-traced ground plane and a cylindrical backdrop.

Conventions (world): y up, the ground is y = 0, the subject stands at the origin.
Camera coordinates follow OpenCV: x right, y down, z forward; pixel (u, v) with u to the
right and v down. Polygons are exact: each face's image is a homography of its texture,
its inverse depth is affine in (u, v), so visibility and the subject mask are exact per
pixel (no anti-aliasing: a mask pixel is the subject or it is not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import cv2
import numpy as np

UP = np.array([0.0, 1.0, 0.0])


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: ``rotation`` maps world to camera axes, ``position`` in world units."""

    position: np.ndarray
    rotation: np.ndarray  # 3x3, rows: right, down, forward
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, float) - self.position) @ self.rotation.T

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points (N, 3) -> pixel coordinates (N, 2); points must be in front."""
        pc = self.to_camera(points)
        return np.stack([self.fx * pc[:, 0] / pc[:, 2] + self.cx, self.fy * pc[:, 1] / pc[:, 2] + self.cy], axis=1)


def look_at(position: Sequence[float], target: Sequence[float], *, width: int, height: int, hfov_deg: float,
            roll_deg: float = 0.0) -> Camera:
    """A camera at ``position`` looking at ``target`` with world-up kept up (plus an optional roll)."""
    pos = np.asarray(position, float)
    fwd = np.asarray(target, float) - pos
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, UP)
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    if roll_deg:
        a = np.radians(roll_deg)
        right, up = np.cos(a) * right + np.sin(a) * up, -np.sin(a) * right + np.cos(a) * up
    rot = np.stack([right, -up, fwd])
    fx = (width / 2) / np.tan(np.radians(hfov_deg) / 2)
    return Camera(pos, rot, fx, fx, width / 2.0, height / 2.0, width, height)


@dataclass
class Polygon:
    """A planar convex textured polygon. The texture spans the parallelogram
    ``origin + s * axis_s + t * axis_t`` for s, t in [0, 1]."""

    vertices: np.ndarray  # (N, 3) world, convex, planar
    origin: np.ndarray
    axis_s: np.ndarray
    axis_t: np.ndarray
    texture: np.ndarray  # (th, tw, 3) uint8
    outward: np.ndarray  # unit normal pointing out of the solid
    object_id: int


def box_polygons(center: Sequence[float], size: Sequence[float], yaw: float, textures: List[np.ndarray],
                 object_id: int, *, bottom: bool = False) -> List[Polygon]:
    """The faces of an axis-aligned (then yawed) box standing on y = center[1] - size[1]/2."""
    c = np.asarray(center, float)
    sx, sy, sz = (np.asarray(size, float) / 2)
    cy_, sy_ = np.cos(yaw), np.sin(yaw)
    rot = np.array([[cy_, 0, sy_], [0, 1, 0], [-sy_, 0, cy_]])
    corners = np.array([[x, y, z] for x in (-sx, sx) for y in (-sy, sy) for z in (-sz, sz)]) @ rot.T + c
    # corner index = 4*ix + 2*iy + iz
    faces = {
        "+x": (4, 6, 7, 5), "-x": (1, 3, 2, 0), "+z": (5, 7, 3, 1), "-z": (0, 2, 6, 4), "+y": (2, 3, 7, 6), "-y": (0, 4, 5, 1),
    }
    out = []
    for k, (name, idx) in enumerate(faces.items()):
        if name == "-y" and not bottom:
            continue
        v = corners[list(idx)]
        out.append(_quad(v, textures[k % len(textures)], c, object_id))
    return out


def _quad(v: np.ndarray, texture: np.ndarray, solid_center: np.ndarray, object_id: int) -> Polygon:
    # Texture "up" (row 0) at the top edge: origin at v[1] (top-left), s along v[1]->v[2], t down to v[0].
    origin, axis_s, axis_t = v[1], v[2] - v[1], v[0] - v[1]
    n = np.cross(axis_s, axis_t)
    n /= np.linalg.norm(n)
    if np.dot(n, v.mean(axis=0) - solid_center) < 0:
        n = -n
    return Polygon(v, origin, axis_s, axis_t, texture, n, object_id)


def prism_polygons(center: Sequence[float], radius: float, height: float, sides: int, texture: np.ndarray,
                   cap_texture: np.ndarray, object_id: int, *, yaw: float = 0.0) -> List[Polygon]:
    """A vertical N-sided prism (a cylinder when N is large) standing on y = center[1]."""
    c = np.asarray(center, float)
    ang = yaw + np.linspace(0, 2 * np.pi, sides, endpoint=False)
    ring = np.stack([radius * np.cos(ang), np.zeros(sides), radius * np.sin(ang)], axis=1) + c
    top = ring + np.array([0, height, 0])
    mid = c + np.array([0, height / 2, 0])
    tw = texture.shape[1] // sides
    out = []
    for i in range(sides):
        j = (i + 1) % sides
        quad = np.stack([ring[i], top[i], top[j], ring[j]])
        out.append(_quad(quad, np.ascontiguousarray(texture[:, i * tw:(i + 1) * tw]), mid, object_id))
    span = 2 * radius
    cap_origin = c + np.array([-radius, height, -radius])
    out.append(Polygon(top[::-1].copy(), cap_origin, np.array([span, 0, 0.0]), np.array([0, 0, span]), cap_texture,
                       np.array([0, 1.0, 0]), object_id))
    return out


def sphere_polygons(center: Sequence[float], radius: float, texture: np.ndarray, object_id: int, *, rings: int = 8,
                    segments: int = 14, yaw: float = 0.0) -> List[Polygon]:
    """A faceted ball (``rings`` latitude bands of ``segments`` facets; triangles at the poles).

    Each facet shows its own cell of ``texture``, laid out like a world map, so the ball's
    surface turns visibly as the camera orbits it.
    """
    c = np.asarray(center, float)
    lat = np.linspace(np.pi / 2, -np.pi / 2, rings + 1)
    lon = yaw + np.linspace(0, 2 * np.pi, segments + 1)
    ring = [np.stack([radius * np.cos(a) * np.cos(lon), np.full(lon.shape, radius * np.sin(a)),
                      radius * np.cos(a) * np.sin(lon)], axis=1) + c for a in lat]
    th, tw = texture.shape[0] // rings, texture.shape[1] // segments
    out = []
    for i in range(rings):
        for j in range(segments):
            cell = np.ascontiguousarray(texture[i * th:(i + 1) * th, j * tw:(j + 1) * tw])
            top_l, top_r, bot_l, bot_r = ring[i][j], ring[i][j + 1], ring[i + 1][j], ring[i + 1][j + 1]
            if i == 0:  # the top pole: its two upper corners coincide
                quad = np.stack([bot_l, top_l, bot_r])
            elif i == rings - 1:
                quad = np.stack([bot_l, top_l, top_r])
            else:
                quad = np.stack([bot_l, top_l, top_r, bot_r])
            out.append(_quad(quad, cell, c, object_id))
    return out


class FrameBuffer:
    """Colour, inverse depth and object id per pixel; 0 inverse depth is "infinitely far"."""

    def __init__(self, background: np.ndarray, object_ids: np.ndarray):
        self.color = background.astype(np.float32)
        self.inv_depth = np.zeros(background.shape[:2], np.float32)
        self.ids = object_ids.astype(np.int32)


def draw_polygon(fb: FrameBuffer, cam: Camera, poly: Polygon, *, offset: Tuple[float, float] = (0.0, 0.0),
                 shade: float = 1.0) -> None:
    """Rasterize one polygon into ``fb`` with a z-test; ``offset`` shifts it in image space (pixels)."""
    to_eye = cam.position - poly.vertices[0]
    if np.dot(poly.outward, to_eye) <= 0:  # back face
        return
    pc = cam.to_camera(poly.vertices)
    if np.any(pc[:, 2] <= 1e-3):
        return
    dx, dy = offset
    uv = np.stack([cam.fx * pc[:, 0] / pc[:, 2] + cam.cx + dx, cam.fy * pc[:, 1] / pc[:, 2] + cam.cy + dy], axis=1)
    x0, y0 = np.floor(uv.min(axis=0)).astype(int)
    x1, y1 = np.ceil(uv.max(axis=0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, cam.width), min(y1, cam.height)
    if x1 <= x0 or y1 <= y0:
        return
    bw, bh = x1 - x0, y1 - y0
    mask = np.zeros((bh, bw), np.uint8)
    # 8 fractional bits: sub-pixel vertex positions, so a drift of 0.3 px moves the edges.
    pts = np.round((uv - [x0, y0]) * 256).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=8)
    if not mask.any():
        return
    # Inverse depth along each pixel's (un-shifted) ray: affine in (u, v) for a plane.
    n_c = cam.rotation @ poly.outward
    d_c = float(n_c @ pc[0])
    us = (np.arange(x0, x1, dtype=np.float32) - dx - cam.cx) / cam.fx
    vs = (np.arange(y0, y1, dtype=np.float32) - dy - cam.cy) / cam.fy
    inv = (n_c[0] * us[None, :] + n_c[1] * vs[:, None] + n_c[2]) / d_c
    region = (slice(y0, y1), slice(x0, x1))
    win = (mask > 0) & (inv > fb.inv_depth[region])
    if not win.any():
        return
    th, tw = poly.texture.shape[:2]
    cols = np.stack([cam.rotation @ poly.axis_s / tw, cam.rotation @ poly.axis_t / th, cam.to_camera(poly.origin[None])[0]], axis=1)
    H = np.array([[1, 0, dx - x0], [0, 1, dy - y0], [0, 0, 1.0]]) @ cam.K @ cols
    color = cv2.warpPerspective(poly.texture, H, (bw, bh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    fb.color[region][win] = color[win].astype(np.float32) * shade
    fb.inv_depth[region][win] = inv[win]
    fb.ids[region][win] = poly.object_id


class Environment:
    """Ground plane (textured square of half-size ``ground_extent``) and a cylindrical
    backdrop wall of radius ``wall_radius`` with sky above.

    The ground is a plane, so its image is one homography of its texture (exact, and fast
    in OpenCV). The wall's texture coordinates are smooth in (u, v), so they are traced on a
    grid a quarter of the size and interpolated.
    """

    _STEP = 4

    def __init__(self, ground: np.ndarray, wall: np.ndarray, *, ground_extent: float = 14.0, wall_radius: float = 22.0,
                 wall_height: float = 14.0):
        self.ground = ground
        self.wall = wall
        self.extent = ground_extent
        self.wall_radius = wall_radius
        self.wall_height = wall_height

    def render(self, cam: Camera, ground_shade: float) -> Tuple[np.ndarray, np.ndarray]:
        """Return (colour float32 (H, W, 3), ground hit mask (H, W) bool)."""
        W, H, s = cam.width, cam.height, self._STEP
        # Coarse rays at pixel centres of the coarse grid, mapped back to full-res pixel coordinates.
        u = (np.arange(0, W + s, s, dtype=np.float32))
        v = (np.arange(0, H + s, s, dtype=np.float32))
        uu, vv = np.meshgrid(u, v)
        rays = np.stack([(uu - cam.cx) / cam.fx, (vv - cam.cy) / cam.fy, np.ones_like(uu)], axis=-1) @ cam.rotation.astype(np.float32)
        ox, oy, oz = (float(x) for x in cam.position)
        rx, ry, rz = rays[..., 0], rays[..., 1], rays[..., 2]
        a = rx * rx + rz * rz
        b = 2 * (ox * rx + oz * rz)
        c = ox * ox + oz * oz - self.wall_radius ** 2
        t_wall = (-b + np.sqrt(np.maximum(b * b - 4 * a * c, 0))) / np.maximum(2 * a, 1e-9)
        wx, wy, wz = ox + t_wall * rx, oy + t_wall * ry, oz + t_wall * rz
        wh, ww = self.wall.shape[:2]
        # Unwrap the azimuth along rows so interpolation never crosses the +-pi seam.
        ang = np.unwrap(np.arctan2(wx, -wz), axis=1)
        coarse = np.stack([ang * (ww / (2 * np.pi)) + 0.5 * ww, (1 - wy / self.wall_height) * wh], axis=-1).astype(np.float32)
        down = ry < -1e-6
        dist = np.where(down, -oy / np.where(down, ry, -1.0), 0) * np.sqrt(a + ry * ry)
        haze_c = np.clip((dist - 8.0) / 12.0, 0, 0.6).astype(np.float32)
        # Full-res maps: coarse sample k sits at pixel k*s, so scale by s with aligned corners.
        fine_shape = ((len(u) - 1) * s + 1, (len(v) - 1) * s + 1)
        maps = np.ascontiguousarray(cv2.resize(coarse, fine_shape, interpolation=cv2.INTER_LINEAR)[:H, :W])
        haze = np.ascontiguousarray(cv2.resize(haze_c, fine_shape, interpolation=cv2.INTER_LINEAR)[:H, :W])
        # BORDER_WRAP wraps the unwrapped azimuth back onto the panorama.
        color = cv2.remap(self.wall, maps, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP).astype(np.float32)
        color[maps[..., 1] < 0] = (165, 195, 230)  # sky above the wall
        # Ground: texture pixel (p, q) is world (p/sx - E, 0, q/sy - E).
        gh, gw = self.ground.shape[:2]
        E = self.extent
        Rm = cam.rotation
        Hg = cam.K @ np.stack([Rm @ [2 * E / gw, 0, 0], Rm @ [0, 0, 2 * E / gh], Rm @ (np.array([-E, 0, -E]) - cam.position)], axis=1)
        ground = cv2.warpPerspective(self.ground, Hg, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        inside = cv2.warpPerspective(np.ones((gh, gw), np.uint8), Hg, (W, H), flags=cv2.INTER_NEAREST,
                                     borderMode=cv2.BORDER_CONSTANT)
        # The ray's world y is linear in (u, v): below the horizon where it is negative.
        r = cam.rotation[:, 1]  # world-y row of R^T
        ray_y = (r[0] * (np.arange(W, dtype=np.float32) - cam.cx) / cam.fx)[None, :] + \
            (r[1] * (np.arange(H, dtype=np.float32) - cam.cy) / cam.fy)[:, None] + r[2]
        on_ground = (inside > 0) & (ray_y < -1e-4)
        haze3 = cv2.merge([haze, haze, haze])
        blended = cv2.add(cv2.multiply(ground.astype(np.float32), 1.0 - haze3, scale=ground_shade),
                          cv2.multiply(color, haze3))
        cv2.copyTo(blended, on_ground.astype(np.uint8), color)
        return color, on_ground
