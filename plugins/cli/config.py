"""``circle-rotate config PREPARED_DIR``: a commented musubi-tuner dataset TOML."""

from __future__ import annotations

import argparse
from pathlib import Path

from circle_rotate.cli._common import add_alias, add_force, add_out, new_parser, print_json
from circle_rotate.kernel.arg_types import frame_size

ORDER = 22


def add_parser(sub) -> None:
    p = new_parser(
        sub, "config", help="write the musubi-tuner dataset TOML for prepared clips",
        description="Write a musubi-tuner dataset config for a folder written by prepare: [general] (bucket "
                    "resolution, batch size, caption extension) and a [[datasets]] table (video_directory or "
                    "video_jsonl_file, cache_directory, target_frames, frame_extraction, source_fps as a float), "
                    "every choice explained in a comment, paths with forward slashes. The result is checked with "
                    "check-config before it is reported.",
        examples="  circle-rotate config data/prepared\n"
                 "  circle-rotate config data/prepared -o datasets/mine.toml --cache /fast/cache --repeats 2\n"
                 "  circle-rotate config data/prepared --jsonl data/prepared/dataset.jsonl --relative-to .\n")
    p.add_argument("prepared_dir", type=Path, help="folder written by circle-rotate prepare")
    add_out(p, metavar="TOML", help="TOML to write (default PREPARED_DIR/dataset.toml)")
    add_alias(p, "--output", dest="out", new="-o/--out", type=Path)
    p.add_argument("--jsonl", type=Path, help="use this video_jsonl_file (from caption --jsonl) instead of videos/; with "
                                              "--relative-to DIR, write it with caption --relative-to DIR as well")
    p.add_argument("--cache", type=Path, help="cache_directory (default PREPARED_DIR/cache)")
    p.add_argument("--resolution", type=frame_size, metavar="WxH", help="bucket area (default: prepare's)")
    p.add_argument("--repeats", type=int, default=1, help="num_repeats (default 1)")
    p.add_argument("--batch-size", type=int, default=1, help="batch_size (default 1)")
    p.add_argument("--ext", default=".txt", help="caption_extension (default .txt)")
    p.add_argument("--relative-to", type=Path, help="write paths relative to this folder (where training runs)")
    add_force(p)
    p.add_argument("--json", action="store_true", help="print the path written and check-config's findings as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from circle_rotate.prepare.prepared_folder import locked_prepared

    with locked_prepared(args.prepared_dir, command="config"):  # a prepare or caption still writing is no input
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from circle_rotate.dataset.check import check_config
    from circle_rotate.dataset.toml_writer import config_from_prepared, write_dataset_config
    from circle_rotate.prepare.prepared_folder import prepared_inputs

    cfg = config_from_prepared(args.prepared_dir, jsonl=args.jsonl, cache_directory=args.cache,
                               resolution=args.resolution, num_repeats=args.repeats, batch_size=args.batch_size,
                               caption_extension=args.ext, relative_to=args.relative_to)
    inputs = prepared_inputs(args.prepared_dir) + ([args.jsonl] if args.jsonl else [])
    target = args.out or args.prepared_dir / "dataset.toml"
    checked = []

    def accept(tmp):  # checked before it is published: a config check-config rejects is not written
        report = check_config(tmp, base_dir=args.relative_to)
        named = lambda text: text.replace(str(tmp), str(target)) if text else text  # noqa: E731
        checked.append(replace(report, path=str(target), musubi_verdict=named(report.musubi_verdict),
                               problems=tuple(replace(p, file=named(p.file)) for p in report.problems)))
        return report.ok

    out = write_dataset_config(target, cfg, force=args.force, inputs=inputs, accept=accept)
    report = checked[-1]
    if args.json:
        print_json({"wrote": str(out) if out else None, **report.to_dict()})
        return 0 if report.ok else 2
    print(f"wrote {out}" if out else f"not written: {target} (check-config found the error(s) below)")
    for problem in report.problems:
        print(problem.one_line())
    if report.musubi_verdict:
        print(report.musubi_verdict)
    return 0 if report.ok else 2
