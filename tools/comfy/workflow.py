"""ComfyUI workflows for the user's own files: two Wan2.2 experts, one handover.

The graph is the one the study ships (``Jklaity/Circle-Rotate`` ``workflow.json``) generalised:
``UNETLoader`` per expert, optionally the 4-step distillation LoRA and the orbit LoRA
(``LoraLoaderModelOnly`` each; none when the experts are already merged), ``ModelSamplingSD3``
(the flow shift), the umT5 text encoder and prompts, ``WanImageToVideo`` (Wan2.2 I2V) or
``WanFunInpaintToVideo`` (Fun-InP, optionally with an end frame), two ``KSamplerAdvanced`` that
hand over at :func:`switch_step`, ``VAEDecode``, ``CreateVideo`` (16 fps) and ``SaveVideo``.

The handover: Wan2.2 I2V runs the high-noise expert while the timestep is at or above 900 of
1000 (sigma 0.9) and the low-noise one below. ComfyUI's flow sampling maps time ``t`` to
``sigma = s t / (1 + (s - 1) t)`` (``s`` the shift), and its ``simple`` scheduler takes step
``i`` of ``n`` at ``t = 1 - i / n``; sigma falls below 0.9 once ``t < 0.9 / (0.1 s + 0.9)``, so the
switch is the first step past ``n (1 - 0.9 / (0.1 s + 0.9))`` of the way through.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional, Tuple, Union

from circle_rotate.kernel.atomic import check_output_path, write_json
from circle_rotate.kernel.expert_names import expert_from_file_name
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.shard_names import SHARD_NAME
from circle_rotate.kernel.wan_arch import BOUNDARY_I2V, NATIVE_FPS, is_4n_plus_1
from circle_rotate.tools.comfy.graph import Graph, Link, to_api, to_ui

PathLike = Union[str, os.PathLike]
VARIANTS = ("i2v", "fun-inp")
#: ComfyUI 0.3.64's ``comfy/samplers.py`` KSampler.SAMPLERS / SCHEDULERS.
SAMPLERS = ("euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
            "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
            "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
            "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
            "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
            "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
            "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2")
SCHEDULERS = ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
              "kl_optimal")
#: Comfy-Org's repackaged 4-step (lightx2v) distillation LoRAs for Wan2.2 I2V, the study's.
LIGHTX2V = ("wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",
            "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors")
TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
VAE = "wan_2.1_vae.safetensors"
NEGATIVE = "static camera, camera shake, blurry, distorted, deformed, low quality, watermark, text"


def switch_step(steps: int, shift: float, boundary: float = BOUNDARY_I2V / 1000) -> int:
    """First step (0-based) whose sigma is below ``boundary`` on ComfyUI's ``simple`` schedule with flow
    shift ``shift``: the low-noise expert's ``start_at_step``; at least 1 and at most ``steps``."""
    fraction = 1.0 - boundary / (shift * (1.0 - boundary) + boundary)  # where t falls to the boundary
    return min(steps, max(1, math.floor(steps * fraction + 1e-9) + 1))


@dataclass(frozen=True)
class ExpertChain:
    """One expert as ComfyUI loads it: the model file and the LoRAs after it, (name, strength) in order."""

    model: str
    loras: Tuple[Tuple[str, float], ...] = ()


@dataclass(frozen=True)
class WorkflowSpec:
    """Everything a written workflow depends on (file names as ComfyUI lists them in its models folders)."""

    high: ExpertChain
    low: ExpertChain
    variant: str = "i2v"
    prompt: str = "the camera orbits around the subject, turntable shot"
    negative: str = NEGATIVE
    start_image: str = "start.png"
    end_image: Optional[str] = None
    width: int = 832
    height: int = 480
    frames: int = 81
    steps: int = 20
    cfg: float = 3.5
    sampler: str = "euler"
    scheduler: str = "simple"
    shift: float = 8.0
    seed: int = 0
    text_encoder: str = TEXT_ENCODER
    vae: str = VAE
    filename_prefix: str = "video/circle_rotate"

    @property
    def switch(self) -> int:
        return switch_step(self.steps, self.shift)

    def check(self) -> None:
        """Raise :class:`UserError` naming every value ComfyUI's nodes would refuse."""
        bad = []
        if self.variant not in VARIANTS:
            bad.append(f"variant {self.variant!r} (use {' or '.join(VARIANTS)})")
        if self.end_image and self.variant != "fun-inp":
            bad.append("an end image needs the Fun-InP experts (--variant fun-inp)")
        for name, value in (("width", self.width), ("height", self.height)):
            if value < 16 or value > 16384 or value % 16:
                bad.append(f"{name} {value} (a multiple of 16 from 16 to 16384)")
        if not is_4n_plus_1(self.frames):
            bad.append(f"frames {self.frames} (4n+1, e.g. 81)")
        if self.steps < 2:
            bad.append(f"steps {self.steps} (two experts need at least 2)")
        if not 0 <= self.cfg <= 100:
            bad.append(f"cfg {self.cfg} (0 to 100)")
        if not 0 < self.shift <= 100:
            bad.append(f"shift {self.shift} (above 0, at most 100)")
        if self.sampler not in SAMPLERS:
            bad.append(f"sampler {self.sampler!r}")
        if self.scheduler not in SCHEDULERS:
            bad.append(f"scheduler {self.scheduler!r}")
        if not 0 <= self.seed < 2**64:
            bad.append(f"seed {self.seed}")
        for expert, chain in (("high", self.high), ("low", self.low)):
            bad += [f"LoRA strength {s} of {n} (-100 to 100)" for n, s in chain.loras if not -100 <= s <= 100]
            # the two experts have the same shapes: swapped, the graph runs and the video is just worse
            for what, name, folder in (("expert", chain.model, "diffusion_models"),
                                       *(("LoRA", n, "loras") for n, _ in chain.loras)):
                path = PurePosixPath(name.replace("\\", "/"))
                named = expert_from_file_name(path.name)
                if named is not None and named != expert:
                    bad.append(f"the {expert}-noise {what} {name} is named for the {named}-noise one (swapped?)")
                if path.is_absolute() or name[1:3] in (":/", ":\\"):  # ComfyUI's lists hold names, not paths
                    bad.append(f"{name} is a path: ComfyUI names a file by where it lies inside models/{folder} "
                               f"(e.g. {path.name})")
            if SHARD_NAME.match(Path(chain.model).name):  # UNETLoader loads one file as the whole model
                bad.append(f"{chain.model} is one shard of a sharded model (ComfyUI loads one whole file: "
                           "`circle-rotate merge SHARD -o ONE_FILE.safetensors --dtype fp16` writes one, and "
                           "merges a LoRA in with --lora)")
        if bad:
            raise UserError("the workflow would not run: " + "; ".join(bad),
                            fix="see `circle-rotate workflow --help` for each flag's range")


