"""``circle-rotate eval [run] PATH...``: subject drift and the paper's metrics on videos, on a CPU; and
``circle-rotate eval compare BASELINE LORA``: the paired comparison with a report."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

from circle_rotate.cli._common import add_alias, add_force, add_out, new_parser, print_json
from circle_rotate.kernel.errors import ConfigValueError, UserError

ORDER = 40

_TABLE = (("drift", "drift px"), ("drift_confidence", "drift conf"), ("subject_flow", "subj.flow"),
          ("motion_magnitude", "motion"),
          ("dynamic_degree", "dyn.deg"), ("psnr", "psnr"), ("ssim", "ssim"), ("orbit_direction", "orbit"))


class _MetricsAction(argparse.Action):
    """``--metrics A,B`` or ``--metrics A B``; a value that names no metric is a PATH the option
    ran into (``--metrics subject_drift videos/``), handed back to the paths."""

    def __call__(self, parser, namespace, values, option_string=None):
        from circle_rotate.eval.registry import ALIASES, BY_NAME

        known = set(BY_NAME) | set(ALIASES) | {"all", "default"}
        metrics = [v for v in values if all(part.strip() in known for part in v.split(",") if part.strip())]
        if not metrics:  # `--metrics nonsense`: the registry names the valid choices
            metrics = values[:1]
        namespace.metrics = (namespace.metrics or []) + metrics
        namespace.more_paths = getattr(namespace, "more_paths", []) + [v for v in values if v not in metrics]


def _add_shared(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", "--metric", nargs="+", action=_MetricsAction, default=None, metavar="M[,M...]",
                   help="metric names, 'default' or 'all', comma-separated (default: default)")
    p.set_defaults(more_paths=[])
    p.add_argument("--jobs", type=int, default=0, metavar="N",
                   help="videos evaluated at once (default: all cores, fewer where the memory available would not "
                        "hold that many; the cores left over compute each video's flows)")
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
                         help='first-frame boxes keyed by video file name: {"a.mp4": [x0, y0, x1, y1], ...}; '
                              'a labelled set\'s {"a.mp4": {"boxes": {"0": [...], "24": [...]}}} also bounds '
                              'the mask by the later frames\' boxes')
    p.add_argument("--save-masks", type=Path, default=None, metavar="DIR",
                   help="write each video's subject masks (DIR/<video>/frame_NNNN.png) and contact sheet "
                        "(DIR/<video>.drift.png)")
    add_force(p)


def add_parser(sub) -> None:
    from circle_rotate.eval.registry import ALIASES, METRICS, definitions_path

    names = ", ".join(m.name + ("*" if m.learned else "") for m in METRICS)
    p = new_parser(
        sub, "eval", help="measure subject drift, motion, PSNR/SSIM and orbit metrics of videos (CPU, no weights)",
        description=(
            "Two actions:\n"
            "  circle-rotate eval [run] PATH... [--metrics M,...] [-o results.json] [--csv] [--jobs N] [--keep-going]\n"
            "  circle-rotate eval compare BASELINE LORA [-o DIR]\n\n"
            "PATH: video files (mp4, webm, gif, ...), folders of them, or folders of image frames\n"
            "(a folder named 'compare' or 'run' is written ./compare).\n"
            "BASELINE / LORA: folders of videos paired by name, or results .json files of earlier runs.\n"
            f"Metrics: {names} (* = learned, needs local weights, else reported as skipped);\n"
            f"'default' (everything without weights) and 'all'; reference names {', '.join(ALIASES)}.\n"
            f"Definitions: {definitions_path()}. A video that cannot be read becomes an error row;\n"
            "the exit status is then 1 unless --keep-going."),
        examples=("  circle-rotate eval outputs/ -o results.json --csv\n"
                  "  circle-rotate eval --metric all --input_dir outputs --output results.json\n"
                  "  circle-rotate eval clip.mp4 --subject-box 40,60,140,300 --save-masks masks/\n"
                  "  circle-rotate eval compare baseline_videos/ lora_videos/ -o report/\n"
                  "  circle-rotate eval compare base.json lora.json -o report/ --force\n"))
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    p.default_action = "run"  # `eval PATH...` is `eval run PATH...` (see cli.main)
    r = actions.add_parser("run", help="evaluate videos (the default action)",
                           description="Evaluate videos, folders of videos or folders of frames.")
    r.add_argument("paths", nargs="*", metavar="PATH", help="videos or folders")
    r.add_argument("--input_dir", "--input-dir", action="append", default=[], metavar="DIR",
                   help="a folder of videos (the reference's spelling; same as a PATH)")
    add_out(r, metavar="FILE", help="results .json (a .png is written next to it)")
    r.add_argument("--output", dest="out", type=Path, help=argparse.SUPPRESS)  # the reference's spelling, kept
    r.add_argument("--csv", action="store_true", help="also write the per-video rows as .csv next to the .json")
    _add_shared(r)
    r.set_defaults(func=run)
    c = actions.add_parser("compare", help="paired comparison of a baseline and a LoRA set, with a report",
                           usage="circle-rotate eval compare BASELINE LORA [-o DIR] [options]",
                           description="Evaluate (or read) both sides, pair the videos by name, compare every "
                                       "metric and write compare.json, plots and report.html. BASELINE / LORA: "
                                       "a folder of videos each, or a results .json of an earlier run.")
    # one list, not two positionals: paths given after --metrics come back from it (_MetricsAction)
    c.add_argument("paths", nargs="*", metavar="BASELINE LORA", help="the two sides")
    add_out(c, metavar="DIR", default=Path("compare-report"), help="the report folder (default: compare-report)")
    add_alias(c, "--output", dest="out", new="-o/--out", type=Path)
    c.add_argument("--no-start-check", dest="start_check", action="store_false",
                   help="pair by name alone: do not leave out pairs whose first frames differ (for a LoRA that "
                        "changes the whole first frame; a wrong pairing then goes unnoticed)")
    _add_shared(c)
    c.set_defaults(func=run_compare)


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
        from circle_rotate.eval.mask_outputs import holds_outputs
        from circle_rotate.kernel.write_checks import check_output_dir

        if args.save_masks.exists() and not args.save_masks.is_dir():
            raise UserError("--save-masks must be a folder", path=args.save_masks, fix="name a new or existing folder")
        check_output_dir(args.save_masks, flag="--save-masks")  # before the work, not after it
        given = [Path(p).resolve() for p in _paths(args) + list(getattr(args, "input_dir", []) or [])]
        inside = [p for p in given if p.is_dir() and args.save_masks.resolve() == p]
        if inside:  # its sheets would make the folder read as masks, not videos, from then on
            raise UserError("--save-masks names a folder of the videos being evaluated", path=args.save_masks,
                            fix=f"name a folder of its own, e.g. {Path(args.save_masks) / 'masks'}")
        if holds_outputs(args.save_masks) and not args.force:
            raise UserError("--save-masks folder already holds the contact sheets and masks of an earlier run",
                            path=args.save_masks, fix="pass --force to replace them, or name another folder")
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
    from circle_rotate.eval.learned_needs import WEIGHT_NAMES

    unknown = [n for n in weights if n not in WEIGHT_NAMES]
    if unknown:  # a typo would otherwise leave the metric skipped for want of the weights just given
        raise UserError(f"--weights {unknown[0]}=...: no metric takes weights of that name",
                        fix=f"use {', '.join(n + '=PATH' for n in WEIGHT_NAMES)}")
    missing = [f"{n}={p}" for n, p in weights.items() if not Path(p).exists()]
    if missing:
        raise UserError(f"--weights {missing[0]}: not found", fix="give the weights' local file or folder "
                        "(circle-rotate download eval-weights fetches them)")
    return {"weights": weights}


def _jobs(n: int) -> int:
    """``--jobs`` for the runner: 0 stays 0, which it reads as one per core within the memory
    available (runner.memory_workers); a count the user gave is used as given."""
    if n < 0:  # as prepare: 0 means one per core, a negative count is a typo
        raise ConfigValueError("--jobs", n, "must be 0 (one per core) or more", fix="e.g. --jobs 2")
    return n


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
    # as eval compare does, the means of what the subject mask measures leave its unreliable readings out
    left = [(h, aggregate[k]["left_out_unreliable"]) for k, h in cols if aggregate.get(k, {}).get("left_out_unreliable")]
    if left:
        doubtful = [r["video"] for r in rows if r["status"] == "ok" and r.get("drift_unreliable")]
        print(f"{'':<{width}}  (the mean {' and '.join(h for h, _ in left)} leave out {max(n for _, n in left)} "
              f"unreliable reading{'s' if max(n for _, n in left) > 1 else ''}: {', '.join(doubtful[:3])}"
              f"{' ...' if len(doubtful) > 3 else ''})")
    notes = [f"{r['video']}: {n}" for r in rows for n in r.get("notes", []) + r.get("skipped", [])]
    for n in dict.fromkeys(notes):
        print(f"note: {n}", file=sys.stderr)


def _metrics(args: argparse.Namespace) -> List[str]:
    return args.metrics or ["default"]


def run_compare(args: argparse.Namespace) -> int:
    from circle_rotate.eval.compare import run_compare as compare

    sides = _paths(args)
    if len(sides) != 2:
        raise UserError(f"eval compare takes BASELINE and LORA, got {len(sides)} path(s)",
                        fix="circle-rotate eval compare baseline_videos/ lora_videos/ -o report/")
    if os.path.realpath(sides[0]) == os.path.realpath(sides[1]):
        raise UserError("BASELINE and LORA are the same path: every difference would read 0", path=sides[0],
                        fix="pass the baseline videos and the LoRA's videos")
    results = [s for s in sides if str(s).lower().endswith(".json")]
    given = [flag for flag, value in (("--subject-box", args.subject_box), ("--subject-mask", args.subject_mask),
                                      ("--subject-boxes", args.subject_boxes), ("--save-masks", args.save_masks),
                                      ("--weights", args.weights)) if value]
    if len(results) == 2 and args.metrics:
        given.append("--metrics")  # nothing is measured: both sides are read as they are
    if results and given:  # a results file is read as it is: nothing is measured again on that side
        raise UserError(f"{given[0]} applies to videos being evaluated, and {results[0]} is a results file",
                        path=results[0], fix="pass the videos instead, or leave the option out")
    subject = _subject_options(args)
    # both sides share the file names, and share the first frame (the conditioning image), but not
    # the later ones: one video's later boxes would bound the other's subject where it is not
    later = sorted(name for name, hint in subject.get("subject_boxes", {}).items() if hint.later_boxes)
    if later:
        raise UserError(f"{later[0]!r} has boxes on later frames, and compare would give them to the baseline "
                        "and the LoRA video alike", path=args.subject_boxes,
                        fix="give compare first-frame boxes only, or evaluate each side with eval run --subject-boxes "
                            "(-o base.json, -o lora.json) and compare the two results files")
    outcome = compare(Path(sides[0]), Path(sides[1]), out_dir=args.out, metrics=_metrics(args), jobs=_jobs(args.jobs),
                      options={**_options(args.weights), **subject}, force=args.force,
                      inputs=_files_given(args), start_check=args.start_check)
    if args.json:
        print_json({"pairs": len(outcome.pairs), "left_out": list(outcome.left_out), "comparisons": [c.to_dict() for c in outcome.comparisons],
                    "failed": outcome.failed, "notes": list(outcome.notes), "written": [str(p) for p in outcome.written]})
    else:
        kept = len(outcome.pairs) - len(outcome.left_out)
        print(f"{len(outcome.pairs)} paired videos" + (f", {kept} in the statistics ({len(outcome.left_out)} left out "
                                                       "of every statistic: see the notes)" if outcome.left_out else ""))
        for c in outcome.comparisons:
            print(f"  {c.headline()}  [{c.verdict}]")
        for n in outcome.notes:
            print(f"note: {n}", file=sys.stderr)
        print("wrote " + ", ".join(str(p) for p in outcome.written))
    return 1 if outcome.failed and not args.keep_going else 0


def _paths(args: argparse.Namespace) -> List[str]:
    return list(args.paths) + list(args.more_paths)


def _files_given(args: argparse.Namespace) -> List[Path]:
    """The files besides the videos that the run reads: the subject's mask or boxes, the weights."""
    given = [p for p in (args.subject_mask, args.subject_boxes) if p is not None]
    return given + [Path(item.partition("=")[2].strip()) for item in args.weights]


