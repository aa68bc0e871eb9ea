"""Benchmark: ``prepare`` against its floor, side by side in one run.

    circle-rotate bench prepare [--sources 6] [--frames 81] [--size 832x480] [--repeat 3]

The floor is what any tool must do to make the same clips: decode every source once and
encode the same output frames with the same x264 settings (one process; x264 threads
itself). ``prepare`` adds probing, timestamp resampling, cut detection, orbit QC and
captions, and spreads sources over the cores. The two alternate for ``--repeat`` rounds
(other work on the machine then slows both alike); prints each round and the medians'
ratio (target: at most 1.3x).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import List

from circle_rotate.kernel.arg_types import frame_size, whole_number
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.progress import set_quiet
from circle_rotate.kernel.video_io import iter_decoded_frames, probe_video, write_video
from circle_rotate.prepare.clip_plan import SizePolicy, frame_geometry
from circle_rotate.prepare.options import PrepareOptions
from circle_rotate.prepare.run import prepare_dataset
from circle_rotate.selfcheck.synthetic.turntable import SUBJECTS, TurntableSpec, write_turntable


def make_sources(folder: Path, *, count: int, frames: int, width: int, height: int) -> List[Path]:
    """Synthetic constant-speed orbits at 16 fps (one clip each), alternating direction."""
    out = []
    for i in range(count):
        spec = TurntableSpec(name=f"src{i:02d}", width=width, height=height, frames=frames, fps=16.0,
                             direction="right" if i % 2 == 0 else "left", total_angle_deg=60 + 15 * i,
                             subject=SUBJECTS[i % len(SUBJECTS)], clutter=i % 3, seed=i)
        out.append(write_turntable(spec, folder / "raw").video)
    return out


def floor_seconds(sources: List[Path], out: Path, options: PrepareOptions) -> float:
    """Decode each source once and encode its frames as one clip, as ``prepare`` would."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for src in sources:
        info = probe_video(src)
        geo = frame_geometry(*info.display_size, options.size)
        x, y, w, h = geo.crop
        frames = (f.to_rgb(geo.scaled)[y:y + h, x:x + w] for f in iter_decoded_frames(src))
        write_video(out / src.name, frames, fps=options.fps, crf=options.crf, preset=options.preset,
                    threads=options.encode_threads)
    return time.perf_counter() - start


#: Left in a ``--workdir`` this benchmark made: only such a folder's raw/, floor/ and out/ are ever deleted.
MARKER = ".circle-rotate-bench-prepare"


def claim_workdir(work: Path) -> Path:
    """``work`` made (or reused) as this benchmark's own folder, marked so a later run may clear it.

    Raises:
        UserError: ``work`` is a file, cannot take files, or is a non-empty folder the benchmark did
            not make (its raw/, floor/ and out/ are deleted between rounds: never the user's own).
    """
    from circle_rotate.kernel.write_checks import check_output_dir

    work = check_output_dir(work, flag="--workdir")
    marker = work / MARKER
    if work.is_dir() and not marker.is_file() and any(work.iterdir()):
        raise UserError("is a folder that bench prepare did not make; it deletes raw/, floor/ and out/ in its "
                        "--workdir", path=work, fix="give --workdir a new or empty folder")
    work.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by circle-rotate bench prepare; raw/, floor/ and out/ here are deleted on each run\n")
    return work


def cpu_seconds() -> float:
    """User + system CPU time of this process, its threads and its finished children."""
    try:
        import resource
    except ImportError:  # not on Windows
        return 0.0
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="circle-rotate bench prepare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", type=whole_number(1), default=6)
    ap.add_argument("--frames", type=whole_number(1), default=81)
    ap.add_argument("--size", type=frame_size, default=(832, 480), metavar="WxH", help="source and clip size (default 832x480)")
    ap.add_argument("--repeat", type=whole_number(1), default=3, help="rounds of floor then prepare (medians are reported)")
    ap.add_argument("--workdir", type=Path, help="keep sources here (reused when present); a new or empty folder, "
                                                 "or one an earlier bench prepare made")
    args = ap.parse_args(argv)
    set_quiet(True)
    width, height = args.size
    work = claim_workdir(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        sources = sorted((work / "raw").glob("*.mp4"))
        if len(sources) != args.sources:
            shutil.rmtree(work / "raw", ignore_errors=True)
            print(f"rendering {args.sources} synthetic {args.frames}-frame {width}x{height} sources ...")
            sources = make_sources(work, count=args.sources, frames=args.frames, width=width, height=height)
        options = PrepareOptions(frames=args.frames, size=SizePolicy(width=width, height=height))
        floors, preps, cpu, report = [], [], [0.0, 0.0], None
        for _ in range(args.repeat):  # alternate, so a busy neighbour slows both alike
            shutil.rmtree(work / "floor", ignore_errors=True)
            shutil.rmtree(work / "out", ignore_errors=True)
            c0 = cpu_seconds()
            floors.append(floor_seconds(sources, work / "floor", options))
            c1 = cpu_seconds()
            start = time.perf_counter()
            report = prepare_dataset(work / "raw", work / "out", options=options)
            preps.append(time.perf_counter() - start)
            cpu[0] += c1 - c0
            cpu[1] += cpu_seconds() - c1
            print(f"  round {len(floors)}: floor {floors[-1]:6.2f} s, prepare {preps[-1]:6.2f} s, "
                  f"ratio {preps[-1] / floors[-1]:.2f}x")
        floor, prep = statistics.median(floors), statistics.median(preps)
        print(f"sources: {len(sources)} x {args.frames} frames {width}x{height}, x264 crf {options.crf} "
              f"preset {options.preset}, {options.workers(len(sources))} worker(s), {os.cpu_count()} core(s)")
        print(f"floor (decode once + encode the same clips), median of {args.repeat}: {floor:6.2f} s")
        print(f"prepare (probe, resample, cuts, orbit QC, captions, encode), median: {prep:6.2f} s "
              f"({report.clips} clips kept, {report.rejected} rejected)")
        print(f"ratio prepare / floor: {prep / floor:.2f}x (target <= 1.3x)")
        if cpu[0] > 0:
            print(f"CPU time (all processes and threads), total: floor {cpu[0]:.1f} s, prepare {cpu[1]:.1f} s, "
                  f"ratio {cpu[1] / cpu[0]:.2f}x (the work added, whatever else the machine is doing)")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
