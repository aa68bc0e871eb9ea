"""``circle-rotate merge EXPERT --lora FILE[:STRENGTH] -o OUT --dtype ...``: streaming merge."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from circle_rotate.cli._common import add_alias, add_out, new_parser, print_json
from circle_rotate.cli._lora_options import add_output_options, lora_arg
from circle_rotate.kernel.errors import UserError
from circle_rotate.tools.option_values import MERGE_DTYPES, parse_alpha_if_missing

if TYPE_CHECKING:  # the merge imports torch, which only run() may pay for
    from circle_rotate.tools.merge.run import MergeReport

ORDER = 34


def add_dtype_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=MERGE_DTYPES, default="same",
                        help="output dtype: same (as the base), fp16, bf16, fp32, fp8_e4m3fn, or fp8_scaled "
                             "(ComfyUI's per-tensor scaled fp8)")


def add_skip_absent_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-absent", action="store_true",
                        help="leave out LoRA modules the expert has no weight for (a Wan2.1 I2V LoRA's image layers on "
                             "Wan2.2), as ComfyUI's loader does; the report lists how many")


def add_parser(sub) -> None:
    p = new_parser(sub, "merge", help="merge LoRAs into a Wan2.2 expert, streaming (any dtype, fp8_scaled too)",
                   description="W' = W + strength * alpha/rank * up @ down (LoHa and LoKr modules: their own delta; "
                               "whole-tensor .diff/.diff_b/.diff_m differences: + strength * diff), computed in fp32 "
                               "one row chunk at a time from "
                               "a memory-mapped base; untouched tensors are copied byte for byte. fp8_scaled bases are "
                               "dequantized, merged and requantized. The output appears only when complete.",
                   examples="  circle-rotate merge wan2.2_i2v_high_noise_14B_fp16.safetensors "
                            "--lora circle_rotate_h.safetensors -o high_merged.safetensors --dtype fp8_scaled\n"
                            "  circle-rotate merge low.safetensors --lora a.safetensors:0.8 --lora b.safetensors:0.5 "
                            "-o low_ab.safetensors --dry-run\n"
                            "  circle-rotate merge Wan2.2-I2V-A14B/low_noise_model -o low_fp8_scaled.safetensors "
                            "--dtype fp8_scaled   # no LoRA: convert only\n")
    # SUPPRESS and no type: an absent positional must not overwrite the old --base spelling
    # (argparse would pass a string default through type=Path)
    p.add_argument("base", nargs="?", default=argparse.SUPPRESS, metavar="EXPERT",
                   help="the expert checkpoint: a .safetensors file, or a sharded one (any shard, its index or its "
                        "folder, as the official release stores it), in Wan's or Diffusers' key names (the Diffusers "
                        "release's transformer/ or transformer_2/); the output is one file in Wan's names")
    add_alias(p, "--base", dest="base", new="the positional EXPERT", type=Path)
    p.add_argument("--lora", type=lora_arg, action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="a LoRA and its strength (default 1.0); repeat for several. None: the expert is only "
                        "converted (a sharded one joined into one file, --dtype applied)")
    add_out(p, required=True, metavar="OUT", help="merged checkpoint to write")
    add_dtype_option(p)
    add_skip_absent_option(p)
    p.add_argument("--dry-run", action="store_true",
                   help="check everything and say what would be written (size, dtypes, layers touched); write nothing")
    p.add_argument("--ignore-expert-evidence", action="store_true",
                   help="merge a LoRA whose metadata or name says it is for the other expert than EXPERT's")
    add_output_options(p, run)


def describe(report: MergeReport) -> str:
    loras = ", ".join(f"{Path(str(x['file'])).name}@{x['strength']:g} ({x['modules']} modules"
                      + (f", {x['diffs']} whole-tensor differences" if x["diffs"] else "")
                      + (f"; {len(x['skipped'])} absent from the expert left out" if x["skipped"] else "") + ")"
                      for x in report.loras)
    return (f"{report.out}: {report.dtype}, expert {report.expert or 'unknown'}; {loras or 'no LoRA'}; "
            f"{report.merged} merged, {report.converted} converted, {report.copied} copied byte for byte, "
            f"{len(report.dropped)} fp8 side tensors dropped; {report.bytes / 2**30:.2f} GiB in {report.seconds:.1f} s")


def run(args: argparse.Namespace) -> int:
    from circle_rotate.tools.merge.run import prepare_merge, run_merge

    if getattr(args, "base", None) is None:
        raise UserError("no expert given", fix="circle-rotate merge EXPERT.safetensors --lora LORA.safetensors -o OUT")
    prepared = prepare_merge(Path(args.base), args.lora, args.out, dtype=args.dtype,
                             alpha_if_missing=parse_alpha_if_missing(args.alpha_if_missing), force=args.force,
                             skip_absent=args.skip_absent, ignore_expert_evidence=args.ignore_expert_evidence)
    if args.dry_run:
        from circle_rotate.tools.merge.summary import summarize

        summary = summarize(prepared.plan, str(prepared.out))
        if args.json:
            print_json(summary.to_dict())
        else:
            print("\n".join(summary.lines()))
        return 0
    report = run_merge(prepared)
    if args.json:
        print_json(report.to_dict())
    else:
        print(describe(report))
    return 0
