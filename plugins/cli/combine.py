"""``circle-rotate combine --lora A[:S] --lora B[:S] -o OUT``: several LoRAs into one, exactly."""

from __future__ import annotations

import argparse

from circle_rotate.cli._common import add_alias, add_out, new_parser, print_json
from circle_rotate.cli._lora_options import add_output_options, lora_arg
from circle_rotate.tools.lora.keys import FORMATS
from circle_rotate.tools.option_values import COMBINE_DTYPE_NAMES, parse_alpha_if_missing

ORDER = 33


def add_parser(sub) -> None:
    p = new_parser(sub, "combine", help="combine LoRAs with strengths into one (exact, by rank concatenation)",
                   description="The combined LoRA's delta is the strength-weighted sum of the inputs' deltas; its rank "
                               "is the sum of their ranks. fp32 output (the default) keeps it exact up to one fp32 "
                               "rounding of the factors; the report gives the measured error.",
                   examples="  circle-rotate combine --lora orbit.safetensors:1.0 --lora style.safetensors:0.5 "
                            "-o both.safetensors\n")
    p.add_argument("--lora", type=lora_arg, action="append", required=True, metavar="FILE[:STRENGTH]",
                   help="a LoRA and its strength (default 1.0); repeat")
    add_out(p, required=True, metavar="OUT", help="output LoRA")
    p.add_argument("--format", choices=FORMATS, default="musubi", help="output key layout (default musubi)")
    add_alias(p, "--to", dest="format", new="--format", choices=FORMATS)
    p.add_argument("--dtype", choices=list(COMBINE_DTYPE_NAMES), default="fp32",
                   help="stored dtype (fp32: exact up to one fp32 rounding; the report gives the error)")
    p.add_argument("--ignore-expert-evidence", action="store_true",
                   help="combine LoRAs whose metadata or names say they are for different experts")
    add_output_options(p, run)


def run(args: argparse.Namespace) -> int:
    from circle_rotate.tools.lora.combine import combine_loras

    report = combine_loras(args.lora, args.out, to=args.format, dtype=args.dtype,
                           alpha_if_missing=parse_alpha_if_missing(args.alpha_if_missing), force=args.force,
                           ignore_expert_evidence=args.ignore_expert_evidence)
    if args.json:
        print_json(report.to_dict())
    else:
        ranks = ", ".join(f"{k} x{v}" for k, v in report.ranks.items())
        diffs = f", {report.diffs} whole-tensor differences" if report.diffs else ""
        print(f"{report.out}: {report.modules} modules (rank {ranks}){diffs}, {report.format} layout, {report.dtype}, "
              + ("exact" if report.exact else
                 f"rounded to {report.dtype} (max relative error {report.max_rel_error:.1e})"))
    return 0
