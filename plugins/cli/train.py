"""``circle-rotate train low|high|both``: preflight, then the recipe's musubi-tuner training (one GPU, or many)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from circle_rotate.cli._common import add_alias, add_force, add_out, new_parser, print_json
from circle_rotate.cli._recipe_args import add_recipe_options, recipe_env
from circle_rotate.kernel.arg_types import whole_number
from circle_rotate.kernel.errors import UserError

ORDER = 41
DEVICE_VARIABLES = ("GPU", "NUM_PROCESSES")


def add_parser(sub) -> None:
    p = new_parser(sub, "train", help="train the LoRA of one or both experts with a recipe (preflight first)",
                   description="Reads the recipe (recipes/<recipe>_<expert>.sh), checks everything from file headers "
                               "and configs (musubi-tuner, experts, VAE, dataset config, caches, sample prompts, disk, "
                               "VRAM), prints the exact commands and runs them, streaming their output. both: one "
                               "after the other on one GPU, or one expert per GPU with --gpus 0,1; --data-parallel / --nodes "
                               "train each expert over several GPUs or machines with accelerate (the dry run states "
                               "the global batch and prints each node's command). Each run writes run.json beside its "
                               "LoRAs.",
                   examples="  circle-rotate train both --recipe reproduce --dry-run\n"
                            "  circle-rotate train low --dit-low models/wan2.2_i2v_low_noise_14B_fp16.safetensors "
                            "--gradient-checkpointing\n"
                            "  circle-rotate train both --recipe recommended --gpus 0,1 --save-state\n"
                            "  circle-rotate train high --resume\n"
                            "  circle-rotate train both --gpus 0-7 --data-parallel --lr-rule sqrt --dry-run\n"
                            "  circle-rotate train both --gpus 0-7 --nodes 2 -o /shared/runs --dry-run\n"
                            "  circle-rotate train low --gpus 0-7 --nodes 2 --node-rank 1 --main-address node0:29500\n")
    p.add_argument("expert", choices=("low", "high", "both"), help="which expert's LoRA to train")
    p.add_argument("--recipe", choices=("reproduce", "recommended"), default="reproduce",
                   help="reproduce: the published command; recommended: musubi's documented Wan2.2 timestep split")
    add_recipe_options(p)
    p.add_argument("--dit-low", type=Path, help="low-noise expert, fp16 (DIT_LOW)")
    p.add_argument("--dit-high", type=Path, help="high-noise expert, fp16 (DIT_HIGH)")
    add_out(p, metavar="DIR", help="outputs go to DIR/low and DIR/high (OUTPUT_DIR_LOW/HIGH)")
    add_alias(p, "--output-dir", dest="out", new="-o/--out", type=Path)
    p.add_argument("--gradient-checkpointing", action="store_true", help="GRADIENT_CHECKPOINTING=1 (memory only; on in the recipes, as published)")
    p.add_argument("--cpu-offload", action="store_true",
                   help="GRADIENT_CHECKPOINTING_CPU_OFFLOAD=1, with the checkpointing it needs (memory only; on "
                        "in the recipes, as published)")
    p.add_argument("--blocks-to-swap", type=int, help="BLOCKS_TO_SWAP=N (memory only; the recipes swap 30, as published; 0 on 80 GB "
                                                         "cards trains faster)")
    p.add_argument("--sample-prompts", type=Path, help="SAMPLE_PROMPTS: I2V prompt lines with --i first.png")
    p.add_argument("--save-state", action="store_true", help="also save optimizer state each epoch (for --resume)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete saved state in the output "
                                                         "folder (an expert that finished is left out)")
    p.add_argument("--resume-if-saved", action="store_true",
                   help="--resume, but an expert with nothing saved yet starts from epoch 1 (for job scripts that "
                        "may be requeued, e.g. recipes/slurm_train.sbatch)")
    p.add_argument("--dry-run", action="store_true", help="preflight and print the exact commands, run nothing")
    p.add_argument("--json", action="store_true", help="the run records written (and, with --dry-run, each expert's "
                                                       "commands, one per node)")
    g = p.add_argument_group("several GPUs and machines (accelerate DDP; recipes/README.md, "
                             "'Many GPUs, many machines')")
    g.add_argument("--data-parallel", action="store_true",
                   help="train each expert over several GPUs with accelerate (both + 2N GPUs: N GPUs each)")
    g.add_argument("--nodes", type=whole_number(1), default=1, help="machines in the job (implies --data-parallel)")
    g.add_argument("--node-rank", type=int, help="this machine's rank, 0 to nodes-1 (the dry run prints every node)")
    g.add_argument("--main-address", metavar="HOST:PORT", help="node 0's address, when one expert spans machines")
    g.add_argument("--accelerate-config", type=Path, help="your accelerate config (checked against the request)")
    g.add_argument("--experts-in-turn", action="store_true", help="both experts one after the other, each on all GPUs")
    g.add_argument("--grad-accumulation", type=whole_number(1), metavar="N", help="--gradient_accumulation_steps N")
    g.add_argument("--lr-rule", choices=("none", "linear", "sqrt"), default="none",
                   help="scale the learning rate by the global batch against the published run's")
    add_force(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from circle_rotate.musubi.parallel_plan import ParallelRequest
    from circle_rotate.musubi.train import TrainRequest, train
    from circle_rotate.musubi.train_parallel import MathsChoice

    from circle_rotate.musubi.recipe_reader import TRAIN_RECIPES

    from circle_rotate.kernel.write_checks import check_output_dir

    out = args.out
    given = [name for name, _ in args.set if name in DEVICE_VARIABLES]
    if given:  # the GPU and process checks, the batch maths and the launch lines all follow --gpus
        raise UserError(f"--set {given[0]}: train sets the GPUs and processes from --gpus",
                        fix="use --gpus 0,1 (one expert per GPU), or --gpus 0-7 --data-parallel (each expert over "
                            "several)")
    experts = ("low", "high") if args.expert == "both" else (args.expert,)
    for expert in experts if out else ():  # before any check or the run: the LoRA's folder must take files
        check_output_dir(out / expert, flag="-o/--out")
    env = recipe_env(args, {
        "DIT_LOW": args.dit_low, "DIT_HIGH": args.dit_high,
        "OUTPUT_DIR_LOW": out / "low" if out else None, "OUTPUT_DIR_HIGH": out / "high" if out else None,
        # musubi offloads only the checkpointed activations: the offload alone would do nothing
        "GRADIENT_CHECKPOINTING": 1 if args.gradient_checkpointing or args.cpu_offload else None,
        "GRADIENT_CHECKPOINTING_CPU_OFFLOAD": 1 if args.cpu_offload else None,
        "BLOCKS_TO_SWAP": args.blocks_to_swap, "SAMPLE_PROMPTS": args.sample_prompts,
    }, recipes=[TRAIN_RECIPES[args.recipe][e] for e in experts])
    parallel = None
    data_parallel = args.data_parallel or args.nodes > 1 or args.node_rank is not None or args.accelerate_config
    if not data_parallel and len(args.gpus) > len(experts):  # the extra cards would sit idle without a word
        raise UserError(f"--gpus {','.join(args.gpus)} names {len(args.gpus)} GPUs for {len(experts)} expert(s): "
                        "each expert trains on one", fix="give one GPU per expert, or add --data-parallel to "
                                                         "share each expert over several")
    if data_parallel:
        parallel = ParallelRequest(gpus=args.gpus or ("0",), nodes=args.nodes, node_rank=args.node_rank,
                                   main_address=args.main_address, accelerate_config=args.accelerate_config,
                                   experts_in_turn=args.experts_in_turn)
    request = TrainRequest(experts, recipe=args.recipe, env=env, gpus=args.gpus, save_state=args.save_state,
                           resume=args.resume or args.resume_if_saved, resume_optional=args.resume_if_saved,
                           force=args.force, parallel=parallel, maths=MathsChoice(args.grad_accumulation, args.lr_rule))
    # with --json the preflight and the commands go to stderr, so stdout is only the JSON
    echo = (lambda line: print(line, file=sys.stderr)) if args.json else print
    result = train(request, dry_run=args.dry_run, echo=echo)
    if args.json:
        commands: dict = {}  # expert -> its command on each node that runs it (one on a single machine)
        for r in result.plan.runs:
            commands.setdefault(r.expert, []).append(r.command.shell())
        print_json({"commands": commands,
                    "problems": [p.one_line() for p in result.report.problems], "notes": list(result.report.notes),
                    "records": [str(p) for p in result.records], "dry_run": args.dry_run})
        return 0
    for path in result.records:
        print(f"wrote {path}")
    return 0
