"""``circle-rotate eval``: subject drift and the paper's metrics on videos, on a CPU; and
``circle-rotate eval compare BASELINE LORA``: the paired comparison with a report."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

from circle_rotate.cli._common import add_force, new_parser, print_json
from circle_rotate.errors import UserError

ORDER = 40

_TABLE = (("drift", "drift px"), ("drift_confidence", "drift conf"), ("subject_flow", "subj.flow"),
          ("motion_magnitude", "motion"),
          ("dynamic_degree", "dyn.deg"), ("psnr", "psnr"), ("ssim", "ssim"), ("orbit_direction", "orbit"))


def add_parser(sub) -> None:
    from circle_rotate.eval.registry import ALIASES, METRICS

    names = ", ".join(m.name + ("*" if m.learned else "") for m in METRICS)
    p = new_parser(
        sub, "eval", help="measure subject drift, motion, PSNR/SSIM and orbit metrics of videos (CPU, no weights)",
        description=(
            "Two shapes:\n"
            "  circle-rotate eval PATH... [--metrics M ...] [--out results.json] [--csv] [--jobs N] [--keep-going]\n"
            "                     [--subject-box X0,Y0,X1,Y1 | --subject-mask PNG | --subject-boxes JSON] [--save-masks DIR]\n"
            "  circle-rotate eval compare BASELINE LORA [--out DIR]\n\n"
            "PATH: video files (mp4, webm, gif, ...), folders of them, or folders of image frames.\n"
            "BASELINE / LORA: folders of videos paired by name, or results .json files of earlier runs.\n"
            f"Metrics: {names} (* = learned, needs local weights, else reported as skipped);\n"
            f"'default' (everything without weights) and 'all'; reference names {', '.join(ALIASES)}.\n"
            "Definitions: circle_rotate/eval/METRICS.md. A video that cannot be read becomes an error row;\n"
            "the exit status is then 1 unless --keep-going."),
        examples=("  circle-rotate eval outputs/ --out results.json --csv\n"
                  "  circle-rotate eval --metric all --input_dir outputs --output results.json\n"
                  "  circle-rotate eval clip.mp4 --subject-box 40,60,140,300 --save-masks masks/\n"
                  "  circle-rotate eval compare baseline_videos/ lora_videos/ --out report/\n"
                  "  circle-rotate eval compare base.json lora.json --out report/ --force\n"))
    p.add_argument("paths", nargs="*", metavar="PATH", help="videos or folders (or: compare BASELINE LORA)")
    p.add_argument("--metrics", "--metric", nargs="+", default=None, metavar="M",
                   help="metric names, 'default' or 'all' (default: default)")
    p.add_argument("--input_dir", "--input-dir", action="append", default=[], metavar="DIR",
                   help="a folder of videos (the reference's spelling; same as a PATH)")
    p.add_argument("--out", "--output", type=Path, default=None, metavar="FILE|DIR",
                   help="results .json (a .png is written next to it); for compare, the report folder "
                        "(default: compare-report)")
    p.add_argument("--csv", action="store_true", help="also write the per-video rows as .csv next to the .json")
    p.add_argument("--jobs", type=int, default=0, metavar="N", help="videos evaluated at once (default: all cores)")
    p.add_argument("--keep-going", action="store_true", help="exit 0 even when some videos could not be evaluated")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                   help="local weights for learned metrics: clip=DIR, yolo=FILE, sam=FILE")
    subject = p.add_mutually_exclusive_group()
    subject.add_argument("--subject-box", metavar="X0,Y0,X1,Y1",
                         help="the subject's box on the first frame, in pixels (every video); default: found")
    subject.add_argument("--subject-mask", type=Path, metavar="PNG",
                         help="the subject on the first frame: a PNG the size of the frames, white on black")
    subject.add_argument("--subject-boxes", type=Path, metavar="JSON",
                         help='first-frame boxes keyed by video file name: {"a.mp4": [x0, y0, x1, y1], ...}')
    p.add_argument("--save-masks", type=Path, default=None, metavar="DIR",
                   help="write each video's subject masks (DIR/<video>/frame_NNNN.png) and contact sheet "
                        "(DIR/<video>.drift.png)")
    add_force(p)
    p.set_defaults(func=run)


def _subject_options(args: argparse.Namespace) -> Dict[str, Any]:
    from circle_rotate.eval.subject_hints import parse_box, read_boxes, read_mask

    out: Dict[str, Any] = {}
    if args.subject_box:
        out["subject"] = parse_box(args.subject_box)
    elif args.subject_mask:
        out["subject"] = read_mask(args.subject_mask)
    elif args.subject_boxes:
        out["subject_boxes"] = read_boxes(args.subject_boxes)
    if args.save_masks is not None:
        if args.save_masks.exists() and not args.save_masks.is_dir():
            raise UserError("--save-masks must be a folder", path=args.save_masks, fix="name a new or existing folder")
        out["mask_dir"] = out["sheet_dir"] = str(args.save_masks)
    return out


def _options(pairs: List[str]) -> Dict[str, Dict[str, str]]:
    weights, bad = {}, []
    for item in pairs:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            bad.append(item)
            continue
        weights[name.strip()] = path.strip()
    if bad:
        raise UserError(f"--weights {', '.join(bad)}: expected NAME=PATH", fix="e.g. --weights clip=models/clip-vit-b32")
    return {"weights": weights}


def _jobs(n: int) -> int:
    return n if n > 0 else max(1, os.cpu_count() or 1)


def _cell(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _print_table(rows, aggregate) -> None:
    cols = [(k, h) for k, h in _TABLE if any(k in r for r in rows)]
    width = max([len(r["video"]) for r in rows] + [5])
    print(f"{'video':<{width}}  " + "  ".join(f"{h:>9}" for _, h in cols))
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['video']:<{width}}  error: {r['error']}")
            continue
        print(f"{r['video']:<{width}}  " + "  ".join(f"{_cell(r.get(k)):>9}" for k, _ in cols))
    means = [aggregate.get(k, {}).get("mean") for k, _ in cols]
    print(f"{'mean':<{width}}  " + "  ".join(f"{_cell(m):>9}" for m in means))
    notes = [f"{r['video']}: {n}" for r in rows for n in r.get("notes", []) + r.get("skipped", [])]
    for n in dict.fromkeys(notes):
        print(f"note: {n}", file=sys.stderr)


def _run_compare(args: argparse.Namespace) -> int:
    from circle_rotate.eval.compare import run_compare

    if len(args.paths) != 3:
        raise UserError(f"eval compare takes BASELINE and LORA, got {len(args.paths) - 1} path(s)",
                        fix="circle-rotate eval compare baseline_videos/ lora_videos/ --out report/")
    outcome = run_compare(args.paths[1], args.paths[2], out_dir=args.out or Path("compare-report"),
                          metrics=args.metrics or ["default"], jobs=_jobs(args.jobs),
                          options={**_options(args.weights), **_subject_options(args)}, force=args.force)
    print(f"{len(outcome.pairs)} paired videos")
    for c in outcome.comparisons:
        print(f"  {c.headline()}  [{c.verdict}]")
    for n in outcome.notes:
        print(f"note: {n}", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in outcome.written))
    return 1 if outcome.failed and not args.keep_going else 0


def run(args: argparse.Namespace) -> int:
    from circle_rotate.eval.results_io import check_outputs, write_results
    from circle_rotate.eval.runner import evaluate

    if args.paths and args.paths[0] == "compare" and not Path("compare").exists():
        return _run_compare(args)
    paths = list(args.paths) + list(args.input_dir)
    if not paths:
        raise UserError("no videos given", fix="circle-rotate eval VIDEO_OR_FOLDER... (see --help)")
    if args.out is not None:
        check_outputs(args.out, csv_too=args.csv, force=args.force, inputs=paths)
    elif args.csv:
        raise UserError("--csv needs --out results.json", fix="add --out results.json")
    options = {**_options(args.weights), **_subject_options(args)}
    results = evaluate(paths, metrics=args.metrics or ["default"], jobs=_jobs(args.jobs), options=options)
    if args.out is not None:
        written = write_results(results, args.out, csv_too=args.csv)
    if args.json:
        print_json(results.to_dict())
    else:
        _print_table(results.rows, results.aggregate)
        if args.out is not None:
            print("wrote " + ", ".join(str(p) for p in written))
    if results.failed:
        print(f"{len(results.failed)} of {len(results.rows)} videos could not be evaluated", file=sys.stderr)
        return 0 if args.keep_going else 1
    return 0
