"""Synthetic turntable footage with exact ground truth.

A textured 3D subject (box, cylinder, figure, L-shape, car, or one made of several parts:
see :mod:`circle_rotate.selfcheck.synthetic.subjects`) stands on a tiled floor in front of a city or
studio backdrop; the camera orbits it (or pans, or stays still). Surfaces are procedural or
photographs, and the subject can wear the floor's own colours. Every frame's subject mask is
exact (all parts of a multi-part subject), so the subject path, the drift value and the
orbit direction are known, and evaluation and orbit QC can be checked against them.
Varied seeded sets for tuning and judging are in :mod:`circle_rotate.selfcheck.synthetic.orbit_sets`.

Direction convention (used everywhere in circle-rotate): ``"right"`` means the camera
travels towards its own right around the subject, which is counter-clockwise seen from
above (y up). In an orbit to the right, the subject stays put, the background (behind the
subject) slides right in the image and the foreground (in front of it) slides left. In a
pan to the right, everything slides left together.

An optional image-space drift path shifts the rendered subject (not its shadow, not the
scene) by a known offset per frame: the failure the Circle-Rotate LoRA is meant to fix.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from circle_rotate.kernel.atomic import write_bytes, write_json
from circle_rotate.selfcheck.synthetic import geometry as geo
from circle_rotate.selfcheck.synthetic.subjects import (MULTIPART_SUBJECTS, PART_ID_BASE, SUBJECT_ID, SUBJECTS, clutter_solids,
                                              is_subject, subject_parts)
from circle_rotate.selfcheck.synthetic.textures import (backdrop_texture, ground_crop, ground_texture, photo_backdrop, photo_ground,
                                              photo_texture, photo_unavailable, surface_texture)
from circle_rotate.kernel.video_io import write_video

ALL_SUBJECTS = SUBJECTS + MULTIPART_SUBJECTS
CAMERAS = ("orbit", "pan", "static")
PROFILES = ("constant", "ease", "accelerate", "decelerate", "stop_go")
DRIFTS = ("none", "linear", "sine", "circle", "random_walk")
# moving_light turns the light 70 degrees; orbiting_light half way round from low down, so
# long shadows sweep across the floor.
LIGHTING = ("constant", "exposure_ramp", "moving_light", "flicker", "orbiting_light")
TEXTURES = ("procedural", "photo")  # photo: scikit-image's sample photographs (procedural when it is absent)
LOOKS = ("own", "ground")  # ground: the subject is dressed in pieces of the floor's texture


@dataclass(frozen=True)
class DriftPath:
    """An image-space offset of the subject: ``kind`` shape, ``amplitude_px`` size."""

    kind: str = "none"
    amplitude_px: float = 0.0
    angle_deg: float = 0.0  # direction of linear/sine drift in the image (0 = +x, 90 = +y down)
    cycles: float = 1.0  # for sine / circle


@dataclass(frozen=True)
class TurntableSpec:
    """Everything that determines a synthetic video. Same spec, same pixels."""

    name: str = "turntable"
    width: int = 832
    height: int = 480
    frames: int = 81
    fps: float = 16.0
    camera: str = "orbit"
    direction: str = "right"  # camera travels (orbit) or turns (pan) to its right or left
    total_angle_deg: float = 90.0
    speed_profile: str = "constant"
    start_azimuth_deg: float = 0.0
    radius: float = 5.0
    camera_height: float = 1.7
    look_height: float = 0.7
    hfov_deg: float = 55.0
    shake_px: float = 0.0  # hand-held jitter, as a fraction of hfov expressed in pixels at the image centre
    subject: str = "box"
    subject_scale: float = 1.0
    subject_yaw_deg: float = 20.0
    drift: DriftPath = field(default_factory=DriftPath)
    clutter: int = 0
    shadow: bool = True
    lighting: str = "constant"
    background: str = "city"  # or "studio"
    noise_sigma: float = 1.0  # sensor noise (grey levels)
    cut_at: Optional[int] = None  # scene cut: frames from here on show another scene
    seed: int = 0
    textures: str = "procedural"
    subject_look: str = "own"

    def validate(self) -> None:
        for name, value, allowed in (("camera", self.camera, CAMERAS), ("subject", self.subject, ALL_SUBJECTS),
                                     ("speed_profile", self.speed_profile, PROFILES), ("drift.kind", self.drift.kind, DRIFTS),
                                     ("lighting", self.lighting, LIGHTING), ("direction", self.direction, ("left", "right")),
                                     ("background", self.background, ("city", "studio")),
                                     ("textures", self.textures, TEXTURES), ("subject_look", self.subject_look, LOOKS)):
            if value not in allowed:
                raise ValueError(f"TurntableSpec.{name} must be one of {allowed}, not {value!r}")
        if self.width % 2 or self.height % 2 or self.width < 16 or self.height < 16:
            raise ValueError(f"size must be even and at least 16 (H.264 needs even sizes), not {self.width}x{self.height}")
        if self.frames < 1:
            raise ValueError("frames must be at least 1")

    @property
    def seen_from_above(self) -> str:
        """'ccw' or 'cw': the orbit as seen from above (right = counter-clockwise)."""
        return "ccw" if self.direction == "right" else "cw"


def profile(kind: str, n: int) -> np.ndarray:
    """Normalised progress p(t) in [0, 1] over ``n`` frames for a speed profile."""
    t = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    if kind == "constant":
        return t
    if kind == "ease":
        return t * t * (3 - 2 * t)
    if kind == "accelerate":
        return t * t
    if kind == "decelerate":
        return 1 - (1 - t) ** 2
    if kind == "stop_go":  # moves, pauses in the middle third, moves again
        speed = np.where((t > 1 / 3) & (t < 2 / 3), 0.1, 1.0)
        p = np.concatenate([[0], np.cumsum(speed[1:])])
        return p / max(p[-1], 1e-9)
    raise ValueError(kind)


def drift_offsets(drift: DriftPath, n: int, seed: int) -> np.ndarray:
    """Per-frame subject offsets (n, 2) in pixels."""
    t = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    a = drift.amplitude_px
    ang = np.radians(drift.angle_deg)
    unit = np.array([np.cos(ang), np.sin(ang)])
    if drift.kind == "none" or a == 0:
        return np.zeros((n, 2))
    if drift.kind == "linear":
        return (a * t)[:, None] * unit
    if drift.kind == "sine":
        return (a * np.sin(2 * np.pi * drift.cycles * t))[:, None] * unit
    if drift.kind == "circle":
        ph = 2 * np.pi * drift.cycles * t
        return a * np.stack([np.cos(ph) - 1, np.sin(ph)], axis=1)
    if drift.kind == "random_walk":
        rng = np.random.default_rng(seed + 7919)
        steps = rng.normal(size=(n, 2))
        steps[0] = 0
        path = gaussian_filter1d(np.cumsum(steps, axis=0), sigma=2.0, axis=0, mode="nearest")
        path -= path[0]
        peak = np.abs(path).max()
        return path * (a / peak) if peak > 0 else path
    raise ValueError(drift.kind)


def drift_value(centroids: np.ndarray) -> Tuple[float, List[int]]:
    """The Circle-Rotate subject drift: population std of the centroid over 16 frames
    sampled with ``np.linspace(0, n - 1, 16).astype(int)``; sqrt(std_x^2 + std_y^2)."""
    # Written out here rather than taken from circle_rotate.eval: this is the ground truth the
    # evaluation is checked against, so a mistake there must not reappear in it.
    n = len(centroids)
    idx = np.linspace(0, n - 1, 16).astype(int)
    pts = np.asarray(centroids, float)[idx]
    std = pts.std(axis=0)
    return float(np.sqrt((std ** 2).sum())), idx.tolist()


@dataclass
class _Scene:
    env: geo.Environment
    solids: List[List[geo.Polygon]]  # the subject's parts first, then clutter
    light_dir: np.ndarray
    parts: int = 1  # how many of ``solids`` are the subject


def _build_scene(spec: TurntableSpec, seed: int) -> _Scene:
    rng = np.random.default_rng(seed)
    photo = spec.textures == "photo"
    env = geo.Environment(photo_ground(rng) if photo else ground_texture(rng),
                          photo_backdrop(rng) if photo else backdrop_texture(rng, studio=spec.background == "studio"))

    def texture(h: int, w: int) -> np.ndarray:
        if spec.subject_look == "ground":
            return ground_crop(rng, env.ground, h, w)
        return photo_texture(rng, h, w) if photo else surface_texture(rng, h, w)

    parts = subject_parts(spec.subject, spec.subject_scale, spec.subject_yaw_deg, texture)
    clutter_tex = (lambda h, w: photo_texture(rng, h, w)) if photo else (lambda h, w: surface_texture(rng, h, w))
    solids = parts + clutter_solids(spec.clutter, spec.subject_scale, rng, clutter_tex, SUBJECT_ID + 1)
    light = np.array([-0.8, -0.55, -0.3]) if spec.lighting == "orbiting_light" else np.array([-0.45, -1.0, -0.35])
    return _Scene(env, solids, light / np.linalg.norm(light), len(parts))


def texture_source(spec: TurntableSpec) -> str:
    """What the spec's surfaces were made from, as the truth records it."""
    if spec.textures == "procedural":
        return "procedural"
    reason = photo_unavailable()
    return f"procedural (photo asked: {reason})" if reason else "photo (scikit-image sample images)"


