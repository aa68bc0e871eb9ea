"""``circle-rotate generate``: two-expert Wan2.2 I2V videos through musubi's ``wan_generate_video.py``.

One musubi process works through a prompt file (its batch mode, ``--from_file``), loading
each expert when its steps start (``--lazy_loading``; ``keep_both_loaded`` keeps both on the
GPU instead); each line is musubi's prompt syntax with a first frame
(``a silver sedan, camera orbits left --i first.png --ei last.png --d 7``). musubi names
videos by time and seed, so every line gets its own seed and the videos are renamed to
``<NNN>_<first-frame stem>.mp4``: the same prompt file gives the same names with and
without the LoRAs, which is how ``circle-rotate eval compare`` pairs baseline and LoRA.

The paper's setting (Jklaity/Circle-Rotate ``inference.py``) and where this differs:

- same: 81 frames at 16 fps, flow shift 8, both LoRAs at strength 1 (high-noise LoRA on the
  high-noise expert), first and last frame; with the 4-step distillation LoRAs given
  (``--accel-lora-high/-low``, lightx2v) also 4 Euler steps, CFG 1.6, and the hand-over after
  step 2, which musubi's timestep boundary 0.9 gives at shift 8 (see ``high_noise_steps``);
- different: the paper samples the Wan2.2 Fun-Inpaint experts in ComfyUI's fp8_scaled files,
  which musubi cannot load; here the official I2V-A14B fp16 experts are used. Without the
  distillation LoRAs musubi's own defaults apply (40 UniPC steps, CFG 3.5).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from circle_rotate.kernel.atomic import write_json, write_text
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.input_files import read_text_file
from circle_rotate.kernel.wan_arch import BOUNDARY_I2V, MAX_BLOCKS_TO_SWAP, NATIVE_FPS, NATIVE_FRAMES, is_4n_plus_1
from circle_rotate.musubi.args import check_command
from circle_rotate.musubi.processes import run_chains
from circle_rotate.musubi.recipe_reader import MusubiCommand, musubi_scripts_dir

PAPER_SHIFT = 8.0
PAPER_SIZE = (720, 1280)  # height, width
PAPER_ACCEL = {"steps": 4, "guidance": 1.6, "solver": "vanilla"}
STAGING = ".musubi-output"
RECORD = "generate.json"
#: What musubi's ``--lora_weight`` would silently not apply of one LoRA file: ``(severity, message, fix)``
#: findings ("error" or "warning"). The LoRA readers live in ``circle_rotate.tools``, which this layer may
#: not import, so the caller passes the check (the CLI: ``circle_rotate.tools.lora.musubi_load.musubi_lora_problems``).
LoraCheck = Callable[[Path], List[Tuple[str, str, str]]]


@dataclass(frozen=True)
class Models:
    dit_low: Path
    dit_high: Path
    vae: Path
    t5: Path


@dataclass(frozen=True)
class GenerateRequest:
    """What ``circle-rotate generate`` was asked to do."""

    prompts: Path
    out_dir: Path
    models: Models
    lora_low: Optional[Path] = None
    lora_high: Optional[Path] = None
    strength: float = 1.0
    accel_lora_low: Optional[Path] = None
    accel_lora_high: Optional[Path] = None
    frames: int = NATIVE_FRAMES
    size: Tuple[int, int] = PAPER_SIZE
    flow_shift: float = PAPER_SHIFT
    steps: Optional[int] = None
    guidance: Optional[float] = None
    seed: int = 42
    gpu: str = "0"
    fp8: bool = False
    blocks_to_swap: int = 0
    keep_both_loaded: bool = False  # both experts resident for the whole run (no reloading per video)
    force: bool = False

    def check(self) -> None:
        """Raise one UserError naming every setting musubi's sampler would refuse (or silently drop)."""
        bad = [shape_problem(self.size[1], self.size[0], self.frames, where="--resolution/--frames")]
        if self.steps is not None and self.steps < 1:
            bad.append(f"--steps {self.steps} must be 1 or more")
        if not 0 <= self.blocks_to_swap <= MAX_BLOCKS_TO_SWAP:
            bad.append(f"--blocks-to-swap {self.blocks_to_swap} must be 0 to {MAX_BLOCKS_TO_SWAP} (Wan2.2-A14B has "
                       f"{MAX_BLOCKS_TO_SWAP + 1})")
        if not self.gpu.isdigit():
            bad.append(f"--gpus {self.gpu} is not a CUDA device index")
        bad = [b for b in bad if b]
        if bad:
            raise UserError("; ".join(bad), fix="see circle-rotate generate --help")


