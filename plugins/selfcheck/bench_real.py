"""Benchmark: subject drift on real videos with hand-labelled subject boxes.

A labelled folder holds the videos and a ``boxes.json`` (the layout of ``../shared/eval-real``):
``{"videos": {"NAME": {"boxes": {"FRAME": [x0, y0, x1, y1], ...}, "box_centre_drift": PX}}}``,
each ``NAME.gif`` (or ``.mp4``/``.webm``/``.mov``) beside it; the boxes are tight around the
subject on a few frames, and ``box_centre_drift`` is the drift of their centres. Prints, per
video and overall, what issue 13's acceptance asks about real videos: how many read within
max(3 px, 50% of the box-centre drift), the share of labelled frames whose mask centroid lies in
the box (10% margin; the nearest sampled frame), and how many readings more than 10 px off are
reported reliable.

    python -m circle_rotate.selfcheck.bench_real --folder ../shared/eval-real [--boxes [all]] [--plot real.png]

``--boxes`` gives the evaluation each video's first labelled box, as ``--subject-box`` does, which
measures the follower alone. ``--boxes all`` gives every labelled box, as ``--subject-boxes``
does with a labelled set's JSON: the later boxes bound the mask on the frames between
(:mod:`circle_rotate.eval.keyframe_boxes`), which measures what a user who drew them gets. The
boxes the drift is judged against are then ones the evaluation was given; the drift is still
the masks' centroids', and the box-centre drift is not among its inputs.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Dict, List, Optional, Sequence

import numpy as np

from circle_rotate.eval.boxes import Box, in_box
from circle_rotate.kernel.errors import UserError
from circle_rotate.selfcheck.bench_accuracy import Judged

if TYPE_CHECKING:
    from circle_rotate.eval.subject_mask import SubjectHint

ABS_TOL_PX, REL_TOL = Judged.abs_tol, 0.5
#: How far off a reading reported reliable may be (px).
RELIABLE_MAX_PX = 10.0
#: Margin around a labelled box, as a fraction of its sides, within which the centroid counts as inside.
BOX_MARGIN = 0.1
#: What a labelled video may be, in the order looked for (the animated WebP and PNG ComfyUI writes last).
VIDEO_SUFFIXES = (".gif", ".mp4", ".webm", ".mov", ".mkv", ".webp", ".png")


@dataclass(frozen=True)
class Labelled:
    name: str
    video: Path
    boxes: Dict[int, Box]
    truth: float  # box-centre drift, px


@dataclass(frozen=True)
class RealReading(Judged):
    """One video against its labelled boxes."""

    rel_tol: ClassVar[float] = REL_TOL
    name: str
    truth: float  # box-centre drift, px
    measured: Optional[float]  # None: the evaluation failed on it
    unreliable: bool
    confidence: Optional[float]
    inside: int  # labelled frames whose nearest sampled centroid lies in the box
    labelled: int


@dataclass(frozen=True)
class RealScore:
    count: int
    within: int
    median_error: float
    inside: int
    labelled: int
    reliable_wrong: int  # reported reliable with an error above RELIABLE_MAX_PX
    unreliable: int


def read_labels(folder: Path) -> List[Labelled]:
    """The labelled videos of ``folder`` (see the module docstring), in the file's order."""
    path = folder / "boxes.json"
    try:
        videos = json.loads(path.read_text())["videos"]
        out = []
        for name, entry in videos.items():
            found = [folder / f"{name}{s}" for s in VIDEO_SUFFIXES if (folder / f"{name}{s}").is_file()]
            if not found:
                raise UserError(f"no video named {name} beside it", path=path,
                                fix=f"put {name}.gif (or .mp4) in {folder} or drop its entry")
            boxes = {int(k): tuple(float(v) for v in box) for k, box in entry["boxes"].items()}
            if not boxes or any(len(b) != 4 for b in boxes.values()):
                raise UserError(f"{name}: each box must be [x0, y0, x1, y1]", path=path, fix="label at least one frame")
            out.append(Labelled(name, found[0], boxes, float(entry["box_centre_drift"])))
    except FileNotFoundError:
        raise UserError("no boxes.json here", path=path,
                        fix="give a labelled folder (the videos and a boxes.json) such as ../shared/eval-real") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"not a labelled set ({type(exc).__name__}: {exc})", path=path,
                        fix='write {"videos": {"NAME": {"boxes": {"0": [x0, y0, x1, y1]}, "box_centre_drift": px}}}'
                        ) from None
    return out


def centroids_inside(frames: Sequence[int], centroids: np.ndarray, boxes: Dict[int, Box]) -> int:
    """How many labelled boxes hold the centroid of the sampled frame nearest to theirs."""
    frames = np.asarray(frames)
    inside = 0
    for k, box in boxes.items():
        cx, cy = centroids[int(np.argmin(np.abs(frames - k)))]
        inside += bool(in_box(cx, cy, box, margin=BOX_MARGIN))
    return inside


#: What ``--boxes`` gives the evaluation: the first labelled box, or all of them.
GIVEN = ("first", "all")


