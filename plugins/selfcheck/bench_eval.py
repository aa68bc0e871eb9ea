"""Benchmark: the default metric set against the unavoidable floor, side by side in one run.

The floor is what motion magnitude alone costs: decoding each video once plus one
full-resolution Farneback pass over every pair of consecutive frames, in one process.
The default set is timed the way ``circle-rotate eval`` runs it (decode once, each flow
once, shared between metrics, ``--jobs`` worker processes, the cores shared out between the
videos evaluated at once), with one job (one video at a time, its flows on every core), and
on one core (one job, one thread: the work itself, against the floor's work).

    python -m circle_rotate.selfcheck.bench_eval [--videos 4] [--frames 81] [--size 832x480] [--jobs 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import List, Sequence

import cv2

from circle_rotate.eval.flow import farneback
from circle_rotate.eval.runner import evaluate, usable_cores
from circle_rotate.kernel.arg_types import frame_size, whole_number
from circle_rotate.kernel.video_io import read_video
from circle_rotate.selfcheck.synthetic.turntable import SUBJECTS, DriftPath, TurntableSpec, write_turntable


def make_videos(folder: Path, *, count: int, frames: int, size: tuple[int, int]) -> List[Path]:
    """Synthetic orbits of varied subjects, directions and drift (written once)."""
    out = []
    for i in range(count):
        spec = TurntableSpec(name=f"bench_{i:02d}", width=size[0], height=size[1], frames=frames,
                             subject=SUBJECTS[i % len(SUBJECTS)], direction=("right", "left")[i % 2], clutter=i % 4,
                             drift=DriftPath("sine", 4.0 * i, angle_deg=30.0 * i), seed=i)
        out.append(write_turntable(spec, folder).video)
    return out


def floor_seconds(videos: Sequence[Path]) -> float:
    """Decode each video once and run Farneback over all consecutive pairs, in this process."""
    start = time.perf_counter()
    for v in videos:
        grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in read_video(v)]
        for a, b in zip(grey[:-1], grey[1:]):
            farneback(a, b)
    return time.perf_counter() - start


def decode_seconds(videos: Sequence[Path]) -> float:
    start = time.perf_counter()
    for v in videos:
        read_video(v)
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m circle_rotate.selfcheck.bench_eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=whole_number(1), default=4)
    ap.add_argument("--frames", type=whole_number(2), default=81)
    ap.add_argument("--size", type=frame_size, default=(832, 480), metavar="WxH")
    ap.add_argument("--jobs", type=whole_number(1), default=usable_cores())
    args = ap.parse_args(argv)
    size = args.size
    with tempfile.TemporaryDirectory() as d:
        videos = make_videos(Path(d), count=args.videos, frames=args.frames, size=size)
        cv2.setNumThreads(1)  # the floor is one process on one core, as the reference runs
        decode = decode_seconds(videos)
        floor = floor_seconds(videos)
        timed = {}
        failed = 0
        runs = [("one core (--jobs 1, one thread)", 1, 1), ("--jobs 1", 1, None)]
        if args.jobs > 1:
            runs.append((f"--jobs {args.jobs}", args.jobs, None))
        for label, jobs, threads in runs:
            cv2.setNumThreads(1 if threads == 1 else -1)
            t = time.perf_counter()
            failed += len(evaluate(videos, metrics=["default"], jobs=jobs, threads=threads).failed)
            timed[label] = time.perf_counter() - t
        cv2.setNumThreads(-1)
    print(f"{args.videos} videos, {args.frames} frames, {size[0]}x{size[1]}, {usable_cores()} cores")
    print(f"  {'decode once':<53} {decode:8.2f} s")
    print(f"  {'floor: decode + Farneback all pairs, one core':<53} {floor:8.2f} s   "
          f"({floor / max(decode, 1e-9):.0f}x the decode)")
    for label, seconds in timed.items():
        target = "   (target <= 1.3x)" if label == runs[-1][0] else ""
        print(f"  {'default metric set, ' + label:<53} {seconds:8.2f} s   {seconds / floor:5.2f}x the floor{target}")
    if failed:
        print(f"  {failed} evaluations failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
