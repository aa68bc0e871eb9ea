"""``circle-rotate merge-pair --high H_EXPERT H_LORA --low L_EXPERT L_LORA -o DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

from circle_rotate.cli._common import add_out, new_parser, print_json
from circle_rotate.cli._lora_options import add_output_options, strength_arg
from circle_rotate.cli.merge import add_dtype_option, add_skip_absent_option, describe
from circle_rotate.cli.workflow import add_workflow_options
from circle_rotate.tools.option_values import parse_alpha_if_missing

ORDER = 35


def add_parser(sub) -> None:
    p = new_parser(sub, "merge-pair", help="merge the released LoRA pair into both Wan2.2 experts in one go",
                   description="Merges the high-noise LoRA into the high-noise expert and the low into the low, after "
                               "checking each file's expert (metadata, then file name); a swapped or unidentifiable "
                               "file is refused before anything is written.",
                   examples="  circle-rotate merge-pair --high wan2.2_i2v_high_noise_14B_fp16.safetensors circle_rotate_h.safetensors \\\n"
                            "      --low wan2.2_i2v_low_noise_14B_fp16.safetensors circle_rotate_l.safetensors "
                            "-o merged/ --dtype fp8_scaled --workflow --lightx2v\n")
    p.add_argument("--high", nargs=2, type=Path, required=True, metavar=("H_EXPERT", "H_LORA"),
                   help="high-noise expert (a file, or a sharded one: any shard, its index or folder) and its LoRA")
    p.add_argument("--low", nargs=2, type=Path, required=True, metavar=("L_EXPERT", "L_LORA"),
                   help="low-noise expert (a file, or a sharded one: any shard, its index or folder) and its LoRA")
    add_out(p, required=True, metavar="DIR", help="folder for the two merged experts")
    p.add_argument("--strength-high", type=strength_arg("--strength-high"), default=1.0, help="strength of the high-noise LoRA (default 1)")
    p.add_argument("--strength-low", type=strength_arg("--strength-low"), default=1.0, help="strength of the low-noise LoRA (default 1)")
    add_dtype_option(p)
    add_skip_absent_option(p)
    p.add_argument("--assume-experts", action="store_true",
                   help="trust the --high/--low order for files whose expert nothing tells")
    p.add_argument("--ignore-expert-evidence", action="store_true",
                   help="merge even if a file's metadata or name says it is the other expert")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything (experts, LoRAs, outputs, free disk for both) and say what would be written "
                        "(sizes, dtypes, layers touched, free space); write nothing")
    p.add_argument("--workflow", nargs="?", const="circle_rotate_workflow.json", default=None, metavar="NAME",
                   help="also write a ComfyUI workflow for the two merged files into --out (default name "
                        "circle_rotate_workflow.json, plus its _api.json); see `circle-rotate workflow --help`")
    add_workflow_options(p)
    add_output_options(p, run)


def run(args: argparse.Namespace) -> int:
    from circle_rotate.tools.merge.pair import prepare_pair, run_pair

    # every check, both plans and the disk for both, before anything is written: a dry run stops here
    prepared = prepare_pair(tuple(args.high), tuple(args.low), args.out, dtype=args.dtype,
                            strengths=(args.strength_high, args.strength_low), assume_experts=args.assume_experts,
                            ignore_expert_evidence=args.ignore_expert_evidence,
                            alpha_if_missing=parse_alpha_if_missing(args.alpha_if_missing), force=args.force,
                            skip_absent=args.skip_absent)
    workflow = None
    if args.workflow is not None:  # checked before the long merge, written after it
        from circle_rotate.cli.workflow import spec_from_args
        from circle_rotate.kernel.atomic import check_output_path
        from circle_rotate.tools.comfy.workflow import api_path

        # the workflow loads what the merge writes, not what it reads: one whole file (a shard or the
        # official folder in, one file out), named for its expert and variant as prepare_pair planned it
        spec_from_args(args, Path(prepared.high.out).name, Path(prepared.low.out).name).check()
        workflow = Path(args.out) / Path(args.workflow).name
        check_output_path(workflow, force=args.force)
        check_output_path(api_path(workflow), force=args.force)
    if args.dry_run:
        return _dry_run(args, prepared, workflow)
    report = run_pair(prepared)
    if workflow is not None:
        from circle_rotate.cli.workflow import describe as describe_workflow, spec_from_args
        from circle_rotate.tools.comfy.workflow import write_workflows

        spec = spec_from_args(args, Path(report.high.out).name, Path(report.low.out).name)
        write_workflows(spec, workflow, force=args.force)
    if args.json:
        print_json({**report.to_dict(), "workflow": str(workflow) if workflow else None})
        return 0
    for role, how in report.evidence.items():
        print(f"{role}: {how}")
    print(describe(report.high))
    print(describe(report.low))
    if workflow is not None:
        print(describe_workflow(spec, workflow))
    return 0


def _dry_run(args: argparse.Namespace, prepared, workflow) -> int:
    """As ``merge --dry-run``: what each merged expert would be, plus both together against the free space."""
    summary = prepared.summary()
    workflows = None
    if workflow is not None:
        from circle_rotate.tools.comfy.workflow import api_path

        workflows = [str(workflow), str(api_path(workflow))]
    if args.json:
        print_json({**summary.to_dict(), "workflow": workflows[0] if workflows else None, "dry_run": True})
        return 0
    for role, how in summary.evidence.items():
        print(f"{role}: {how}")
    print("\n".join(summary.lines()))
    if workflows:
        print(f"would write the ComfyUI workflow {workflows[0]} and {Path(workflows[1]).name}")
    return 0