def _camera_path(spec: TurntableSpec) -> Tuple[np.ndarray, List[geo.Camera]]:
    """Azimuth per frame (degrees) and the cameras."""
    n = spec.frames
    sign = 1.0 if spec.direction == "right" else -1.0
    p = profile(spec.speed_profile, n)
    rng = np.random.default_rng(spec.seed + 104729)
    jitter = np.zeros((n, 2))
    if spec.shake_px > 0:  # smooth random hand shake, in pixels at the image centre
        raw = rng.normal(size=(n + 8, 2))
        jitter = np.stack([np.convolve(raw[:, i], np.ones(3) / 3, "same")[4:-4] for i in range(2)], axis=1) * spec.shake_px
    fx = (spec.width / 2) / np.tan(np.radians(spec.hfov_deg) / 2)
    base = np.radians(spec.start_azimuth_deg)
    azimuth = np.full(n, spec.start_azimuth_deg, float)
    cams = []
    for i in range(n):
        if spec.camera == "orbit":
            theta = base + sign * np.radians(spec.total_angle_deg) * p[i]
            azimuth[i] = np.degrees(theta)
        else:
            theta = base
        pos = np.array([spec.radius * np.sin(theta), spec.camera_height, spec.radius * np.cos(theta)])
        target = np.array([0.0, spec.look_height, 0.0])
        if spec.camera == "pan":
            fwd0 = target - pos
            right0 = np.cross(fwd0 / np.linalg.norm(fwd0), geo.UP)
            right0 /= np.linalg.norm(right0)
            alpha = sign * np.radians(spec.total_angle_deg) * p[i]
            horiz = np.array([fwd0[0], 0, fwd0[2]])
            target = pos + np.cos(alpha) * horiz + np.sin(alpha) * np.linalg.norm(horiz) * right0 + [0, fwd0[1], 0]
        # Shake: turn the view by the jitter angle (small rotations move the image ~uniformly).
        dist = np.linalg.norm(target - pos)
        cam0 = geo.look_at(pos, target, width=spec.width, height=spec.height, hfov_deg=spec.hfov_deg)
        if spec.shake_px > 0:
            target = target + (jitter[i, 0] * cam0.rotation[0] + jitter[i, 1] * cam0.rotation[1]) * dist / fx
            cam0 = geo.look_at(pos, target, width=spec.width, height=spec.height, hfov_deg=spec.hfov_deg,
                               roll_deg=0.15 * jitter[i, 0])
        cams.append(cam0)
    return azimuth, cams


