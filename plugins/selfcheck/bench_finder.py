"""Benchmark: the subject search alone, on each video's first frame, in seconds rather than minutes.

Subject drift is only as good as the mask found on the first frame, and ``bench accuracy``
measures both the search and the follower in one figure (minutes per set). This runs the
same search as ``circle-rotate eval`` (:func:`circle_rotate.eval.subject_mask.find_on_first_frame`,
from just the first frames' flows) and compares its mask with the truth:

- on a rendered set (``--set``): the generator's exact first-frame mask; IoU, precision (the
  share of the found mask that is subject) and recall (the share of the subject found);
- on a labelled real set (``--real FOLDER``, the layout of ``../shared/eval-real``): the first
  labelled box; the share of the found mask inside the box (10% margin, as ``bench real``) and
  the share of the box the mask covers (a box holds background too, so this stays under 1).

    python -m circle_rotate.selfcheck.bench_finder --set development --folder DIR
    python -m circle_rotate.selfcheck.bench_finder --real ../shared/eval-real

A low precision is a mask that took in background (its centroid moves with it); a low recall
is a mask on part of the subject (it grows back as the subject is followed, and the centroid
slides). Tune on ``development`` and the shared real videos only; ``held-out`` judges.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Sequence, Tuple

import numpy as np

from circle_rotate.eval.boxes import Box, in_box
from circle_rotate.selfcheck.bench_real import BOX_MARGIN

if TYPE_CHECKING:
    from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec


@dataclass(frozen=True)
class Overlap:
    """A found mask against the truth: IoU, precision (found that is true), recall (true that is found)."""

    iou: float
    precision: float
    recall: float


@dataclass(frozen=True)
class FinderRow:
    name: str
    basis: str  # what the search rested on (``FoundSubject.basis``)
    overlap: Overlap


def overlap(found: np.ndarray, truth: np.ndarray) -> Overlap:
    """:class:`Overlap` of two boolean masks of one size (0 where a side is empty)."""
    inter = float(np.logical_and(found, truth).sum())
    union = float(np.logical_or(found, truth).sum())
    return Overlap(inter / union if union else 0.0, inter / max(float(found.sum()), 1.0),
                   inter / max(float(truth.sum()), 1.0))


def box_mask(box: Box, shape: Tuple[int, int], *, margin: float = 0.0) -> np.ndarray:
    """(h, w) bool: the pixels whose centres lie in ``box`` (x0, y0, x1, y1, inclusive labels)
    grown by ``margin`` of its sides."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    return in_box(xs, ys, box, margin=margin)


def found_mask(video: Path) -> Tuple[np.ndarray, str]:
    """The subject ``circle-rotate eval`` finds on ``video``'s first frame, at full resolution,
    and what it rested on. Only the first frames' flows are computed."""
    import cv2

    from circle_rotate.eval.flow import farneback
    from circle_rotate.eval.frames import load_clip, to_grey
    from circle_rotate.eval.subject_mask import find_on_first_frame, window_pairs

    frames = load_clip(video).frames
    span = min(window_pairs(len(frames)), len(frames) - 1)
    greys = [to_grey(f) for f in frames[:span + 1]]
    found = find_on_first_frame(frames, [farneback(greys[i], greys[i + 1]) for i in range(span)])
    height, width = frames.shape[1:3]
    full = cv2.resize(found.mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
    return full, found.basis


def _rendered_row(item: Tuple[str, Path, Path]) -> FinderRow:
    from circle_rotate.selfcheck.synthetic.turntable import load_masks

    name, video, masks = item
    found, basis = found_mask(video)
    return FinderRow(name, basis, overlap(found, load_masks(masks)[0]))


def _real_row(item: Tuple[str, Path, Box]) -> FinderRow:
    name, video, box = item
    found, basis = found_mask(video)
    inside = overlap(found, box_mask(box, found.shape, margin=BOX_MARGIN)).precision
    covered = overlap(found, box_mask(box, found.shape)).recall
    return FinderRow(name, basis, Overlap(float("nan"), inside, covered))


def measure_rendered(specs: Sequence[TurntableSpec], folder: Path, *, jobs: int) -> List[FinderRow]:
    """Render (or reuse) ``specs`` in ``folder`` and compare each first-frame search with the exact mask."""
    from circle_rotate.selfcheck.bench_accuracy import map_jobs
    from circle_rotate.selfcheck.synthetic.orbit_sets import write_set

    files = write_set(specs, folder)
    return map_jobs(_rendered_row, [(s.name, f.video, f.masks) for s, f in zip(specs, files)], jobs)


def measure_real(folder: Path, *, jobs: int) -> List[FinderRow]:
    """Compare each labelled video's first-frame search with its first labelled box."""
    from circle_rotate.selfcheck.bench_accuracy import map_jobs
    from circle_rotate.selfcheck.bench_real import read_labels

    labels = read_labels(folder)
    # the search runs on frame 0; a set labelled from a later frame is compared with its earliest box
    return map_jobs(_real_row, [(v.name, v.video, v.boxes[min(v.boxes)]) for v in labels], jobs)


def report(rows: Sequence[FinderRow], title: str, *, real: bool) -> str:
    heads = ("in box", "covers") if real else ("precision", "recall")
    lines = [title, f"  {'video':<16} {'found by':<9} {'IoU':>5} {heads[0]:>9} {heads[1]:>9}"]
    for r in rows:
        iou = "    -" if real else f"{r.overlap.iou:5.2f}"
        lines.append(f"  {r.name:<16} {r.basis:<9} {iou} {r.overlap.precision:9.2f} {r.overlap.recall:9.2f}")
    prec = np.array([r.overlap.precision for r in rows])
    rec = np.array([r.overlap.recall for r in rows])
    if real:
        lines += [f"  median share inside the box   {np.median(prec):.2f} (under 0.8: {int((prec < 0.8).sum())})",
                  f"  median share of the box       {np.median(rec):.2f} (under 0.5: {int((rec < 0.5).sum())})"]
    else:
        ious = np.array([r.overlap.iou for r in rows])
        lines += [f"  IoU median {np.median(ious):.3f}, mean {ious.mean():.3f}, under 0.5: {int((ious < 0.5).sum())} "
                  f"of {len(rows)}",
                  f"  median precision {np.median(prec):.2f}, median recall {np.median(rec):.2f}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from circle_rotate.selfcheck.bench_accuracy import add_set_arguments, set_folder, set_specs

    ap = argparse.ArgumentParser(prog="python -m circle_rotate.selfcheck.bench_finder", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group()
    add_set_arguments(ap, set_group=where)
    where.add_argument("--real", type=Path, metavar="FOLDER", help="a labelled real set (videos + boxes.json), "
                                                                    "instead of a rendered --set")
    args = ap.parse_args(argv)
    if args.real is not None and (args.seeds or args.folder):
        ap.error("--seeds and --folder choose a rendered set; with --real the folder is the labelled one")
    if args.real is not None:
        rows = measure_real(args.real, jobs=args.jobs)  # a UserError: circle-rotate's one-line error, exit 2
        title = f"first-frame subject search against the first labelled box, {args.real.name} ({len(rows)} videos)"
    else:
        with set_folder(args.folder) as folder:
            rows = measure_rendered(set_specs(args.set, args.seeds), folder, jobs=args.jobs)
        title = f"first-frame subject search against the exact mask, {args.set} set ({len(rows)} videos)"
    print(report(rows, title, real=args.real is not None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
