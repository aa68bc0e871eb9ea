"""``circle-rotate workflow --high H --low L [--high-lora A --low-lora B] --out W.json``: ComfyUI workflows."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Tuple

from circle_rotate.cli._common import add_force, add_out, new_parser, print_json
from circle_rotate.cli._lora_options import strength_arg
from circle_rotate.tools.comfy.workflow import (LIGHTX2V, NEGATIVE, SAMPLERS, SCHEDULERS, TEXT_ENCODER, VAE, VARIANTS,
                                                ExpertChain, WorkflowSpec, api_path, write_workflows)

ORDER = 36


def add_workflow_options(p: argparse.ArgumentParser) -> None:
    """Sampling and video flags (shared with ``merge-pair --workflow``)."""
    g = p.add_argument_group("workflow")
    g.add_argument("--variant", choices=VARIANTS, default=None,
                   help="i2v (WanImageToVideo) or fun-inp (WanFunInpaintToVideo); default: told from the model names")
    g.add_argument("--lightx2v", action="store_true",
                   help=f"add the 4-step distillation LoRAs first ({LIGHTX2V[0]} / _low_noise); default steps 4, cfg 1")
    g.add_argument("--steps", type=int, default=None, help="sampling steps (default 20, 4 with --lightx2v)")
    g.add_argument("--cfg", type=float, default=None, help="CFG scale (default 3.5, 1 with --lightx2v; the study: 1.6)")
    g.add_argument("--shift", type=float, default=8.0, help="flow shift of ModelSamplingSD3 (default 8, ComfyUI's)")
    g.add_argument("--sampler", choices=SAMPLERS, default="euler", metavar="NAME", help="KSampler sampler (default euler)")
    g.add_argument("--scheduler", choices=SCHEDULERS, default="simple", help="KSampler scheduler (default simple)")
    g.add_argument("--width", type=int, default=832, help="video width, a multiple of 16 (default 832)")
    g.add_argument("--height", type=int, default=480, help="video height, a multiple of 16 (default 480)")
    g.add_argument("--frames", type=int, default=81, help="frames, 4n+1 (default 81: 5 s at 16 fps)")
    g.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    g.add_argument("--prompt", default="the camera orbits around the subject, turntable shot", help="positive prompt")
    g.add_argument("--negative", default=NEGATIVE, help="negative prompt")
    g.add_argument("--image", default="start.png", help="start frame, as named in ComfyUI/input (default start.png)")
    g.add_argument("--end-image", default=None, help="end frame (fun-inp only)")
    g.add_argument("--text-encoder", default=TEXT_ENCODER, help=f"umT5 file in models/text_encoders (default {TEXT_ENCODER})")
    g.add_argument("--vae", default=VAE, help=f"VAE file in models/vae (default {VAE})")


def variant_of(*names: str) -> str:
    """``fun-inp`` when a model's name says Fun-InP (Comfy-Org's ``fun_inpaint``, VideoX-Fun's ``Fun-A14B-InP``),
    else ``i2v``: the rule merge and merge-pair apply to a file without metadata, so a name both read alike."""
    from pathlib import PurePosixPath

    from circle_rotate.kernel.checkpoint_identity import variant_of as variant_by_name  # torch: import on use

    return "fun-inp" if any(variant_by_name({}, PurePosixPath(n.replace("\\", "/"))) == "fun-inp" for n in names) else "i2v"


def spec_from_args(args: argparse.Namespace, high: str, low: str,
                   loras: Tuple[Optional[Tuple[str, float]], Optional[Tuple[str, float]]] = (None, None)) -> WorkflowSpec:
    """The workflow for experts ``high``/``low`` (file names) and their orbit LoRAs (name, strength) or None."""
    chains = []
    for i, (model, lora) in enumerate(zip((high, low), loras)):
        stack = ((LIGHTX2V[i], 1.0),) if args.lightx2v else ()
        stack += (lora,) if lora else ()
        chains.append(ExpertChain(model, stack))
    steps = args.steps if args.steps is not None else (4 if args.lightx2v else 20)
    cfg = args.cfg if args.cfg is not None else (1.0 if args.lightx2v else 3.5)
    return WorkflowSpec(chains[0], chains[1], variant=args.variant or variant_of(high, low), prompt=args.prompt,
                        negative=args.negative, start_image=args.image, end_image=args.end_image, width=args.width,
                        height=args.height, frames=args.frames, steps=steps, cfg=cfg, sampler=args.sampler,
                        scheduler=args.scheduler, shift=args.shift, seed=args.seed, text_encoder=args.text_encoder,
                        vae=args.vae)


def describe(spec: WorkflowSpec, ui: Path) -> str:
    node = "WanFunInpaintToVideo" if spec.variant == "fun-inp" else "WanImageToVideo"
    high = "the first step" if spec.switch == 1 else f"the first {spec.switch} steps"
    return (f"{ui} (drag into ComfyUI) and {api_path(ui).name} (POST /prompt): {node}, {spec.width}x{spec.height}, "
            f"{spec.frames} frames, {spec.steps} steps, cfg {spec.cfg:g}, shift {spec.shift:g}; the high-noise expert "
            f"takes {high}, the low-noise one the rest (from sigma < 0.9 on the {spec.scheduler} schedule, {spec.sampler})")


def add_parser(sub) -> None:
    p = new_parser(sub, "workflow", help="write ComfyUI workflows (UI and API JSON) for your experts and LoRAs",
                   description="Writes the drag-and-drop workflow and the /prompt API JSON: a UNETLoader per expert, "
                               "the orbit LoRA (LoraLoaderModelOnly) unless the experts are merged, optionally the 4-step "
                               "lightx2v LoRAs, ModelSamplingSD3, WanImageToVideo or WanFunInpaintToVideo, and two "
                               "KSamplerAdvanced that hand over from the high- to the low-noise expert at the step where "
                               "sigma falls below 0.9 (in the sigma list ComfyUI's KSampler builds from --steps, --shift, "
                               "--scheduler and --sampler). Names are file names as they appear in ComfyUI's models "
                               "folders.",
                   examples="  circle-rotate workflow --high wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors "
                            "--low wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors \\\n"
                            "      --high-lora circle_rotate_h.safetensors --low-lora circle_rotate_l.safetensors "
                            "--out circle_rotate.json\n"
                            "  circle-rotate workflow --high wan2.2_fun_inpaint_high_noise_circle_rotate_h_fp8_scaled.safetensors "
                            "--low wan2.2_fun_inpaint_low_noise_circle_rotate_l_fp8_scaled.safetensors --lightx2v --cfg 1.6 "
                            "--out merged.json\n")
    p.add_argument("--high", required=True, help="high-noise expert (file name in models/diffusion_models)")
    p.add_argument("--low", required=True, help="low-noise expert (file name in models/diffusion_models)")
    p.add_argument("--high-lora", default=None,
                   help="orbit LoRA of the high-noise expert (models/loras); omit for merged experts (refused on an expert "
                        "that holds it: by the expert's metadata where the file is here, else by merge-pair's name)")
    p.add_argument("--low-lora", default=None, help="orbit LoRA of the low-noise expert (models/loras)")
    # default None, so that a strength given without its LoRA is seen (and refused) rather than dropped
    p.add_argument("--strength-high", type=strength_arg("--strength-high"), default=None, help="strength of the high-noise LoRA (default 1; study 0.8-1)")
    p.add_argument("--strength-low", type=strength_arg("--strength-low"), default=None, help="strength of the low-noise LoRA (default 1)")
    add_out(p, default=Path("circle_rotate_workflow.json"), metavar="FILE",
            help="UI workflow to write; the API form goes beside it as <stem>_api.json")
    add_workflow_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_force(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from circle_rotate.kernel.errors import UserError

    if (args.high_lora is None) != (args.low_lora is None):
        raise UserError("give both --high-lora and --low-lora, or neither (merged experts)",
                        fix="each expert needs its own LoRA: circle_rotate_h for --high, circle_rotate_l for --low")
    if args.high_lora is None and (args.strength_high is not None or args.strength_low is not None):
        raise UserError("--strength-high/--strength-low set a LoRA's strength, and no LoRA is given",
                        fix="add --high-lora and --low-lora, or leave the strengths out (merged experts carry theirs)")
    strengths = [1.0 if s is None else s for s in (args.strength_high, args.strength_low)]
    loras = ((args.high_lora, strengths[0]), (args.low_lora, strengths[1])) if args.high_lora else (None, None)
    spec = spec_from_args(args, args.high, args.low, loras)
    ui, api = write_workflows(spec, args.out, force=args.force)
    if args.json:
        print_json({"ui": str(ui), "api": str(api), "variant": spec.variant, "steps": spec.steps, "switch_step": spec.switch,
                    "shift": spec.shift, "cfg": spec.cfg})
    else:
        print(describe(spec, ui))
    return 0
