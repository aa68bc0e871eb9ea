"""Seeded sets of varied synthetic videos for tuning and for judging the evaluation.

Every spec in a set is drawn from its seed alone: subject (single solids and multi-part
subjects), procedural or photographic textures, a subject dressed in the floor's colours,
orbit / pan / static camera, 17 to 49 frames, 832x480 to 1280x720, light that moves and
drags the shadows with it, clutter, hand shake and injected drift paths.

The seeds are fixed here, once, in two disjoint ranges:

- ``DEVELOPMENT_SEEDS``: tune on these (and on ``../shared/eval-real``).
- ``HELD_OUT_SEEDS``: never look at them while choosing anything; they only judge the
  result. Tests that guard accuracy draw from them too (or from their own seeds), never
  from the development range.

Every tenth seed (seed % 10 == 0) is a static camera over a still subject (truth drift 0),
every seed ending in 5 a pan (the subject sweeps across the frame); the rest are orbits.

    from circle_rotate.selfcheck.synthetic.orbit_sets import development_set, held_out_set, write_set
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import numpy as np

from circle_rotate.kernel.progress import progress
from circle_rotate.selfcheck.synthetic.turntable import (LIGHTING, MULTIPART_SUBJECTS, PROFILES, SUBJECTS, DriftPath, TurntableFiles,
                                               TurntableSpec, load_truth, texture_source, write_turntable)

DEVELOPMENT_SEEDS: tuple[int, ...] = tuple(range(1300, 1324))  # 24 videos, tuning only
HELD_OUT_SEEDS: tuple[int, ...] = tuple(range(7100, 7129))  # 29 videos, judging only; tuning never sees them
SETS: Dict[str, tuple[int, ...]] = {"development": DEVELOPMENT_SEEDS, "held-out": HELD_OUT_SEEDS}

_SIZES = ((832, 480), (1280, 720), (640, 368))
_FRAMES = (17, 21, 25, 33, 33, 49)
_ANGLES = (45.0, 90.0, 90.0, 120.0, 180.0, 360.0)
_DRIFTS = ("none", "none", "linear", "sine", "circle", "random_walk")


def camera_of(seed: int) -> str:
    """The camera a set seed gets: static every tenth, a pan every seed ending in 5, else an orbit."""
    return {0: "static", 5: "pan"}.get(seed % 10, "orbit")


def varied_spec(seed: int, *, prefix: str = "set") -> TurntableSpec:
    """One varied spec, fully determined by ``seed``."""
    rng = np.random.default_rng([seed, 13])  # not the scene's own stream (which is seeded by ``seed``)
    camera = camera_of(seed)
    width, height = _SIZES[int(rng.integers(len(_SIZES)))]
    frames = int(rng.choice(_FRAMES))
    # Multi-part subjects half the time: they are what the mask loses parts of.
    subject = str(rng.choice(MULTIPART_SUBJECTS if rng.random() < 0.5 else SUBJECTS))
    kind = str(rng.choice(_DRIFTS)) if camera != "static" else "none"
    amplitude = float(rng.uniform(2.0, 40.0) * width / 832) if kind != "none" else 0.0
    drift = DriftPath(kind, round(amplitude, 2), angle_deg=float(rng.uniform(0, 360)), cycles=float(rng.choice([0.5, 1.0, 1.5])))
    angle = float(rng.choice(_ANGLES)) if camera == "orbit" else round(float(rng.uniform(15, 40)), 1) if camera == "pan" else 0.0
    shake = float(rng.choice([0.0, 0.0, 0.6, 1.5])) if camera != "static" else 0.0  # a static shot is on a tripod
    return TurntableSpec(
        name=f"{prefix}_{seed}", width=width, height=height, frames=frames, camera=camera,
        direction=str(rng.choice(["left", "right"])), total_angle_deg=angle, speed_profile=str(rng.choice(PROFILES)),
        start_azimuth_deg=float(rng.uniform(0, 360)), radius=float(rng.uniform(4.0, 6.5)),
        camera_height=float(rng.uniform(1.2, 2.6)), hfov_deg=float(rng.uniform(45, 65)),
        shake_px=shake, subject=subject, subject_scale=float(rng.uniform(0.75, 1.3)),
        subject_yaw_deg=float(rng.uniform(0, 360)), drift=drift, clutter=int(rng.integers(0, 5)),
        lighting=str(rng.choice(LIGHTING)), background=str(rng.choice(["city", "studio"])),
        noise_sigma=float(rng.uniform(0.5, 2.5)), seed=seed,
        textures="photo" if rng.random() < 0.5 else "procedural",
        subject_look="ground" if rng.random() < 0.2 else "own",
    )


def development_set(seeds: Iterable[int] = DEVELOPMENT_SEEDS) -> List[TurntableSpec]:
    """Varied specs for tuning (the development seeds unless given others)."""
    return [varied_spec(s, prefix="dev") for s in seeds]


def held_out_set(seeds: Sequence[int] = HELD_OUT_SEEDS) -> List[TurntableSpec]:
    """Varied specs that judge the evaluation; nothing is ever tuned on them."""
    return [varied_spec(s, prefix="held") for s in seeds]


def write_set(specs: Sequence[TurntableSpec], folder: Path, *, preset: str = "veryfast") -> List[TurntableFiles]:
    """Render each spec into ``folder`` unless the same spec's files are already there (a re-run
    costs nothing; a changed spec, or one rendered without the photos it asked for, is rendered again)."""
    out = []
    for spec in progress(specs, desc="render", unit="video"):
        files = TurntableFiles(Path(folder) / f"{spec.name}.mp4", Path(folder) / f"{spec.name}.truth.json",
                               Path(folder) / f"{spec.name}.masks.npz")
        if not _already_written(spec, files):
            files = write_turntable(spec, folder, preset=preset)
        out.append(files)
    return out


def _already_written(spec: TurntableSpec, files: TurntableFiles) -> bool:
    if not (files.video.exists() and files.truth.exists() and files.masks.exists()):
        return False
    truth = load_truth(files.truth)
    return truth.get("spec") == json.loads(json.dumps(dataclasses.asdict(spec))) and \
        truth.get("texture_source") == texture_source(spec)
