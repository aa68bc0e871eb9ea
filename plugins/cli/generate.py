"""``circle-rotate generate PROMPTS -o DIR``: two-expert I2V videos with both LoRAs through musubi's wan_generate_video.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from circle_rotate.cli._common import add_alias, add_force, add_out, new_parser, print_json
from circle_rotate.kernel.arg_types import frame_size
from circle_rotate.kernel.errors import UserError

ORDER = 42


def add_parser(sub) -> None:
    p = new_parser(sub, "generate", help="generate orbit videos with both experts and both LoRAs (musubi, GPU)",
                   description="One musubi wan_generate_video.py pass over a prompt file (musubi's syntax, one line per "
                               "video: text --i first.png [--ei last.png] [--d SEED]), the low-noise LoRA on the low-noise "
                               "expert and the high-noise LoRA on the high-noise one. Videos are named "
                               "<NNN>_<first-frame>.mp4, so runs with and without LoRAs pair up in `circle-rotate eval "
                               "compare`. Defaults follow the paper: 81 frames, 16 fps, 1280x720, shift 8; with the 4-step "
                               "distillation LoRAs also 4 Euler steps at CFG 1.6. Model paths default to the recipe "
                               "variables (DIT_LOW, DIT_HIGH, VAE, T5). LoRAs go in musubi-tuner's own key layout, the "
                               "only one its --lora_weight applies: a ComfyUI or Diffusers one is refused, naming the "
                               "`circle-rotate convert ... --format musubi` that fixes it.",
                   examples="  circle-rotate generate prompts.txt -o videos/lora "
                            "--lora-low circle_rotate_l.safetensors --lora-high circle_rotate_h.safetensors\n"
                            "  circle-rotate generate prompts.txt -o videos/baseline --resolution 832x480 --dry-run\n")
    # SUPPRESS and no type: an absent positional must not overwrite the old --prompts spelling
    # (argparse would pass a string default through type=Path)
    p.add_argument("prompts", nargs="?", default=argparse.SUPPRESS, metavar="PROMPTS",
                   help="prompt file, one video per line")
    add_alias(p, "--prompts", dest="prompts", new="the positional PROMPTS", type=Path)
    add_out(p, required=True, metavar="DIR", help="folder for the videos and generate.json")
    for flag, var in (("--dit-low", "DIT_LOW"), ("--dit-high", "DIT_HIGH"), ("--vae", "VAE"), ("--t5", "T5")):
        p.add_argument(flag, type=Path, help=f"default: the recipes' {var}")
    p.add_argument("--lora-low", type=Path, help="LoRA of the low-noise expert (circle_rotate_l.safetensors)")
    p.add_argument("--lora-high", type=Path, help="LoRA of the high-noise expert (circle_rotate_h.safetensors)")
    p.add_argument("--strength", type=float, default=1.0, help="LoRA strength (default 1.0, as the paper)")
    p.add_argument("--accel-lora-low", type=Path, help="4-step distillation LoRA, low-noise (lightx2v, as the paper)")
    p.add_argument("--accel-lora-high", type=Path, help="4-step distillation LoRA, high-noise")
    p.add_argument("--frames", type=int, default=81, help="frames per video (4n+1; default 81)")
    p.add_argument("--resolution", type=frame_size, default=(1280, 720), metavar="WxH", help="default 1280x720")
    add_alias(p, "--size", dest="size_hw", new="--resolution WxH", type=int, nargs=2)
    p.add_argument("--flow-shift", type=float, default=8.0, help="default 8 (the paper's)")
    p.add_argument("--steps", type=int, help="sampling steps (default: 4 with the distillation LoRAs, else musubi's 40)")
    p.add_argument("--guidance", type=float, help="CFG scale (default: 1.6 with the distillation LoRAs, else musubi's)")
    p.add_argument("--seed", type=int, default=42, help="seed of the first line; line k gets seed+k unless it sets --d")
    p.add_argument("--gpus", default="0", metavar="N", help="the CUDA device (one; default 0)")
    add_alias(p, "--gpu", dest="gpus", new="--gpus")
    p.add_argument("--fp8", action="store_true", help="quantize the experts to fp8 on load (memory; musubi --fp8_scaled)")
    p.add_argument("--blocks-to-swap", type=int, default=0, help="DiT blocks kept in CPU RAM (memory)")
    p.add_argument("--keep-both-loaded", action="store_true",
                   help="keep both experts on the GPU for the whole run (big GPUs): needs memory for both at once "
                        "(with --fp8 about 2 x 14 GB of weights, without about 2 x 28 GB) and saves reloading both "
                        "experts, LoRAs merged, for every video (default: each is loaded when its steps start)")
    p.add_argument("--dry-run", action="store_true", help="check everything and print the command, run nothing")
    p.add_argument("--json", action="store_true", help="print the run record (generate.json) as JSON")
    add_force(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from circle_rotate.musubi.generate import GenerateRequest, Models, generate
    from circle_rotate.musubi.recipe_reader import recipe_variables

    defaults = recipe_variables(["DIT_LOW", "DIT_HIGH", "VAE", "T5"])
    models = Models(*(Path(getattr(args, k) or defaults[v]) for k, v in
                      (("dit_low", "DIT_LOW"), ("dit_high", "DIT_HIGH"), ("vae", "VAE"), ("t5", "T5"))))
    if getattr(args, "prompts", None) is None:
        raise UserError("no prompt file given", fix="circle-rotate generate prompts.txt -o videos/lora")
    if "," in args.gpus:
        raise UserError(f"--gpus {args.gpus}: generate runs on one device", fix="give one, e.g. --gpus 0")
    width, height = args.resolution
    size_hw = tuple(getattr(args, "size_hw", None) or (height, width))
    request = GenerateRequest(
        prompts=Path(args.prompts), out_dir=args.out, models=models, lora_low=args.lora_low, lora_high=args.lora_high,
        strength=args.strength, accel_lora_low=args.accel_lora_low, accel_lora_high=args.accel_lora_high,
        frames=args.frames, size=size_hw, flow_shift=args.flow_shift, steps=args.steps, guidance=args.guidance,
        seed=args.seed, gpu=args.gpus, fp8=args.fp8, blocks_to_swap=args.blocks_to_swap,
        keep_both_loaded=args.keep_both_loaded, force=args.force)
    if not args.dry_run:
        from circle_rotate.kernel.musubi_env import require_cuda

        require_cuda("video generation")
    # with --json the progress lines go to stderr, so stdout is only the record
    echo = (lambda line: print(line, file=sys.stderr)) if args.json else print
    from circle_rotate.tools.lora.musubi_load import musubi_lora_problems

    record = generate(request, dry_run=args.dry_run, echo=echo, lora_check=musubi_lora_problems)
    if args.json:
        print_json(record)
        return 0
    s = record["settings"]
    print(f"{len(record['videos'])} videos, {s['frames']} frames at {s['size_hw'][1]}x{s['size_hw'][0]}, "
          f"shift {s['flow_shift']:g}, {s['solver']}; {s['high_noise_steps']} step(s) on the high-noise expert")
    for note in record["differences_from_paper"]:
        print(f"differs from the paper: {note}")
    return 0