def _shadow_mask(cam: geo.Camera, solids: List[List[geo.Polygon]], light: np.ndarray) -> np.ndarray:
    mask = np.zeros((cam.height, cam.width), np.uint8)
    for solid in solids:
        pts = np.concatenate([p.vertices for p in solid])
        ground = pts - (pts[:, 1:2] / light[1]) * light  # slide each vertex along the light onto y = 0
        if np.any(cam.to_camera(ground)[:, 2] <= 0.05):
            continue
        img = cam.project(ground).astype(np.float32)
        hull = cv2.convexHull(img)
        cv2.fillPoly(mask, [np.round(hull * 256).astype(np.int32)], 1, shift=8)
    return mask.astype(bool)


@dataclass
class RenderedFrame:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    subject_mask: np.ndarray  # (H, W) bool
    azimuth_deg: float
    drift_offset: Tuple[float, float]
    part_areas: Tuple[int, ...] = ()  # visible pixels of each part of a multi-part subject (empty: one solid)


def render_frames(spec: TurntableSpec) -> Iterator[RenderedFrame]:
    """Render a spec frame by frame (deterministic)."""
    spec.validate()
    scenes = {0: _build_scene(spec, spec.seed)}
    azimuth, cams = _camera_path(spec)
    if spec.cut_at is not None:
        nxt = SUBJECTS[(SUBJECTS.index(spec.subject) + 2) % len(SUBJECTS)] if spec.subject in SUBJECTS else "box"
        other = dataclasses.replace(spec, seed=spec.seed + 1, subject=nxt,
                                    start_azimuth_deg=spec.start_azimuth_deg + 140, cut_at=None,
                                    background="studio" if spec.background == "city" else "city")
        scenes[1] = _build_scene(other, other.seed)
        az2, cams2 = _camera_path(other)
    offsets = drift_offsets(spec.drift, spec.frames, spec.seed)
    # A few frames of sensor noise, cycled: fresh noise per frame costs more than the render.
    noise_rng = np.random.default_rng(spec.seed + 31)
    noise = [noise_rng.normal(0, spec.noise_sigma, (spec.height, spec.width, 3)).astype(np.float32)
             for _ in range(min(spec.frames, 5))] if spec.noise_sigma > 0 else []
    t = np.linspace(0, 1, spec.frames) if spec.frames > 1 else np.zeros(1)
    for i in range(spec.frames):
        after_cut = spec.cut_at is not None and i >= spec.cut_at
        scene = scenes[1 if after_cut else 0]
        cam = cams2[i] if after_cut else cams[i]
        light = scene.light_dir
        if spec.lighting in ("moving_light", "orbiting_light"):
            a = np.radians((70 if spec.lighting == "moving_light" else 180) * t[i])
            light = np.array([np.cos(a) * light[0] - np.sin(a) * light[2], light[1], np.sin(a) * light[0] + np.cos(a) * light[2]])
        ambient, diffuse = 0.5, 0.55
        bg, on_ground = scene.env.render(cam, ambient + diffuse * -light[1])
        fb = geo.FrameBuffer(bg, np.zeros(bg.shape[:2], np.int32))
        for k, solid in enumerate(scene.solids):
            off = tuple(offsets[i]) if k < scene.parts else (0.0, 0.0)
            for poly in solid:
                fb_shade = ambient + diffuse * max(0.0, float(-light @ poly.outward))
                geo.draw_polygon(fb, cam, poly, offset=off, shade=fb_shade)
        if spec.shadow:
            shadow = _shadow_mask(cam, scene.solids, light) & on_ground & (fb.ids == 0)
            fb.color[shadow] *= 0.55
        gain = 1.0
        if spec.lighting == "exposure_ramp":
            gain = 1.0 - 0.3 * t[i]
        elif spec.lighting == "flicker":
            gain = 1.0 + 0.08 * np.sin(2 * np.pi * 6 * t[i])
        img = fb.color
        if gain != 1.0:
            img *= gain
        if noise:
            img += noise[i % len(noise)]
        parts = ()
        if scene.parts > 1:
            counts = np.bincount(np.clip(fb.ids - PART_ID_BASE + 1, 0, None).ravel(), minlength=scene.parts + 1)
            parts = tuple(int(c) for c in counts[1:scene.parts + 1])
        yield RenderedFrame(np.clip(img, 0, 255, out=img).astype(np.uint8), is_subject(fb.ids),
                            float(az2[i] if after_cut else azimuth[i]), (float(offsets[i][0]), float(offsets[i][1])), parts)