def _chain(g: Graph, chain: ExpertChain, shift: float, row: float, label: str) -> Link:
    model = g.add("UNETLoader", (0, row), f"{label} expert", unet_name=chain.model, weight_dtype="default")
    for i, (name, strength) in enumerate(chain.loras):
        model = g.add("LoraLoaderModelOnly", (360 * (i + 1), row), None, model=model, lora_name=name,
                      strength_model=float(strength))
    return g.add("ModelSamplingSD3", (360 * (len(chain.loras) + 1), row), None, model=model, shift=float(shift))


def build_graph(spec: WorkflowSpec) -> Graph:
    """The node graph of ``spec`` (checked first)."""
    spec.check()
    g = Graph()
    high = _chain(g, spec.high, spec.shift, 0, "high-noise")
    low = _chain(g, spec.low, spec.shift, 200, "low-noise")
    clip = g.add("CLIPLoader", (0, 450), None, clip_name=spec.text_encoder, type="wan", device="default")
    vae = g.add("VAELoader", (0, 600), None, vae_name=spec.vae)
    positive = g.add("CLIPTextEncode", (360, 450), "prompt", text=spec.prompt, clip=clip)
    negative = g.add("CLIPTextEncode", (360, 650), "negative prompt", text=spec.negative, clip=clip)
    start = g.add("LoadImage", (0, 800), "start frame", image=spec.start_image)
    frames = dict(width=spec.width, height=spec.height, length=spec.frames, batch_size=1)
    if spec.variant == "fun-inp":
        extra = {"end_image": g.add("LoadImage", (0, 1150), "end frame", image=spec.end_image)} if spec.end_image else {}
        cond = g.add("WanFunInpaintToVideo", (720, 450), None, positive=positive, negative=negative, vae=vae,
                     start_image=start, **frames, **extra)
    else:
        cond = g.add("WanImageToVideo", (720, 450), None, positive=positive, negative=negative, vae=vae,
                     start_image=start, **frames)
    common = dict(noise_seed=spec.seed, steps=spec.steps, cfg=float(spec.cfg), sampler_name=spec.sampler,
                  scheduler=spec.scheduler, positive=Link(cond.node, 0), negative=Link(cond.node, 1))
    first = g.add("KSamplerAdvanced", (1100, 0), "high-noise steps", model=high, add_noise="enable",
                  latent_image=Link(cond.node, 2), start_at_step=0, end_at_step=spec.switch,
                  return_with_leftover_noise="enable", **common)
    second = g.add("KSamplerAdvanced", (1450, 0), "low-noise steps", model=low, add_noise="disable",
                   latent_image=first, start_at_step=spec.switch, end_at_step=spec.steps,
                   return_with_leftover_noise="disable", **common)
    images = g.add("VAEDecode", (1800, 0), None, samples=second, vae=vae)
    video = g.add("CreateVideo", (1800, 200), None, images=images, fps=float(NATIVE_FPS))
    g.add("SaveVideo", (2100, 0), None, video=video, filename_prefix=spec.filename_prefix, format="auto", codec="auto")
    return g


def api_path(ui_path: Path) -> Path:
    """Where the API form goes beside the UI one: ``<stem>_api.json``."""
    return ui_path.with_name(ui_path.stem + "_api.json")


def write_workflows(spec: WorkflowSpec, out: PathLike, *, force: bool = False) -> Tuple[Path, Path]:
    """Write the UI workflow to ``out`` and the API prompt beside it (``<stem>_api.json``), atomically.

    Raises:
        UserError: a value ComfyUI would refuse, or an existing output without ``force``.
    """
    ui = check_output_path(out, force=force)
    if ui.suffix != ".json":
        raise UserError(f"{ui.name}: the workflow is JSON", path=ui, fix="name the output *.json")
    api = check_output_path(api_path(ui), force=force)
    graph = build_graph(spec)
    write_json(ui, to_ui(graph))
    write_json(api, to_api(graph))
    return ui, api
