"""Benchmark: what limits the follower, its motion estimate or its re-cut of the mask.

``bench accuracy --first-mask`` measures the follower alone in one figure. The follower
moves the mask by the subject's motion, estimated from the flows, then cuts it again on the
new frame (GrabCut against the first frame's colours). This runs it twice on each rendered
video, both times from the generator's exact first-frame mask (as ``--subject-mask`` would):

- ``estimated``: as ``circle-rotate eval`` runs it;
- ``true motion``: each sampled step moves the mask by the subject's true motion instead,
  the translation that lays the exact mask of one sampled frame best over the next (most
  overlap); the cut is the same.

It prints both readings against the truth, and how far the estimate misses the true motion:
per sampled step (working pixels, mean) and added up along x over the clip (the drift the
estimate alone would carry the mask by). Where the true motion puts a reading right, the
motion estimate is what to improve; where the reading stays wrong, the cut loses the subject
as it turns (faces turning into view that the first frame's colours do not describe).

``--labels SHARE`` asks what evidence the cut would need. Two more runs (motion estimated)
give each cut the truth's labels on a random ``SHARE`` of the frame's textured pixels within
``LABEL_REACH`` of the moved mask's size around it:

- ``subject labels``: its subject pixels there are surely the subject (the background keeps
  the flow's unlike-the-subject labels);
- ``both labels``: its background pixels there are surely background as well.

Where these put the readings right, the follower's design holds and what it lacks is
evidence: a cue (from the flow, or a learned segmenter) that labels about as many pixels,
about as surely.

    python -m circle_rotate.selfcheck.bench_follower --set development --folder DIR [--labels 0.3]

Tune on ``development`` only; ``held-out`` judges.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

from circle_rotate.selfcheck.bench_accuracy import Reading, score

if TYPE_CHECKING:
    from circle_rotate.eval.subject_track import Evidence, StepEvidence
    from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec

#: How far around the moved mask (a fraction of its size, the square root of its area) the
#: truth's labels reach: far enough for the faces an orbit turns into view between samples.
LABEL_REACH = 0.3


@dataclass(frozen=True)
class FollowerRow:
    estimated: Reading  # the follower as eval runs it
    true_motion: Reading  # the same, moved by the true motion
    step_miss: float  # mean |estimate - true motion| per sampled step, working pixels
    carried_x: float  # the misses along x added up over the clip, working pixels
    subject_labels: Optional[Reading] = None  # the truth's subject labels given (``--labels``)
    both_labels: Optional[Reading] = None  # the truth's subject and background labels given


def true_shift(a: np.ndarray, b: np.ndarray, *, reach: int) -> Tuple[float, float]:
    """The translation (dx, dy), each within +-``reach`` pixels, that lays boolean mask ``a``
    over ``b`` with the most overlap (so the most IoU: both areas are fixed); of several such
    (``a`` fits inside ``b`` in more than one place), the shortest."""
    import cv2

    ys, xs = np.nonzero(a)
    y0, x0 = int(ys.min()), int(xs.min())
    template = a[y0:ys.max() + 1, x0:xs.max() + 1].astype(np.float32)
    h, w = template.shape
    field = np.pad(b.astype(np.float32), reach)[y0:y0 + h + 2 * reach, x0:x0 + w + 2 * reach]
    overlap = cv2.matchTemplate(field, template, cv2.TM_CCORR)
    best = np.argwhere(overlap >= overlap.max() - 0.5) - reach  # overlaps are whole pixel counts
    dy, dx = best[np.argmin((best ** 2).sum(axis=1))]
    return float(dx), float(dy)


def truth_labels(truth: Dict[int, np.ndarray], greys: Dict[int, np.ndarray], share: float, *,
                 background: bool) -> "StepEvidence":
    """Evidence from the exact masks (working resolution, keyed by frame): on a random ``share``
    (fixed per frame) of each frame's textured pixels within :data:`LABEL_REACH` of the moved
    mask, the subject's pixels, and with ``background`` the background's too."""
    import cv2

    from circle_rotate.eval.grabcut import disc
    from circle_rotate.eval.subject_find import textured
    from circle_rotate.eval.subject_track import Evidence, TrackParams

    texture = TrackParams().texture

    def evidence(frame: int, moved: np.ndarray) -> "Evidence":
        exact = truth[frame]
        pick = textured(greys[frame], texture) & (np.random.default_rng(frame).random(exact.shape) < share)
        reach = disc(max(2, int(LABEL_REACH * np.sqrt(moved.sum()))))
        pick &= cv2.dilate(moved.astype(np.uint8), reach) > 0
        return Evidence(pick & exact, pick & ~exact if background else None)

    return evidence


def _follow(item: Tuple["TurntableSpec", Path, Path, Path, float]) -> FollowerRow:
    import cv2

    from circle_rotate.eval.drift import drift_of
    from circle_rotate.eval.flow import farneback
    from circle_rotate.eval.frames import load_clip, sample_indices, to_grey
    from circle_rotate.eval.subject_mask import SubjectHint, segment_subject, working_flow, working_size
    from circle_rotate.eval.subject_track import TrackParams, chain, rim_motion, round_trip
    from circle_rotate.selfcheck.synthetic.turntable import load_masks, load_truth

    spec, video, masks_path, truth_path, labels = item
    frames = load_clip(video).frames
    exact = load_masks(masks_path) > 0
    truth = float(load_truth(truth_path)["drift"])
    greys = [to_grey(f) for f in frames]
    flows = [farneback(greys[i], greys[i + 1]) for i in range(len(greys) - 1)]
    idx = [int(i) for i in sample_indices(len(frames))]
    scale, size = working_size(*frames.shape[1:3])
    work = {i: cv2.resize(exact[i].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0 for i in set(idx)}
    reach = max(size)  # a pan may carry the subject far between sampled frames
    shifts = {(a, b): true_shift(work[a], work[b], reach=reach) for a, b in zip(idx, idx[1:]) if a != b}

    hint = SubjectHint(mask=exact[0])
    estimated = drift_of(segment_subject(frames, idx, flows, hint=hint).centroids())
    moved = drift_of(segment_subject(frames, idx, flows, hint=hint, step_motion=lambda a, b: shifts[a, b]).centroids())

    # the estimate the follower makes for a given subject, from the exact mask of each step's first frame
    params = TrackParams()
    small = {i: to_grey(cv2.resize(frames[i], size, interpolation=cv2.INTER_AREA)) for i in set(idx)}
    misses = []
    for (a, b), true in shifts.items():
        moving = chain([working_flow(f, size, scale) for f in flows[a:b]])
        ok = round_trip(moving, small[a], small[b], params)
        guess = rim_motion(work[a], moving, ok, float(np.sqrt(work[a].sum())), rim=params.rim)[:, 2]
        misses.append(guess - np.array(true))
    misses = np.array(misses).reshape(-1, 2)

    def reading(value: float) -> Reading:
        return Reading(spec.name, spec.camera, spec.subject, truth, value)

    per_step = float(np.linalg.norm(misses, axis=1).mean()) if len(misses) else 0.0
    row = FollowerRow(reading(estimated), reading(moved), per_step, float(misses[:, 0].sum()))
    if labels > 0:
        readings = [reading(drift_of(segment_subject(frames, idx, flows, hint=hint, evidence=truth_labels(
            work, small, labels, background=both)).centroids())) for both in (False, True)]
        row = dataclasses.replace(row, subject_labels=readings[0], both_labels=readings[1])
    return row


def measure(specs: Sequence[TurntableSpec], folder: Path, *, jobs: int, labels: float = 0.0) -> List[FollowerRow]:
    """Render (or reuse) ``specs`` in ``folder`` and follow each from its exact first mask, both
    ways, and with ``labels`` > 0 given the truth's labels on that share of textured pixels."""
    from circle_rotate.selfcheck.bench_accuracy import map_jobs
    from circle_rotate.selfcheck.synthetic.orbit_sets import write_set

    files = write_set(specs, folder)
    return map_jobs(_follow, [(s, f.video, f.masks, f.truth, labels) for s, f in zip(specs, files)], jobs)


