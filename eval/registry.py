"""Every metric by name (VBench's layout): one ``compute_<name>`` per metric module, one flat list.

Order matters: metrics run in this order on a clip and share its caches, so motion
magnitude computes the consecutive flows that the orbit metrics then reuse.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

from circle_rotate.kernel.errors import UserError

if TYPE_CHECKING:
    from circle_rotate.eval.context import EvalContext, MetricResult


def definitions_path() -> str:
    """Where this installation keeps METRICS.md, the metric definitions (``eval/`` in a checkout)."""
    return str(resources.files(__package__).joinpath("METRICS.md"))


@dataclass(frozen=True)
class Column:
    """A result column: what it is and which way is better (None: neither)."""

    name: str
    label: str
    better: Optional[str] = None  # "lower" | "higher" | None
    unit: str = ""


@dataclass(frozen=True)
class Metric:
    name: str
    # Where ``compute_<name>`` lives, as "module:function" under circle_rotate.eval (a learned
    # metric: "learned:<key of LEARNED>"). Imported on first use, so listing the metrics (the
    # CLI's help) loads neither cv2 nor scipy.
    entry: str
    columns: Tuple[Column, ...]
    default: bool = True
    learned: bool = False

    @property
    def compute(self) -> Callable[[EvalContext], MetricResult]:
        module, _, name = self.entry.partition(":")
        mod = importlib.import_module(f"circle_rotate.eval.{module}")
        return mod.LEARNED[name] if self.learned else getattr(mod, name)


METRICS: Tuple[Metric, ...] = (
    Metric("motion_magnitude", "motion:compute_motion_magnitude",
           (Column("motion_magnitude", "motion magnitude", None, "px/frame"),)),
    Metric("dynamic_degree", "motion:compute_dynamic_degree", (Column("dynamic_degree", "dynamic degree"),)),
    Metric("subject_drift", "drift:compute_subject_drift", (
        Column("drift", "subject drift", "lower", "px"),
        Column("subject_flow", "subject flow", "lower", "px"),
        Column("global_flow", "global flow", None, "px"),
        Column("mask_fallbacks", "frames the image did not confirm", "lower"),
        Column("drift_confidence", "drift confidence", "higher"),
        Column("drift_unreliable", "drift unreliable (why)"),
        Column("subject_found_by", "subject found by"),
    )),
    Metric("psnr", "image_quality:compute_psnr", (Column("psnr", "first-last PSNR", None, "dB"),)),
    Metric("ssim", "image_quality:compute_ssim", (Column("ssim", "first-last SSIM"),)),
    Metric("orbit", "orbit_metrics:compute_orbit", (
        Column("orbit_motion", "camera motion"),
        Column("orbit_direction", "orbit direction"),
        Column("seen_from_above", "seen from above"),
        Column("angular_speed_deg_s", "angular speed", None, "deg/s"),
        Column("speed_cv", "speed variation (CV)", "lower"),
        Column("jerk", "jerk", "lower"),
        Column("orbit_reversal", "turning back (share of the way forward)", "lower"),
        Column("loop_closure", "loop closure", "higher"),
        Column("total_angle_deg", "total angle", None, "deg"),
        Column("orbit_confidence", "orbit confidence", "higher"),
    )),
    Metric("clip_i", "learned:clip_i", (
        Column("clip_first_last", "CLIP-I first-last", "higher"),
        Column("clip_global_avg", "CLIP-I global", "higher"),
        Column("clip_frame_acc", "CLIP-I frame-to-frame", "higher"),
    ), default=False, learned=True),
    Metric("lpips", "learned:lpips", (Column("lpips", "first-last LPIPS"),), default=False, learned=True),
    Metric("vbench_sc", "learned:vbench_sc", (Column("vbench_sc", "DINO subject consistency", "higher"),),
           default=False, learned=True),
    Metric("subject_drift_sam", "learned:subject_drift_sam",
           (Column("drift_sam", "subject drift (YOLO+SAM)", "lower", "px"),
            Column("subject_flow_sam", "subject flow (YOLO+SAM)", "lower", "px"),
            Column("sam_frames", "sampled frames with a YOLO subject", "higher")), default=False, learned=True),
)

BY_NAME: Dict[str, Metric] = {m.name: m for m in METRICS}
COLUMNS: Dict[str, Column] = {c.name: c for m in METRICS for c in m.columns}
#: Columns measured on the subject mask: a reading whose drift is marked unreliable
#: (``drift_unreliable``) counts in neither ``eval``'s aggregate nor ``eval compare``'s statistics
#: of these: a mask that lost the subject reads hundreds of pixels, and would be most of a mean.
MASK_COLUMNS = ("drift", "subject_flow")
#: Names the reference's ``--metric`` accepts, mapped onto ours.
ALIASES = {"motion": ("motion_magnitude", "dynamic_degree"), "fidelity": ("psnr", "ssim", "lpips"),
           "drift": ("subject_drift",), "vbench": ("vbench_sc",), "clip": ("clip_i",)}


def default_names() -> List[str]:
    return [m.name for m in METRICS if m.default]


def resolve(names: Sequence[str]) -> List[Metric]:
    """Metrics for ``names`` ("all", "default", metric names, reference aliases; comma lists
    allowed), in registry order.

    Raises:
        UserError: an unknown name (all of them listed, with the valid names).
    """
    wanted, unknown = set(), []
    for item in names or ["default"]:
        for name in filter(None, (p.strip() for p in str(item).split(","))):
            if name == "all":
                wanted.update(BY_NAME)
            elif name == "default":
                wanted.update(default_names())
            elif name in BY_NAME:
                wanted.add(name)
            elif name in ALIASES:
                wanted.update(ALIASES[name])
            else:
                unknown.append(name)
    if unknown:
        raise UserError(f"unknown metric(s): {', '.join(unknown)}",
                        fix=f"choose from all, default, {', '.join(BY_NAME)} (or {', '.join(ALIASES)})")
    if names and not wanted:  # --metrics "" or "," names nothing; it is not a request for the default set
        raise UserError("no metric named", fix=f"choose from all, default, {', '.join(BY_NAME)}")
    return [m for m in METRICS if m.name in wanted]
