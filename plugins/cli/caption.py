"""``circle-rotate caption PREPARED_DIR``: Circle-Rotate captions for prepared clips."""

from __future__ import annotations

import argparse
from pathlib import Path

from circle_rotate.cli._common import add_alias, new_parser, print_json
from circle_rotate.prepare.caption_templates import LANGS, STYLES

ORDER = 21


def add_parser(sub) -> None:
    p = new_parser(
        sub, "caption", help="write orbit-aware captions for prepared clips",
        description="Caption every accepted clip of a prepared folder in the Circle-Rotate structure (subject, "
                    "context, viewpoint, shot scale, trajectory). The trajectory comes from the measured orbit "
                    "direction (right = 'Circle Left->Right'); the subject from --map (CSV with match,subject,... "
                    "columns, per folder or per file), else --subject, else the source's folder name. Writes "
                    "<clip>.txt next to each clip (musubi's caption_extension) or one --jsonl file "
                    "(video_jsonl_file); a caption you edited, and one prepare carried from a source video's own "
                    "caption file (clip.mp4 + clip.txt), is kept unless --force.",
        examples="  circle-rotate caption data/prepared\n"
                 "  circle-rotate caption data/prepared --map subjects.csv --style sentence --lang zh\n"
                 "  circle-rotate caption data/prepared --subject 'a silver sedan' --context 'Urban Night View' "
                 "--jsonl data/prepared/dataset.jsonl\n"
                 "  circle-rotate caption data/prepared --jsonl data/prepared/dataset.jsonl --relative-to .\n")
    p.add_argument("prepared_dir", type=Path, metavar="PREPARED_DIR", help="folder written by circle-rotate prepare "
                                                                         "(the captions are written into it)")
    p.add_argument("--map", type=Path, help="subject map CSV (columns: match, subject, viewpoint, shot_scale, "
                                            "context, and *_zh)")
    p.add_argument("--subject", help="subject of clips the map does not name (default: their folder's name)")
    p.add_argument("--viewpoint", help="e.g. 'Side View (Right)'")
    p.add_argument("--shot-scale", help="e.g. 'Medium Shot'")
    p.add_argument("--context", action="append", default=[], help="context tag, repeatable (e.g. 'Static Display')")
    p.add_argument("--lang", choices=LANGS, default="en")
    p.add_argument("--style", choices=STYLES, default="tags", help="tags (default) or one sentence")
    p.add_argument("--ext", default=".txt", help="caption file extension (musubi's caption_extension)")
    p.add_argument("--jsonl", type=Path, help="write this video_jsonl_file instead of caption files")
    p.add_argument("--relative-to", type=Path, metavar="DIR",
                   help="with --jsonl: write each video_path relative to DIR, the folder training runs from (musubi "
                        "opens them from its working folder, not the JSONL's); default absolute. Pair it with "
                        "config --relative-to DIR")
    p.add_argument("--force", action="store_true", help="replace caption files (and the jsonl) that exist")
    add_alias(p, "--overwrite", dest="force", new="--force", switch=True)
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from circle_rotate.prepare.caption import CaptionOptions, caption_dataset

    options = CaptionOptions(lang=args.lang, style=args.style, subject=args.subject, viewpoint=args.viewpoint,
                             shot_scale=args.shot_scale, context=tuple(args.context), extension=args.ext,
                             jsonl=args.jsonl, overwrite=args.force, relative_to=args.relative_to)
    r = caption_dataset(args.prepared_dir, options=options, subject_map=args.map)
    if args.json:
        print_json({"written": r.written, "unchanged": r.unchanged, "kept": [str(p) for p in r.kept],
                    "jsonl": str(r.jsonl) if r.jsonl else None,
                    "unmatched_map_rows": [{"line": n, "match": m} for n, m in r.unmatched],
                    "filled_empty": list(r.filled), "kept_with_bom": list(r.bom), "carried": list(r.carried)})
        return 0
    where = f"in {r.jsonl}" if r.jsonl else "as caption files"
    print(f"{r.written} caption(s) written {where}, {r.unchanged} unchanged, {len(r.kept)} kept (yours differ; "
          f"--force replaces them)")
    if r.carried:
        print(f"kept {len(r.carried)} caption(s) carried from the source videos (--force replaces them)")
    for path in r.kept:
        print(f"kept {path}" + (" (it starts with a UTF-8 byte-order mark, which musubi passes to the text encoder: "
                                "save it without BOM)" if path in r.bom else ""))
    if r.filled:
        print(f"{len(r.filled)} caption file(s) were empty (no caption at all) and now hold the generated one")
    if r.unmatched:
        rows = ", ".join(f"line {n} {m!r}" for n, m in r.unmatched[:5]) + (" ..." if len(r.unmatched) > 5 else "")
        print(f"warning: {len(r.unmatched)} row(s) of {args.map} caption no clip (they match none, or a more specific "
              f"row wins): {rows} (match is a clip's source path, file name, stem, folder or glob, case-sensitive)")
    return 0