def hint_of(v: Labelled, given: str) -> "SubjectHint":
    """The :class:`~circle_rotate.eval.subject_mask.SubjectHint` ``--subject-boxes`` would read
    for ``v``: its first labelled box, and with ``given`` ``"all"`` the later ones too."""
    from circle_rotate.eval.subject_mask import SubjectHint

    first = min(v.boxes)
    return SubjectHint.from_boxes(v.boxes if given == "all" else {first: v.boxes[first]})


def measure(labels: Sequence[Labelled], *, jobs: int, given: Optional[str] = None) -> List[RealReading]:
    """Evaluate ``labels`` and judge each against its boxes; ``given`` (one of :data:`GIVEN`)
    hands the evaluation the labelled boxes too."""
    from circle_rotate.eval.runner import evaluate

    options = {}
    if given is not None:
        options["subject_boxes"] = {v.video.name: hint_of(v, given) for v in labels}
    rows = {r["video"]: r for r in evaluate([v.video for v in labels], metrics=["subject_drift"], jobs=jobs,
                                            options=options).rows}
    out = []
    for v in labels:
        row = rows[v.video.name]
        if row["status"] != "ok":
            out.append(RealReading(v.name, v.truth, None, True, None, 0, len(v.boxes)))
            continue
        series = row["series"]["subject_drift"]
        inside = centroids_inside(series["frames"], np.asarray(series["centroids"]), v.boxes)
        out.append(RealReading(v.name, v.truth, float(row["drift"]), bool(row.get("drift_unreliable")),
                               row.get("drift_confidence"), inside, len(v.boxes)))
    return out


def score(readings: Sequence[RealReading]) -> RealScore:
    return RealScore(len(readings), sum(r.within for r in readings), float(np.median([r.error for r in readings])),
                     sum(r.inside for r in readings), sum(r.labelled for r in readings),
                     sum(not r.unreliable and r.error > RELIABLE_MAX_PX for r in readings),
                     sum(r.unreliable for r in readings))


def report(readings: Sequence[RealReading], s: RealScore, title: str) -> str:
    lines = [title, f"  {'video':<16} {'boxes':>7} {'read':>8} {'|err|':>7}  within  in box  confidence"]
    for r in readings:
        read = f"{r.measured:8.2f}" if r.measured is not None else "  failed"
        conf = "-" if r.confidence is None else f"{r.confidence:.2f}" + ("  unreliable" if r.unreliable else "")
        lines.append(f"  {r.name:<16} {r.truth:7.2f} {read} {r.error:7.2f}  {'yes' if r.within else 'no':<6}  "
                     f"{r.inside}/{r.labelled:<4}  {conf}")
    share = s.inside / s.labelled if s.labelled else float("nan")
    lines += [f"  within max(3 px, 50%)          {s.within} of {s.count}",
              f"  median |error|                 {s.median_error:.2f} px",
              f"  centroid in the labelled box   {s.inside} of {s.labelled} ({share:.1%})",
              f"  reliable and > 10 px off       {s.reliable_wrong}",
              f"  marked unreliable              {s.unreliable}"]
    return "\n".join(lines)


def plot(readings: Sequence[RealReading], path: Path, title: str) -> None:
    """Measured against box-centre drift, the tolerance band shaded, unreliable readings hollow."""
    from circle_rotate.eval.plots import plt, png_bytes
    from circle_rotate.kernel.atomic import write_bytes

    done = [r for r in readings if r.measured is not None]
    top = max([r.truth for r in done] + [r.measured for r in done] + [12.0]) * 1.1
    x = np.linspace(0, top, 200)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.fill_between(x, np.maximum(x - np.maximum(ABS_TOL_PX, REL_TOL * x), 0), x + np.maximum(ABS_TOL_PX, REL_TOL * x),
                    color="#d0ebff", label="within max(3 px, 50%)")
    ax.plot(x, x, color="#1c7ed6", lw=1)
    for unreliable, style in ((False, dict(color="#d9480f")), (True, dict(facecolors="none", edgecolors="#868e96"))):
        pts = [(r.truth, r.measured) for r in done if r.unreliable == unreliable]
        if pts:
            ax.scatter(*zip(*pts), s=22, zorder=3, label="marked unreliable" if unreliable else "reliable", **style)
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="box-centre drift (px)", ylabel="measured drift (px)", title=title)
    ax.legend(loc="lower right", fontsize=8)
    write_bytes(path, png_bytes(fig))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m circle_rotate.selfcheck.bench_real", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, required=True, help="a labelled set (videos + boxes.json)")
    ap.add_argument("--boxes", nargs="?", const="first", choices=GIVEN,
                    help="give the evaluation each video's first labelled box, or with 'all' every one")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--plot", type=Path, help="write measured-vs-labelled drift as a PNG here")
    args = ap.parse_args(argv)
    labels = read_labels(args.folder)  # a UserError: circle-rotate's one-line error, exit 2
    readings = measure(labels, jobs=args.jobs, given=args.boxes)
    title = (f"subject drift against the labelled boxes, {args.folder.name} ({len(readings)} videos"
             + {None: ")", "first": ", first boxes given)", "all": ", all labelled boxes given)"}[args.boxes])
    print(report(readings, score(readings), title))
    if args.plot:
        plot(readings, args.plot, title)
        print(f"  plot: {args.plot}")
    return 1 if any(r.measured is None for r in readings) else 0


if __name__ == "__main__":
    raise SystemExit(main())
