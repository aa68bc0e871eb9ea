"""``circle-rotate resize IN -o OUT --rank R``: SVD a LoRA down to a smaller rank."""

from __future__ import annotations

import argparse
from pathlib import Path

from circle_rotate.cli._common import add_alias, add_legacy_out, add_out, new_parser, out_path, print_json
from circle_rotate.cli._lora_options import add_output_options
from circle_rotate.kernel.errors import UserError
from circle_rotate.tools.lora.keys import FORMATS
from circle_rotate.tools.option_values import parse_alpha_if_missing

ORDER = 32


def add_parser(sub) -> None:
    p = new_parser(sub, "resize", help="reduce a LoRA's rank by SVD and report the error",
                   description="Keep each module's largest singular values (the best approximation of its delta at "
                               "that rank); the scale alpha/rank is kept. Reports the relative Frobenius error per module.",
                   examples="  circle-rotate resize circle_rotate_h.safetensors -o circle_rotate_h_r16.safetensors --rank 16\n")
    p.add_argument("src", type=Path, help="input LoRA")
    add_out(p, metavar="OUT", help="output LoRA")
    add_legacy_out(p)  # the old spelling: resize SRC OUT
    p.add_argument("--rank", type=int, required=True, help="new rank")
    p.add_argument("--format", choices=FORMATS, default="", help="output key layout (default: the input's)")
    add_alias(p, "--to", dest="format", new="--format", choices=FORMATS)
    add_output_options(p, run, json_help="machine-readable output (with the error of every module)")


def run(args: argparse.Namespace) -> int:
    from circle_rotate.tools.lora.resize import resize_lora

    out = out_path(args, "circle-rotate resize")
    if out is None:
        raise UserError("no output given", fix=f"circle-rotate resize {args.src} -o OUT.safetensors --rank {args.rank}")
    report = resize_lora(args.src, out, rank=args.rank, to=args.format,
                         alpha_if_missing=parse_alpha_if_missing(args.alpha_if_missing), force=args.force)
    if args.json:
        print_json(report.to_dict())
        return 0
    print(f"{report.out}: {report.resized} of {report.modules} modules resized to rank {report.rank} ({report.format})")
    if set(report.ranks) != {report.rank}:  # kept below it, or at a module's min(out, in)
        print("  ranks written: " + ", ".join(f"{k} x{v}" for k, v in report.ranks.items()))
    if report.rel_error:
        e = report.rel_error
        print(f"  relative error ||delta - delta_r|| / ||delta||: min {e['min']:.4f}, mean {e['mean']:.4f}, max {e['max']:.4f}")
        print("  worst: " + ", ".join(f"{m} {v:.4f}" for m, v in report.worst))
    return 0
