"""``circle-rotate train low|high|both``: preflight, then the recipe's musubi-tuner training."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from circle_rotate.cli._common import add_alias, add_force, add_out, new_parser, print_json
from circle_rotate.cli._recipe_args import add_recipe_options, recipe_env

ORDER = 41


def add_parser(sub) -> None:
    p = new_parser(sub, "train", help="train the LoRA of one or both experts with a recipe (preflight first)",
                   description="Reads the recipe (recipes/<recipe>_<expert>.sh), checks everything from file headers "
                               "and configs (musubi-tuner, experts, VAE, dataset config, caches, sample prompts, disk, "
                               "VRAM), prints the exact commands and runs them, streaming their output. both: one "
                               "after the other on one GPU, or one expert per GPU with --gpus 0,1. Each run writes "
                               "run.json beside its LoRAs.",
                   examples="  circle-rotate train both --recipe reproduce --dry-run\n"
                            "  circle-rotate train low --dit-low models/wan2.2_i2v_low_noise_14B_fp16.safetensors "
                            "--gradient-checkpointing\n"
                            "  circle-rotate train both --recipe recommended --gpus 0,1 --save-state\n"
                            "  circle-rotate train high --resume\n")
    p.add_argument("expert", choices=("low", "high", "both"), help="which expert's LoRA to train")
    p.add_argument("--recipe", choices=("reproduce", "recommended"), default="reproduce",
                   help="reproduce: the published command; recommended: musubi's documented Wan2.2 timestep split")
    add_recipe_options(p)
    p.add_argument("--dit-low", type=Path, help="low-noise expert, fp16 (DIT_LOW)")
    p.add_argument("--dit-high", type=Path, help="high-noise expert, fp16 (DIT_HIGH)")
    add_out(p, metavar="DIR", help="outputs go to DIR/low and DIR/high (OUTPUT_DIR_LOW/HIGH)")
    add_alias(p, "--output-dir", dest="out", new="-o/--out", type=Path)
    p.add_argument("--gradient-checkpointing", action="store_true", help="GRADIENT_CHECKPOINTING=1 (memory only)")
    p.add_argument("--cpu-offload", action="store_true", help="GRADIENT_CHECKPOINTING_CPU_OFFLOAD=1 (memory only)")
    p.add_argument("--blocks-to-swap", type=int, help="BLOCKS_TO_SWAP=N (memory only)")
    p.add_argument("--sample-prompts", type=Path, help="SAMPLE_PROMPTS: I2V prompt lines with --i first.png")
    p.add_argument("--save-state", action="store_true", help="also save optimizer state each epoch (for --resume)")
    p.add_argument("--resume", action="store_true", help="continue from the last saved state in the output folder")
    p.add_argument("--dry-run", action="store_true", help="preflight and print the exact commands, run nothing")
    p.add_argument("--json", action="store_true", help="the run records written (and, with --dry-run, the commands)")
    add_force(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from circle_rotate.train import TrainRequest, train

    out = args.out
    env = recipe_env(args, {
        "DIT_LOW": args.dit_low, "DIT_HIGH": args.dit_high,
        "OUTPUT_DIR_LOW": out / "low" if out else None, "OUTPUT_DIR_HIGH": out / "high" if out else None,
        "GRADIENT_CHECKPOINTING": 1 if args.gradient_checkpointing else None,
        "GRADIENT_CHECKPOINTING_CPU_OFFLOAD": 1 if args.cpu_offload else None,
        "BLOCKS_TO_SWAP": args.blocks_to_swap, "SAMPLE_PROMPTS": args.sample_prompts,
    })
    experts = ("low", "high") if args.expert == "both" else (args.expert,)
    request = TrainRequest(experts, recipe=args.recipe, env=env, gpus=args.gpus, save_state=args.save_state,
                           resume=args.resume, force=args.force)
    # with --json the preflight and the commands go to stderr, so stdout is only the JSON
    echo = (lambda line: print(line, file=sys.stderr)) if args.json else print
    result = train(request, dry_run=args.dry_run, echo=echo)
    if args.json:
        print_json({"commands": {run.expert: run.command.shell() for run in result.plan.runs},
                    "problems": [p.one_line() for p in result.report.problems], "notes": list(result.report.notes),
                    "records": [str(p) for p in result.records], "dry_run": args.dry_run})
        return 0
    for path in result.records:
        print(f"wrote {path}")
    return 0
