"""``circle-rotate download models|lora|dataset``: the files the recipes expect, from the Hugging Face hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from circle_rotate.cli._common import new_parser
from circle_rotate.downloads import GB, GROUPS, check_disk, fetch, plan

ORDER = 5


def add_parser(sub) -> None:
    p = new_parser(sub, "download", help="fetch the Wan2.2 experts, VAE, T5, the released LoRAs, the eval weights or the dataset",
                   description="Fetch exactly the files the recipes expect through huggingface_hub (resumable, cached), "
                               "showing sizes first and checking free disk, then print the variables to point the "
                               "recipes at them. HF_HUB_OFFLINE=1 serves them from the local cache.",
                   examples="  circle-rotate download models --to models\n"
                            "  circle-rotate download lora --to checkpoints\n"
                            "  circle-rotate download eval-weights      # YOLOv8n + SAM ViT-B for eval's subject_drift_sam\n"
                            "  circle-rotate download dataset --to data --dry-run\n")
    p.add_argument("group", choices=GROUPS, help="models: both fp16 experts, VAE, T5; lora: circle_rotate_h/l; "
                                             "eval-weights: YOLOv8n and SAM ViT-B; dataset")
    p.add_argument("--to", type=Path, help="also link the files into this folder under their own names")
    p.add_argument("--cache-dir", type=Path, help="huggingface_hub cache (default: HF_HUB_CACHE / HF_HOME)")
    p.add_argument("--dry-run", action="store_true", help="show what would be fetched and stop")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    planned = plan(args.group, cache_dir=args.cache_dir)
    for item in planned:
        size = f"{item.size / GB:7.2f} GB" if item.size_known else (f"~{item.size / GB:6.2f} GB" if item.size else "   size unknown")
        state = "cached" if item.cached else "to fetch"
        print(f"{size}  {state:<8}  {item.file.repo_id}/{item.file.filename}  ({item.file.note})")
    need = check_disk(planned, cache_dir=args.cache_dir)
    print(f"to download: {need / GB:.2f} GB")
    if args.dry_run:
        return 0
    paths = fetch(args.group, to=args.to, cache_dir=args.cache_dir)
    print("\n# point the recipes at them:")
    for var, path in paths.items():
        print(f"export {var}={path}")
    return 0
