"""``circle-rotate download models|lora|dataset [-o DIR]``: the files the recipes expect, from the Hugging Face hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from circle_rotate.cli._common import add_alias, add_force, add_out, new_parser, print_json
from circle_rotate.musubi.downloads import GB, GROUPS, VARIANTS, check_disk, check_link_targets, fetch, plan

ORDER = 5


def add_parser(sub) -> None:
    p = new_parser(sub, "download", help="fetch the Wan2.2 experts, VAE, T5, the released LoRAs, the eval weights or the dataset",
                   description="Fetch exactly the files the recipes expect through huggingface_hub (resumable, cached), "
                               "showing sizes first and checking free disk, then print the variables to point the "
                               "recipes at them. HF_HUB_OFFLINE=1 serves them from the local cache.",
                   examples="  circle-rotate download models -o models\n"
                            "  circle-rotate download models --variant fun-inp -o ComfyUI/models/diffusion_models\n"
                            "  circle-rotate download lora -o checkpoints\n"
                            "  circle-rotate download eval-weights      # YOLOv8n + SAM ViT-B for eval's subject_drift_sam\n"
                            "  circle-rotate download dataset -o data --dry-run\n")
    p.add_argument("group", choices=GROUPS, help="models: both fp16 experts, VAE, T5; lora: circle_rotate_h/l; "
                                             "eval-weights: YOLOv8n and SAM ViT-B; dataset")
    p.add_argument("--variant", choices=VARIANTS, default="i2v",
                   help="models: i2v (the fp16 I2V experts the recipes train on, default) or fun-inp (the fp8_scaled "
                        "Fun-InP experts and ComfyUI's umT5, as the study's ComfyUI workflow uses)")
    add_out(p, metavar="DIR", help="also link the files into this folder under their own names")
    add_alias(p, "--to", dest="out", new="-o/--out", type=Path)
    add_force(p)
    p.add_argument("--cache-dir", type=Path, help="huggingface_hub cache (default: HF_HUB_CACHE / HF_HOME)")
    p.add_argument("--dry-run", action="store_true", help="show what would be fetched and stop")
    p.add_argument("--json", action="store_true", help="the plan (and the fetched paths) as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.variant != "i2v" and args.group != "models":
        from circle_rotate.kernel.errors import UserError

        raise UserError(f"--variant applies to 'download models', not '{args.group}'", fix="drop --variant")
    if args.out is not None:  # before any work: never replace the user's own same-named file
        check_link_targets(args.group, to=args.out, cache_dir=args.cache_dir, variant=args.variant, force=args.force)
    planned = plan(args.group, cache_dir=args.cache_dir, variant=args.variant)
    files = [{"file": f"{item.file.repo_id}/{item.file.filename}", "bytes": item.size, "cached": item.cached,
              "note": item.file.note} for item in planned]
    if not args.json:
        for item in planned:
            size = (f"{item.size / GB:7.2f} GB" if item.size_known else
                    (f"~{item.size / GB:6.2f} GB" if item.size else "   size unknown"))
            state = "cached" if item.cached else "to fetch"
            print(f"{size}  {state:<8}  {item.file.repo_id}/{item.file.filename}  ({item.file.note})")
    need = check_disk(planned, cache_dir=args.cache_dir)
    report = {"files": files, "to_download_bytes": need}
    if not args.json:
        unknown = sum(1 for f in planned if not f.size_known and not f.size and not f.cached)
        print(f"to download: {need / GB:.2f} GB" + (f" and {unknown} file(s) of unknown size" if unknown else ""))
    if args.dry_run:
        if args.json:
            print_json({**report, "dry_run": True})
        return 0
    paths = fetch(args.group, to=args.out, cache_dir=args.cache_dir, variant=args.variant, force=args.force)
    if args.json:
        print_json({**report, "variables": {k: str(v) for k, v in paths.items()}})
        return 0
    print("\n# point the recipes at them:")
    for var, path in paths.items():
        print(f"export {var}={path}")
    return 0