def report(rows: Sequence[FollowerRow], title: str) -> str:
    labelled = bool(rows) and rows[0].subject_labels is not None
    runs = ["estimated", "true motion"] + (["subject labels", "both labels"] if labelled else [])

    def readings(row: FollowerRow) -> List[Reading]:
        return [row.estimated, row.true_motion] + ([row.subject_labels, row.both_labels] if labelled else [])

    def cell(r: Reading) -> str:
        return f"{r.measured:7.2f} {r.error:6.2f} {'ok' if r.within else 'no'}"

    lines = [title, f"  {'':<37}   " + "   ".join(f"{run:<17}" for run in runs) + f"   {'motion missed by':>19}",
             f"  {'video':<11} {'camera':<7} {'subject':<9} {'truth':>7}   "
             + "   ".join(f"{'read':>7} {'|err|':>6}   " for _ in runs) + f"   {'per step':>9} {'along x':>9}"]
    for row in rows:
        e = row.estimated
        lines.append(f"  {e.name:<11} {e.camera:<7} {e.subject:<9} {e.truth:7.2f}   "
                     + "   ".join(cell(r) for r in readings(row)) + f"   {row.step_miss:9.2f} {row.carried_x:9.1f}")
    for k, run in enumerate(runs):
        s = score([readings(row)[k] for row in rows])
        lines.append(f"  {run:<14} median |error| {s.median_error:5.2f} px, within max(3 px, 15%) {s.within} of "
                     f"{s.count}, Spearman {s.spearman:.3f}")
    lines.append(f"  the estimate misses the true motion by {np.mean([r.step_miss for r in rows]):.2f} working px per "
                 f"step (mean); along x it adds up to {np.median([abs(r.carried_x) for r in rows]):.1f} px over a clip "
                 f"(median)")
    return "\n".join(lines)


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share: give a number in (0, 1], e.g. 0.3")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    from circle_rotate.selfcheck.bench_accuracy import add_set_arguments, set_folder, set_specs

    ap = argparse.ArgumentParser(prog="python -m circle_rotate.selfcheck.bench_follower", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_set_arguments(ap)
    ap.add_argument("--labels", type=_share, default=0.0, metavar="SHARE",
                    help="also follow with the truth's labels on this share (0-1] of the textured pixels near the "
                         "mask, subject only and both (two more runs per video)")
    args = ap.parse_args(argv)
    with set_folder(args.folder) as folder:
        rows = measure(set_specs(args.set, args.seeds), folder, jobs=args.jobs, labels=args.labels)
    given = f", and given the truth's labels on {args.labels:.0%} of textured pixels" if args.labels else ""
    print(report(rows, f"the follower from the exact first mask, its motion estimated and true{given}, {args.set} "
                       f"set ({len(rows)} videos)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
