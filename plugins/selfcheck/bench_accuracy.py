"""Benchmark: how close ``circle-rotate eval``'s subject drift comes to the exact truth, on a seeded set.

Renders a set of :mod:`circle_rotate.selfcheck.synthetic.orbit_sets` (cached in ``--folder``: a second run
only evaluates), runs the evaluation on it and prints, per video and overall, what the issue's
acceptance asks about: median |error|, how many lie within max(3 px, 15% of the truth), the
Spearman rank correlation, what a static camera over a still subject reads, and, where the
evaluation marks videos ``drift_unreliable``, how many it marked and how many of the rest hold.

    python -m circle_rotate.selfcheck.bench_accuracy --set held-out [--folder DIR] [--jobs 2] [--plot acc.png]
    python -m circle_rotate.selfcheck.bench_accuracy --set development --seeds 1300-1305
    python -m circle_rotate.selfcheck.bench_accuracy --set development --first-mask
    python -m circle_rotate.selfcheck.bench_accuracy --set development --first-box

``--first-mask`` gives each video the generator's exact subject mask on its first frame (as a
user's ``--subject-mask`` would), so the figures measure the follower alone; the difference
from a run without it is what finding the subject costs. ``--first-box`` gives that mask's
tight box instead (as a user's ``--subject-box`` would): the path most users who help the
evaluation take. Tune on ``development`` only; ``held-out`` judges.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterator, List, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec

ABS_TOL_PX, REL_TOL = 3.0, 0.15


class Judged:
    """A reading against its truth (``truth``, ``measured``; None: the evaluation failed),
    within max(``abs_tol`` px, ``rel_tol`` of the truth)."""

    abs_tol: ClassVar[float] = ABS_TOL_PX
    rel_tol: ClassVar[float] = REL_TOL
    truth: float
    measured: Optional[float]

    @property
    def error(self) -> float:
        return abs(self.measured - self.truth) if self.measured is not None else float("inf")

    @property
    def within(self) -> bool:
        return self.error <= max(self.abs_tol, self.rel_tol * self.truth)


@dataclass(frozen=True)
class Reading(Judged):
    """One video: the truth, what the evaluation read, and what it said about it."""

    name: str
    camera: str
    subject: str
    truth: float
    measured: Optional[float]  # None: the evaluation failed on it
    unreliable: bool = False
    found_by: str = ""  # what the first frame's subject rested on (``subject_found_by``)


@dataclass(frozen=True)
class Score:
    count: int
    median_error: float
    within: int
    spearman: float
    static_max: Optional[float]  # the largest reading on a static camera over a still subject
    unreliable: int
    within_or_marked: int


def score(readings: Sequence[Reading]) -> Score:
    """The summary figures of a set of readings (failed evaluations count as misses)."""
    from scipy.stats import spearmanr

    errors = np.array([r.error for r in readings])
    done = [r for r in readings if r.measured is not None]
    rho = float(spearmanr([r.truth for r in done], [r.measured for r in done])[0]) if len(done) > 2 else float("nan")
    static = [r.measured for r in done if r.camera == "static"]
    return Score(len(readings), float(np.median(errors)), sum(r.within for r in readings), rho,
                 max(static) if static else None, sum(r.unreliable for r in readings),
                 sum(r.within or r.unreliable for r in readings))


def _first_hint(mask: np.ndarray, given: str):
    from circle_rotate.eval.subject_mask import SubjectHint

    if given == "mask":
        return SubjectHint(mask=mask)
    ys, xs = np.nonzero(mask)
    return SubjectHint(box=(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)))


def measure(specs: Sequence[TurntableSpec], folder: Path, *, jobs: int, metrics: Sequence[str], column: str,
            given: Optional[str] = None) -> List[Reading]:
    """Render (or reuse) ``specs`` in ``folder``, evaluate them, pair each row with its truth.
    With ``given="mask"`` each video is given its exact first-frame subject mask (as
    ``--subject-mask``), with ``given="box"`` that mask's tight box (as ``--subject-box``)."""
    from circle_rotate.eval.runner import evaluate
    from circle_rotate.selfcheck.synthetic.orbit_sets import write_set
    from circle_rotate.selfcheck.synthetic.turntable import load_masks, load_truth

    files = write_set(specs, folder)
    options = {}
    if given:
        options["subject_boxes"] = {f.video.name: _first_hint(load_masks(f.masks)[0], given) for f in files}
    rows = {r["video"]: r for r in evaluate([f.video for f in files], metrics=list(metrics), jobs=jobs,
                                            options=options).rows}
    out = []
    for spec, f in zip(specs, files):
        row = rows[f.video.name]
        value = row.get(column) if row["status"] == "ok" else None
        out.append(Reading(spec.name, spec.camera, spec.subject, float(load_truth(f.truth)["drift"]),
                           None if value is None else float(value), bool(row.get("drift_unreliable", False)),
                           str(row.get("subject_found_by") or "")))
    return out


def set_specs(set_name: str, seeds: Optional[Sequence[int]]) -> List[TurntableSpec]:
    """The specs of the ``development`` or ``held-out`` set (all its seeds, or ``seeds``)."""
    from circle_rotate.selfcheck.synthetic.orbit_sets import SETS, development_set, held_out_set

    chosen = tuple(seeds) if seeds else SETS[set_name]
    return development_set(chosen) if set_name == "development" else held_out_set(chosen)