def shape_problem(width: int, height: int, frames: int, *, where: str) -> str:
    """What is wrong with a video shape for Wan2.2's VAE and patches, or "" (sides in multiples of 16, 4n+1 frames)."""
    bad = []
    if width < 16 or height < 16 or width % 16 or height % 16:
        bad.append(f"{width}x{height} is not in multiples of 16 (e.g. 1280x720, 832x480)")
    if frames < 5 or not is_4n_plus_1(frames):
        bad.append(f"{frames} frames is not 4n+1 from 5 (e.g. 81)")
    return f"{where}: {' and '.join(bad)}" if bad else ""


@dataclass(frozen=True)
class PromptLine:
    name: str
    text: str  # the line as musubi will read it (seed made explicit)
    seed: int
    image: Path
    end_image: Optional[Path]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:40] or "clip"


def read_prompts(path: Path, *, base_seed: int) -> List[PromptLine]:
    """Parse a prompt file with musubi's own line parser; every line needs an existing first frame.

    Raises:
        UserError: naming the line: no ``--i``, a missing image, or two lines with one seed.
    """
    from circle_rotate.kernel.musubi_env import import_musubi

    parse = import_musubi("wan_generate_video").parse_prompt_line
    text = read_text_file(path, what="prompt file", fix="one prompt per line: text --i first.png [--ei last.png]")
    out: List[PromptLine] = []
    seeds: Dict[int, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            data = parse(line)
        except (ValueError, IndexError) as exc:  # musubi's own parser: "--d x", "--w" with no value
            raise UserError(f"musubi cannot read this line ({exc})", path=where,
                            fix="numbers after --w --h --f --d --s --g, e.g. a car --i car.png --d 7") from None
        if any(k in data for k in ("video_size_width", "video_size_height", "video_length")):
            shape = shape_problem(int(data.get("video_size_width", 16)), int(data.get("video_size_height", 16)),
                                  int(data.get("video_length", 5)), where="its --w/--h/--f")
            if shape:
                raise UserError(shape, path=where, fix="sides in multiples of 16, 4n+1 frames, or leave them to the "
                                                       "command's --resolution and --frames")
        if not data.get("image_path"):
            raise UserError("an I2V prompt needs a first frame", path=where, fix="end the line with --i path/to/first.png")
        for key in ("image_path", "end_image_path"):
            if data.get(key) and not Path(data[key]).is_file():
                raise UserError(f"image not found: {data[key]}", path=where, fix="fix the path")
        seed = int(data.get("seed", base_seed + len(out)))
        if seed in seeds:
            raise UserError(f"seed {seed} is also used on line {seeds[seed]}; musubi names videos by seed", path=where,
                            fix="give each line its own --d SEED")
        seeds[seed] = number
        text = line if "seed" in data else f"{line} --d {seed}"
        name = f"{len(out):03d}_{_slug(Path(data['image_path']).stem)}"
        out.append(PromptLine(name, text, seed, Path(data["image_path"]),
                              Path(data["end_image_path"]) if data.get("end_image_path") else None))
    if not out:
        raise UserError("the prompt file has no prompts", path=path, fix="one prompt per line")
    return out


def _loras(accel: Optional[Path], lora: Optional[Path], strength: float) -> Tuple[List[str], List[str]]:
    files = [(accel, 1.0), (lora, strength)]
    used = [(str(f), f"{s:g}") for f, s in files if f is not None]
    return [f for f, _ in used], [s for _, s in used]


def sampling(request: GenerateRequest) -> Dict[str, object]:
    """Steps, guidance and solver: the paper's with the distillation LoRAs, musubi's defaults without."""
    accel = request.accel_lora_low is not None and request.accel_lora_high is not None
    return {"steps": request.steps or (PAPER_ACCEL["steps"] if accel else None),
            "guidance": request.guidance or (PAPER_ACCEL["guidance"] if accel else None),
            "solver": PAPER_ACCEL["solver"] if accel else "unipc"}


def build_command(request: GenerateRequest, prompt_file: Path) -> MusubiCommand:
    """The one ``wan_generate_video.py`` command for the whole prompt file."""
    scripts = musubi_scripts_dir()
    script = str(scripts / "wan_generate_video.py") if scripts else "wan_generate_video.py"
    m = request.models
    # Not --offload_inactive_dit: musubi 0.3.4 moves an offloaded expert back to the GPU only at the
    # high->low switch and only with block swap, and in --from_file mode never brings the high expert
    # back for the next prompt, so an expert runs with its weights in CPU RAM and CUDA inputs (a crash
    # at the first switch, or from the second video with block swap). --lazy_loading, which musubi's
    # docs/wan.md gives for this, loads each expert (LoRAs merged) when its steps start, every video.
    experts = [] if request.keep_both_loaded else ["--lazy_loading"]
    args = ["--task", "i2v-A14B", "--dit", str(m.dit_low), "--dit_high_noise", str(m.dit_high), "--vae", str(m.vae),
            "--t5", str(m.t5), *experts, "--attn_mode", "sdpa",
            "--video_size", str(request.size[0]), str(request.size[1]), "--video_length", str(request.frames),
            "--fps", str(NATIVE_FPS), "--flow_shift", f"{request.flow_shift:g}", "--seed", str(request.seed),
            "--save_path", str(request.out_dir / STAGING), "--output_type", "video", "--from_file", str(prompt_file)]
    for suffix, accel, lora in (("", request.accel_lora_low, request.lora_low),
                                ("_high_noise", request.accel_lora_high, request.lora_high)):
        files, mults = _loras(accel, lora, request.strength)
        if files:
            args += [f"--lora_weight{suffix}", *files, f"--lora_multiplier{suffix}", *mults]
    s = sampling(request)
    args += ["--sample_solver", str(s["solver"])]
    if s["steps"]:
        args += ["--infer_steps", str(s["steps"])]
    if s["guidance"]:
        args += ["--guidance_scale", f"{s['guidance']:g}", "--guidance_scale_high_noise", f"{s['guidance']:g}"]
    if request.fp8:
        args += ["--fp8_scaled"]
    if request.blocks_to_swap:
        args += ["--blocks_to_swap", str(request.blocks_to_swap)]
    return MusubiCommand("wan_generate_video", tuple(args), launcher=(sys.executable,), script_path=script,
                         env=(("CUDA_VISIBLE_DEVICES", request.gpu),))


def high_noise_steps(solver: str, steps: int, shift: float, boundary: float = BOUNDARY_I2V / 1000) -> int:
    """How many of ``steps`` musubi gives the high-noise expert (t/1000 >= boundary), from its own schedulers."""
    import torch
    from circle_rotate.kernel.musubi_env import import_musubi

    if solver == "vanilla":
        sched = import_musubi("modules.scheduling_flow_match_discrete").FlowMatchDiscreteScheduler(
            num_train_timesteps=1000, shift=shift)
        sched.set_timesteps(steps, device="cpu")
    else:
        sched = import_musubi("wan.utils.fm_solvers_unipc").FlowUniPCMultistepScheduler(
            num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
        sched.set_timesteps(steps, device="cpu", shift=shift)
    return int((torch.as_tensor(sched.timesteps) / 1000.0 >= boundary).sum())


def _check_models(request: GenerateRequest, echo, lora_check: Optional[LoraCheck] = None) -> None:
    from circle_rotate.kernel.safetensors_io import read_header
    from circle_rotate.musubi.preflight import check_dit, check_vae
    from circle_rotate.musubi.preflight_findings import Findings, user_error_parts

    f = Findings()
    ns = argparse.Namespace(task="i2v-A14B", fp8_base=request.fp8, fp8_scaled=False, mixed_precision=None)
    loras = {"low": request.lora_low, "high": request.lora_high}
    for expert, path, flag in (("low", request.models.dit_low, "--dit-low"), ("high", request.models.dit_high, "--dit-high")):
        # wan_generate_video.py reads the dtype from --dit (the low expert) only
        ident = check_dit(f, path, expert=expert, flag=flag, ns=ns, reads_dtype=expert == "low")
        if ident is not None and ident.key_prefix and loras[expert] is not None:
            # load_wan_model merges LoRAs before it strips the prefix: they would silently not apply
            f.error(path, f"has ComfyUI's '{ident.key_prefix}' key prefix; musubi would silently skip the LoRA on it",
                    "use the un-prefixed expert, or merge with `circle-rotate merge` and generate without --lora")
    check_vae(f, str(request.models.vae))
    loras = [p for p in (request.lora_low, request.lora_high, request.accel_lora_low, request.accel_lora_high)
             if p is not None]
    for path in (request.models.t5, *loras):
        if not Path(path).is_file():
            f.error(path, "file not found", "check the path")
        elif Path(path).suffix == ".safetensors":
            try:
                read_header(path)
            except UserError as exc:
                message, fix = user_error_parts(exc)
                f.error(path, message, fix)
                continue
            if path in loras and lora_check is not None:
                # musubi applies a LoRA only under its own key names and merely logs "not all LoRA keys
                # are used" for the rest: a ComfyUI- or Diffusers-layout LoRA would make videos without it
                for severity, message, fix in lora_check(Path(path)):
                    (f.error if severity == "error" else f.warning)(path, message, fix)
    for p in f.problems:
        echo(p.one_line())
    errors = [p for p in f.problems if p.severity == "error"]
    if errors:
        raise UserError(errors[0].message, path=errors[0].path or None, fix=errors[0].fix or None)


def _record(request: GenerateRequest, lines: List[PromptLine], command: MusubiCommand) -> Dict[str, object]:
    s = sampling(request)
    steps = s["steps"] or 40  # musubi's i2v-A14B default (wan/configs/wan_i2v_A14B.py sample_steps)
    return {
        "command": command.argv, "command_line": command.shell(),
        "settings": {"frames": request.frames, "size_hw": list(request.size), "fps": NATIVE_FPS,
                     "flow_shift": request.flow_shift, "lora_strength": request.strength, **s,
                     "high_noise_steps": high_noise_steps(str(s["solver"]), steps, request.flow_shift)},
        "differences_from_paper": [
            "base: official Wan2.2 I2V-A14B fp16 experts (the paper: Wan2.2 Fun-Inpaint in ComfyUI fp8_scaled, "
            "which musubi-tuner cannot load)",
            *([] if request.accel_lora_low and request.accel_lora_high else
              ["no 4-step distillation LoRAs given: musubi's 40 UniPC steps and CFG 3.5 instead of 4 Euler steps, CFG 1.6"]),
        ],
        "videos": [{"name": f"{p.name}.mp4", "prompt": p.text, "seed": p.seed, "image": str(p.image),
                    "end_image": str(p.end_image) if p.end_image else None} for p in lines],
    }


def generate(request: GenerateRequest, *, dry_run: bool, echo=print,
             lora_check: Optional[LoraCheck] = None) -> Dict[str, object]:
    """Check, print and (unless ``dry_run``) run one musubi generation pass; return the record.

    ``lora_check`` finds, in each LoRA file, what musubi would silently not apply (see :data:`LoraCheck`);
    its errors refuse the run before anything runs, its warnings are printed. Without one the LoRA
    files are only checked to exist and be readable.

    Raises:
        UserError: a bad prompt line, model file or existing output; musubi's parser rejects
            the command; generation failed or a video is missing afterwards.
    """
    request.check()
    lines = read_prompts(request.prompts, base_seed=request.seed)
    finals = [request.out_dir / f"{p.name}.mp4" for p in lines]
    existing = [f for f in finals if f.exists()]
    if existing and not request.force:
        raise UserError(f"{len(existing)} video(s) already exist", path=existing[0], fix="pass --force, or another --out")
    _check_models(request, echo, lora_check)
    staging = request.out_dir / STAGING
    prompt_file = staging / "prompts.txt"
    command = build_command(request, prompt_file)
    check_command(command)
    record = _record(request, lines, command)
    echo(command.shell())
    if dry_run:
        return record
    staging.mkdir(parents=True, exist_ok=True)
    write_text(prompt_file, "".join(p.text + "\n" for p in lines))
    result = run_chains({"generate": [command]})[0]
    if not result.ok:
        raise UserError(f"wan_generate_video.py failed (exit {result.returncodes[-1]})", path=staging,
                        fix="read the output above")
    for p, final in zip(lines, finals):
        made = sorted(staging.glob(f"*_{p.seed}.mp4"), key=lambda f: f.stat().st_mtime)
        if not made:
            raise UserError(f"musubi wrote no video for seed {p.seed} ({p.name})", path=staging, fix="read the output above")
        made[-1].replace(final)
    write_json(request.out_dir / RECORD, record)
    return record