def mask_stats(mask: np.ndarray) -> Tuple[Tuple[float, float], int, Tuple[int, int, int, int]]:
    """(centroid (x, y) in pixels, area, bbox (x0, y0, x1, y1) inclusive) of a boolean mask."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return (float("nan"), float("nan")), 0, (-1, -1, -1, -1)
    return (float(xs.mean()), float(ys.mean())), int(xs.size), (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


@dataclass(frozen=True)
class TurntableFiles:
    video: Path
    truth: Path
    masks: Path


def write_turntable(spec: TurntableSpec, out_dir: Path, *, suffix: str = ".mp4", rotation: int = 0, crf: int = 18,
                    preset: str = "veryfast") -> TurntableFiles:
    """Render ``spec`` to ``out_dir/<name><suffix>`` plus ``<name>.truth.json`` and ``<name>.masks.npz``.

    The truth JSON holds per-frame centroid, mask area, bbox, azimuth and injected drift
    offset, the orbit direction and the drift value as the evaluation defines it. The
    masks file holds the exact subject masks (bit-packed) the truth was computed from.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    video = out_dir / f"{spec.name}{suffix}"
    centroids, areas, boxes, azimuths, offsets, masks, part_areas = [], [], [], [], [], [], []

    def frames():
        for fr in render_frames(spec):
            c, a, b = mask_stats(fr.subject_mask)
            centroids.append(c)
            areas.append(a)
            boxes.append(b)
            azimuths.append(fr.azimuth_deg)
            offsets.append(fr.drift_offset)
            part_areas.append(list(fr.part_areas))
            masks.append(np.packbits(fr.subject_mask, axis=-1))
            yield fr.image

    write_video(video, frames(), fps=spec.fps, crf=crf, preset=preset, rotation=rotation)
    value, idx = drift_value(np.array(centroids))
    truth: Dict[str, object] = {
        "name": spec.name,
        "video": video.name,
        "width": spec.width,
        "height": spec.height,
        "frames": spec.frames,
        "fps": spec.fps,
        "rotation": rotation,
        "camera": spec.camera,
        "direction": spec.direction if spec.camera != "static" else "none",
        "seen_from_above": spec.seen_from_above if spec.camera == "orbit" else "none",
        "total_angle_deg": spec.total_angle_deg if spec.camera != "static" else 0.0,
        "cut_at": spec.cut_at,
        "drift": value,
        "drift_indices": idx,
        "centroid": [list(c) for c in centroids],
        "mask_area": areas,
        "bbox": [list(b) for b in boxes],
        "azimuth_deg": azimuths,
        "drift_offset_px": [list(o) for o in offsets],
        # Every part of a multi-part subject is in the mask; this says how much of each shows.
        "part_area": part_areas if any(part_areas) else None,
        "texture_source": texture_source(spec),
        "spec": json.loads(json.dumps(dataclasses.asdict(spec))),
    }
    truth_path = write_json(out_dir / f"{spec.name}.truth.json", truth)
    buf = io.BytesIO()
    np.savez_compressed(buf, masks=np.stack(masks), width=spec.width, height=spec.height)
    masks_path = write_bytes(out_dir / f"{spec.name}.masks.npz", buf.getvalue())
    return TurntableFiles(video, truth_path, masks_path)


def write_footage(spec: TurntableSpec, out_dir: Path, **kw) -> Path:
    """Render ``spec`` to ``out_dir/<name>.mp4`` alone, as footage a user has: no truth or masks
    beside it, which a prepare of the folder would pass over and name. ``kw`` as :func:`write_turntable`."""
    files = write_turntable(spec, out_dir, **kw)
    files.truth.unlink()
    files.masks.unlink()
    return files.video


def load_masks(path: Path) -> np.ndarray:
    """The exact subject masks (T, H, W) bool written by :func:`write_turntable`."""
    with np.load(path) as data:
        width = int(data["width"])
        return np.unpackbits(data["masks"], axis=-1, count=width).astype(bool)


def load_truth(path: Path) -> dict:
    return json.loads(Path(path).read_text())
