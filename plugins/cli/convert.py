"""``circle-rotate convert IN -o OUT --format comfy|musubi|diffusers``: exact LoRA layout conversion."""

from __future__ import annotations

import argparse
from pathlib import Path

from circle_rotate.cli._common import add_alias, add_legacy_out, add_out, new_parser, out_path, print_json
from circle_rotate.cli._lora_options import add_output_options
from circle_rotate.kernel.errors import UserError
from circle_rotate.tools.lora.keys import FORMATS
from circle_rotate.tools.option_values import parse_alpha_if_missing

ORDER = 31


def add_parser(sub) -> None:
    p = new_parser(sub, "convert", help="convert a Wan LoRA between musubi, ComfyUI and diffusers key layouts",
                   description="Rename every key exactly (musubi lora_unet_* <-> ComfyUI diffusion_model.*.lora_A/B); "
                               "alpha is kept, or folded into the weights for diffusers (which has none; exact when alpha/rank is a "
                               "power of two). Also reads DiffSynth-Studio, finetrainers and SimpleTuner LyCORIS "
                               "LoRAs, which ComfyUI does not map for Wan. "
                               "Metadata is kept. Whole-tensor differences (.diff/.diff_b/.diff_m, as in the lightx2v "
                               "LoRAs) are copied under the names ComfyUI applies; ComfyUI cannot apply the "
                               "modulation's (.diff_m) under any name, so they stay .diff_m and `merge` is the way to "
                               "have them. The ComfyUI layout loads with zero 'lora key not loaded' otherwise; the "
                               "diffusers layout is for Diffusers' load_lora_weights (ComfyUI does not map it for Wan).",
                   examples="  circle-rotate convert circle_rotate_h.safetensors -o circle_rotate_h_comfy.safetensors "
                            "--format comfy\n"
                            "  circle-rotate convert lora_comfy.safetensors -o lora_musubi.safetensors --format musubi\n")
    p.add_argument("src", type=Path, help="input LoRA (.safetensors, any layout)")
    add_out(p, metavar="OUT", help="output LoRA (.safetensors)")
    add_legacy_out(p)  # the old spelling: convert SRC OUT
    p.add_argument("--format", choices=FORMATS, help="target key layout (required)")
    add_alias(p, "--to", dest="format", new="--format", choices=FORMATS)
    add_output_options(p, run)


def run(args: argparse.Namespace) -> int:
    from circle_rotate.tools.lora.convert import convert_lora

    out = out_path(args, "circle-rotate convert")
    if out is None or args.format is None:
        raise UserError("convert needs -o OUT and --format", fix=f"circle-rotate convert {args.src} -o OUT.safetensors "
                                                                f"--format {{{','.join(FORMATS)}}}")
    report = convert_lora(args.src, out, to=args.format, alpha_if_missing=parse_alpha_if_missing(args.alpha_if_missing),
                          force=args.force)
    if args.json:
        print_json(report.to_dict())
    else:
        diffs = f", {report.diffs} whole-tensor differences" if report.diffs else ""
        print(f"{report.out}: {report.modules} modules{diffs}, {report.from_format} -> {report.to_format}, alpha {report.alpha}")
        if report.comfy_skips:
            print(f"note: ComfyUI cannot apply the {report.comfy_skips} modulation difference(s) (.diff_m; it prints "
                  f"'lora key not loaded' for them); to have them, merge the LoRA into the expert: circle-rotate merge "
                  f"EXPERT --lora {report.src} -o MERGED.safetensors")
    return 0
