"""``circle-rotate check-config FILE.toml``: every problem of a dataset config, with line and fix."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from circle_rotate.cli._common import new_parser, print_json

ORDER = 23


def add_parser(sub) -> None:
    p = new_parser(
        sub, "check-config", help="explain every problem of a musubi-tuner dataset TOML",
        description="Check a musubi-tuner dataset config: unknown keys, wrong types (source_fps = 30 instead of "
                    "30.0), target_frames not 4n+1, missing folders, clips musubi would silently drop as too short, "
                    "missing captions, file names whose caches would collide, backslash paths. Each problem is "
                    "printed on one line with its line number and the fix; then how many items musubi will find. "
                    "When musubi-tuner is installed, its own validator runs too. Exit status 2 when there are errors "
                    "(a fixable error, as everywhere in circle-rotate).",
        examples="  circle-rotate check-config data/prepared/dataset.toml\n"
                 "  circle-rotate check-config datasets/circle/circle.toml --base ~/musubi-tuner\n"
                 "  circle-rotate check-config mine.toml --json\n")
    p.add_argument("config", type=Path, help="the dataset TOML")
    p.add_argument("--base", type=Path, help="folder relative paths are resolved against (where training runs; "
                                             "default: here)")
    p.add_argument("--no-musubi", action="store_true", help="skip musubi-tuner's own validator")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from circle_rotate.dataset.check import check_config

    report = check_config(args.config, use_musubi=not args.no_musubi, base_dir=args.base)
    if args.json:
        print_json(report.to_dict())
        return _verdict(report)
    for problem in report.problems:
        print(problem.one_line())
    for d in report.datasets:
        print(f"dataset {d.index + 1} ({d.kind}, {d.source}): {d.videos} video(s), {d.usable} usable, "
              f"{d.too_short} too short, {d.missing_captions} without caption -> {d.items} training item(s); "
              f"cache {d.cache_directory}")
    print(report.musubi_verdict or _why_musubi_did_not_run(args, report))
    errors = sum(p.severity == "error" for p in report.problems)
    warnings = len(report.problems) - errors
    print(f"{'OK' if report.ok else 'NOT OK'}: {errors} error(s), {warnings} warning(s)")
    return _verdict(report)


def _why_musubi_did_not_run(args: argparse.Namespace, report) -> str:
    from circle_rotate.kernel.musubi_env import musubi_available

    if args.no_musubi:
        return "musubi-tuner's own validator not run (--no-musubi)"
    if not musubi_available():
        return "musubi-tuner not installed: its own validator was not run"
    return "musubi-tuner's own validator not run: it cannot read the file until the errors above are fixed"


def _verdict(report) -> int:
    """0 when OK; else the first error as the one line on stderr, and exit status 2 (the report lists them all)."""
    errors = [p for p in report.problems if p.severity == "error"]
    if report.ok or not errors:
        return 0 if report.ok else 2
    more = f"{len(errors)} errors, the first: " if len(errors) > 1 else ""
    print(f"circle-rotate check-config: error: {more}{errors[0].one_line()}", file=sys.stderr)
    return 2