def run(args: argparse.Namespace) -> int:
    from circle_rotate.eval.mask_outputs import check_inputs_kept, files_read, output_names
    from circle_rotate.eval.results_io import check_outputs, write_results
    from circle_rotate.eval.runner import evaluate, find_videos

    paths = _paths(args) + list(args.input_dir)
    if not paths:
        raise UserError("no videos given", fix="circle-rotate eval VIDEO_OR_FOLDER... (see --help)")
    if args.out is None and args.csv:
        raise UserError("--csv needs -o results.json", fix="add -o results.json")
    options = {**_options(args.weights), **_subject_options(args)}
    videos = find_videos(paths)
    read = files_read([*videos, *_files_given(args)])  # no output may replace one, --force or not
    if args.out is not None:
        check_outputs(args.out, csv_too=args.csv, force=args.force, inputs=read)
    if args.save_masks is not None:
        check_inputs_kept(args.save_masks, output_names(videos), read)
    written: List[Path] = []

    def finish(results) -> None:  # before the masks are moved into place: both, or neither
        written.extend(write_results(results, args.out, csv_too=args.csv))

    results = evaluate(paths, metrics=_metrics(args), jobs=_jobs(args.jobs), options=options,
                       finish=finish if args.out is not None else None)
    if args.json:
        print_json(results.to_dict())
    else:
        _print_table(results.rows, results.aggregate)
        for n in results.notes:
            print(f"note: {n}", file=sys.stderr)
        if args.out is not None:
            print("wrote " + ", ".join(str(p) for p in written))
    if results.failed:
        first = next(r["error"] for r in results.rows if r["status"] != "ok")
        print(f"circle-rotate eval: error: {len(results.failed)} of {len(results.rows)} videos could not be evaluated, "
              f"the first: {first}", file=sys.stderr)
        return 0 if args.keep_going else 1
    return 0
