"""``circle-rotate convert IN OUT --to comfy|musubi|diffusers``: exact LoRA layout conversion."""

from __future__ import annotations

import argparse
from pathlib import Path

from circle_rotate.cli._common import new_parser, print_json
from circle_rotate.cli._lora_options import add_output_options
from circle_rotate.tools.lora_keys import FORMATS
from circle_rotate.tools.options import parse_alpha_if_missing

ORDER = 31


def add_parser(sub) -> None:
    p = new_parser(sub, "convert", help="convert a Wan LoRA between musubi, ComfyUI and diffusers key layouts",
                   description="Rename every key exactly (musubi lora_unet_* <-> ComfyUI diffusion_model.*.lora_A/B); "
                               "alpha is kept, or folded into the weights for diffusers (which has none). "
                               "Metadata is kept. The ComfyUI layout loads with zero 'lora key not loaded'.",
                   examples="  circle-rotate convert circle_rotate_h.safetensors circle_rotate_h_comfy.safetensors --to comfy\n"
                            "  circle-rotate convert lora_comfy.safetensors lora_musubi.safetensors --to musubi\n")
    p.add_argument("src", type=Path, help="input LoRA (.safetensors, any layout)")
    p.add_argument("out", type=Path, help="output LoRA (.safetensors)")
    p.add_argument("--to", required=True, choices=FORMATS, help="target layout")
    add_output_options(p, run)


def run(args: argparse.Namespace) -> int:
    from circle_rotate.tools.convert import convert_lora

    report = convert_lora(args.src, args.out, to=args.to, alpha_if_missing=parse_alpha_if_missing(args.alpha_if_missing),
                          force=args.force)
    if args.json:
        print_json(report.to_dict())
    else:
        print(f"{report.out}: {report.modules} modules, {report.from_format} -> {report.to_format}, alpha {report.alpha}")
    return 0
