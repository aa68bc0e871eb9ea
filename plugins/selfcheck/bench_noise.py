"""Benchmark: how far re-encoding moves the subject-drift reading (the measurement's noise floor).

Every video in ``--folder`` is decoded, re-encoded with H.264 at each ``--crf`` and evaluated
again, found the same way as the original (automatically). A generated video reaches a user
through some encoder (the sampler's own, a GIF, a re-upload), so a drift difference between a
baseline and a LoRA smaller than what re-encoding alone moves is not evidence of anything.
Prints per video the reading on the original and on each re-encode (``u``: marked
``drift_unreliable``), and per CRF the median and largest change and how many verdicts flipped.

    python -m circle_rotate.selfcheck.bench_noise --folder ../shared/eval-real [--crf 18 28 35] [--plot noise.png]

H.264 needs even frame sizes: an odd last row or column is dropped before encoding (under a
pixel of centroid). The re-encodes are written to a temporary folder and removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from circle_rotate.kernel.errors import UserError

DEFAULT_CRFS = (18, 28, 35)


@dataclass(frozen=True)
class Drift:
    """One evaluation's reading (``value`` None: the evaluation failed)."""

    value: Optional[float]
    unreliable: bool


@dataclass(frozen=True)
class NoiseRow:
    """One video: its reading on the original and on each re-encode (by CRF)."""

    name: str
    original: Drift
    reencoded: Dict[int, Drift]

    def change(self, crf: int) -> Optional[float]:
        a, b = self.original.value, self.reencoded[crf].value
        return None if a is None or b is None else abs(b - a)


@dataclass(frozen=True)
class CrfScore:
    crf: int
    median_change: float
    max_change: float
    flipped: int  # verdicts (reliable <-> unreliable) that the re-encode changed
    failed: int


def reencode(video: Path, folder: Path, crf: int) -> Path:
    """``video`` decoded and written again as H.264 at ``crf`` into ``folder`` (same frame rate)."""
    from circle_rotate.eval.frames import load_clip
    from circle_rotate.kernel.video_io import write_video

    clip = load_clip(video)
    h, w = clip.frames.shape[1:3]
    out = folder / f"{video.name}.crf{crf}.mp4"  # by full name: a.gif and a.mp4 may sit side by side
    write_video(out, clip.frames[:, : h - h % 2, : w - w % 2], fps=clip.fps, crf=crf)
    return out


def _reading(row: Dict) -> Drift:
    if row["status"] != "ok" or row.get("drift") is None:
        return Drift(None, True)
    return Drift(float(row["drift"]), bool(row.get("drift_unreliable")))


def measure(videos: Sequence[Path], crfs: Sequence[int], *, jobs: int, workdir: Path) -> List[NoiseRow]:
    """Each video and its re-encodes (written under ``workdir``), evaluated in one batch."""
    from circle_rotate.eval.runner import evaluate
    from circle_rotate.kernel.progress import progress

    copies: Dict[Tuple[str, int], Path] = {}
    for v in progress(videos, desc="re-encode", unit="video"):
        for crf in crfs:
            copies[v.name, crf] = reencode(v, workdir, crf)
    paths = list(videos) + list(copies.values())
    rows = evaluate(paths, metrics=["subject_drift"], jobs=jobs).rows
    by_path = {r["path"]: _reading(r) for r in rows}
    return [NoiseRow(v.stem, by_path[str(v)], {crf: by_path[str(copies[v.name, crf])] for crf in crfs})
            for v in videos]


def score(rows: Sequence[NoiseRow], crfs: Sequence[int]) -> List[CrfScore]:
    out = []
    for crf in crfs:
        changes = [c for c in (r.change(crf) for r in rows) if c is not None]
        flipped = sum(r.original.value is not None and r.reencoded[crf].value is not None
                      and r.original.unreliable != r.reencoded[crf].unreliable for r in rows)
        out.append(CrfScore(crf, float(np.median(changes)) if changes else float("nan"),
                            max(changes) if changes else float("nan"), flipped, len(rows) - len(changes)))
    return out


def _cell(d: Drift) -> str:
    return "  failed" if d.value is None else f"{d.value:7.2f}{'u' if d.unreliable else ' '}"


def report(rows: Sequence[NoiseRow], scores: Sequence[CrfScore], title: str) -> str:
    crfs = [s.crf for s in scores]
    lines = [title, f"  {'video':<16} {'original':>8} " + " ".join(f"{'crf ' + str(c):>8}" for c in crfs)]
    for r in rows:
        lines.append(f"  {r.name:<16} {_cell(r.original)} " + " ".join(_cell(r.reencoded[c]) for c in crfs))
    lines.append("  (u: marked drift_unreliable)")
    for s in scores:
        lines.append(f"  crf {s.crf:<3} |change| median {s.median_change:.2f} px, largest {s.max_change:.2f} px; "
                     f"verdict flipped on {s.flipped} of {len(rows)}" + (f"; {s.failed} failed" if s.failed else ""))
    return "\n".join(lines)


def plot(rows: Sequence[NoiseRow], crfs: Sequence[int], path: Path, title: str) -> None:
    """Re-encoded reading against the original's, one colour per CRF."""
    from circle_rotate.eval.plots import plt, png_bytes
    from circle_rotate.kernel.atomic import write_bytes

    fig, ax = plt.subplots(figsize=(5.5, 5))
    top = 1.0
    for crf in crfs:
        pts = [(r.original.value, r.reencoded[crf].value) for r in rows if r.change(crf) is not None]
        if pts:
            ax.scatter(*zip(*pts), s=20, label=f"crf {crf}", zorder=3)
            top = max(top, *(max(p) for p in pts))
    ax.plot([0, top * 1.1], [0, top * 1.1], color="#1c7ed6", lw=1)
    ax.set(xlim=(0, top * 1.1), ylim=(0, top * 1.1), xlabel="drift on the original (px)",
           ylabel="drift on the re-encode (px)", title=title)
    ax.legend(loc="lower right", fontsize=8)
    write_bytes(path, png_bytes(fig))


def _videos(folder: Path) -> List[Path]:
    """The videos ``circle-rotate eval`` would take from ``folder`` (files and frame folders)."""
    from circle_rotate.eval.runner import find_videos

    if not folder.is_dir():
        raise UserError("not a folder", path=folder, fix="pass a folder of videos, e.g. --folder ../shared/eval-real")
    return find_videos([folder])  # a folder without videos: its UserError


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m circle_rotate.selfcheck.bench_noise", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, required=True, help="a folder of videos")
    ap.add_argument("--crf", type=int, nargs="+", default=list(DEFAULT_CRFS), metavar="N",
                    help="H.264 constant rate factors to re-encode at (0-51; 18 is visually lossless)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--plot", type=Path, help="write re-encoded against original drift as a PNG here")
    args = ap.parse_args(argv)
    bad = [c for c in args.crf if not 0 <= c <= 51]
    if bad:
        ap.error(f"--crf {bad[0]}: H.264's constant rate factor lies in 0-51, e.g. --crf 18 28 35")
    videos = _videos(args.folder)  # a UserError: circle-rotate's one-line error, exit 2
    with tempfile.TemporaryDirectory(prefix="circle-rotate-noise-") as tmp:
        rows = measure(videos, args.crf, jobs=args.jobs, workdir=Path(tmp))
    scores = score(rows, args.crf)
    title = f"subject drift after re-encoding, {args.folder.name} ({len(rows)} videos, H.264)"
    print(report(rows, scores, title))
    if args.plot:
        plot(rows, args.crf, args.plot, title)
        print(f"  plot: {args.plot}")
    return 1 if any(r.original.value is None for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