def report(readings: Sequence[Reading], s: Score, title: str) -> str:
    lines = [title, f"  {'video':<11} {'camera':<7} {'subject':<9} {'truth':>8} {'read':>8} {'|err|':>7}  within"]
    for r in readings:
        read = f"{r.measured:8.2f}" if r.measured is not None else "  failed"
        mark = "yes" if r.within else "no"
        lines.append(f"  {r.name:<11} {r.camera:<7} {r.subject:<9} {r.truth:8.2f} {read} {r.error:7.2f}  {mark}"
                     + ("  (marked unreliable)" if r.unreliable else ""))
    lines += [f"  median |error|          {s.median_error:.2f} px",
              f"  within max(3 px, 15%)   {s.within} of {s.count}",
              f"  Spearman                {s.spearman:.3f}",
              "  static camera reads     " + ("-" if s.static_max is None else f"at most {s.static_max:.2f} px (truth 0)")]
    if s.unreliable:
        lines.append(f"  marked unreliable       {s.unreliable}; within or marked {s.within_or_marked} of {s.count}")
    return "\n".join(lines)


def plot(readings: Sequence[Reading], path: Path, title: str) -> None:
    """Measured against true drift (log-log), the tolerance band shaded."""
    from circle_rotate.eval.plots import plt, png_bytes
    from circle_rotate.kernel.atomic import write_bytes

    done = [r for r in readings if r.measured is not None]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    top = max([r.truth for r in done] + [r.measured for r in done] + [10.0]) * 1.3
    x = np.geomspace(0.1, top, 200)
    ax.fill_between(x, np.maximum(x - np.maximum(ABS_TOL_PX, REL_TOL * x), 0.1), x + np.maximum(ABS_TOL_PX, REL_TOL * x),
                    color="#d0ebff", label="within max(3 px, 15%)")
    ax.plot(x, x, color="#1c7ed6", lw=1)
    for camera, colour in (("orbit", "#d9480f"), ("pan", "#2b8a3e"), ("static", "#5f3dc4")):
        pts = [(max(r.truth, 0.1), max(r.measured, 0.1)) for r in done if r.camera == camera]
        if pts:
            ax.scatter(*zip(*pts), s=18, color=colour, label=camera, zorder=3)
    ax.set(xscale="log", yscale="log", xlim=(0.1, top), ylim=(0.1, top), xlabel="true drift (px)",
           ylabel="measured drift (px)", title=title)
    ax.legend(loc="upper left", fontsize=8)
    write_bytes(path, png_bytes(fig))


def _seeds(text: Optional[str]) -> Optional[List[int]]:
    if not text:
        return None
    out: List[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        try:
            out.extend(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a seed or a range; give e.g. 1300-1305,1310") from None
    return out


def add_set_arguments(ap: argparse.ArgumentParser, *, set_group=None) -> None:
    """``--set``, ``--seeds``, ``--folder`` and ``--jobs``: the options of a benchmark on a rendered set
    (``--set`` in ``set_group`` where a benchmark offers another source instead)."""
    (set_group or ap).add_argument("--set", choices=("development", "held-out"), default="development")
    ap.add_argument("--seeds", type=_seeds, help="a subset or other seeds of that kind, e.g. 1300-1305,1310")
    ap.add_argument("--folder", type=Path, help="where the videos are rendered and kept (default: a temporary folder)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))


def map_jobs(fn, items: Sequence, jobs: int) -> list:
    """``[fn(i) for i in items]``, in eval's worker processes where ``jobs`` > 1."""
    if jobs <= 1 or len(items) <= 1:
        return [fn(i) for i in items]
    from circle_rotate.eval.runner import worker_pool

    with worker_pool(min(jobs, len(items))) as pool:
        return list(pool.map(fn, items))


@contextmanager
def set_folder(folder: Optional[Path]) -> Iterator[Path]:
    """``folder`` (made if missing; a rendered set is kept there for the next run), or a
    temporary one removed afterwards."""
    if folder is not None:  # a read-only or file --folder: one line, not a traceback
        from circle_rotate.kernel.write_checks import check_output_dir

        check_output_dir(folder, flag="--folder")
    with tempfile.TemporaryDirectory() as tmp:
        out = folder or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        yield out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m circle_rotate.selfcheck.bench_accuracy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_set_arguments(ap)
    ap.add_argument("--metrics", default="subject_drift", help="what eval runs (default: subject_drift)")
    ap.add_argument("--column", default="drift", help="the result column holding the drift (default: drift)")
    ap.add_argument("--plot", type=Path, help="write measured-vs-true as a PNG here")
    first = ap.add_mutually_exclusive_group()
    first.add_argument("--first-mask", dest="given", action="store_const", const="mask",
                       help="give each video its exact first-frame subject mask (measures the follower alone)")
    first.add_argument("--first-box", dest="given", action="store_const", const="box",
                       help="give each video the tight box of that mask (a user's --subject-box)")
    args = ap.parse_args(argv)
    with set_folder(args.folder) as folder:
        readings = measure(set_specs(args.set, args.seeds), folder, jobs=args.jobs, metrics=args.metrics.split(","),
                           column=args.column, given=args.given)
    given = {"mask": ", exact first-frame mask given", "box": ", first-frame box given"}.get(args.given, "")
    title = f"subject drift against the truth, {args.set} set ({len(readings)} videos{given})"
    print(report(readings, score(readings), title))
    if args.plot:
        plot(readings, args.plot, title)
        print(f"  plot: {args.plot}")
    return 1 if any(r.measured is None for r in readings) else 0


if __name__ == "__main__":
    raise SystemExit(main())
