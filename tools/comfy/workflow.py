"""ComfyUI workflows for the user's own files: two Wan2.2 experts, one handover.

The graph is the one the study ships (``Jklaity/Circle-Rotate`` ``workflow.json``) generalised:
``UNETLoader`` per expert, optionally the 4-step distillation LoRA and the orbit LoRA
(``LoraLoaderModelOnly`` each; none when the experts are already merged), ``ModelSamplingSD3``
(the flow shift), the umT5 text encoder and prompts, ``WanImageToVideo`` (Wan2.2 I2V) or
``WanFunInpaintToVideo`` (Fun-InP, optionally with an end frame), two ``KSamplerAdvanced`` that
hand over at :func:`switch_step`, ``VAEDecode``, ``CreateVideo`` (16 fps) and ``SaveVideo``.

The handover: Wan2.2 I2V runs the high-noise expert while the timestep is at or above 900 of
1000 (sigma 0.9) and the low-noise one below. ``KSamplerAdvanced``'s ``start_at_step`` and
``end_at_step`` index the sigma list its KSampler builds, and that list depends on the scheduler,
the sampler and the flow shift (:mod:`circle_rotate.tools.comfy.sigmas` computes it as ComfyUI
0.3.64 does), so the switch is the first index in that list whose sigma is below 0.9. On the
``simple`` schedule with shift ``s`` that is the first step past ``1 - 0.9 / (0.1 s + 0.9)`` of the
way through; ``karras``, ``exponential`` and ``kl_optimal`` take only the ends of the model's
range and fall below 0.9 after a step or two.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional, Tuple, Union

from circle_rotate.kernel.atomic import check_output_path, write_json
from circle_rotate.kernel.expert_names import expert_from_file_name
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.shard_names import SHARD_NAME
from circle_rotate.kernel.wan_arch import BOUNDARY_I2V, NATIVE_FPS, is_4n_plus_1
from circle_rotate.tools.comfy.graph import Graph, Link, to_api, to_ui
from circle_rotate.tools.comfy.sigmas import SCHEDULERS as SIGMA_SCHEDULERS, first_below, sampling_sigmas

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
#: ComfyUI 0.3.64's ``folder_paths.supported_pt_extensions``: a model folder's list holds only these (any case).
MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl")
#: ``KSamplerAdvanced``'s largest ``steps`` (and start/end step); ``WanImageToVideo``'s largest ``length``
#: (MAX_RESOLUTION), of which the largest 4n+1 is 16381.
MAX_STEPS = 10000
MAX_FRAMES = 16384
#: ComfyUI-GGUF's loaders, for a .gguf model ComfyUI's own loaders do not list.
GGUF_LOADERS = {"diffusion_models": "Unet Loader (GGUF) (UnetLoaderGGUF)", "text_encoders": "CLIPLoader (GGUF) (CLIPLoaderGGUF)"}
NEGATIVE = "static camera, camera shake, blurry, distorted, deformed, low quality, watermark, text"


def switch_step(steps: int, shift: float, sampler: str = "euler", scheduler: str = "simple",
                boundary: float = BOUNDARY_I2V / 1000) -> int:
    """First step (0-based) whose sigma is below ``boundary`` in the sigma list ComfyUI's ``KSamplerAdvanced``
    builds for ``steps``, ``scheduler`` and ``sampler`` at flow shift ``shift``: the low-noise expert's
    ``start_at_step``, at most ``steps``. 0 when the list starts below the boundary (the high-noise
    expert would take no step; :meth:`WorkflowSpec.check` refuses that)."""
    return min(steps, first_below(sampling_sigmas(sampler, scheduler, steps, shift), boundary))


def _already_merged(model: str, lora: str) -> Optional[str]:
    """How we know that ``lora`` is merged into the expert ``model`` already (None: not that we know).

    An expert file found here (the name taken as a path from the working folder) decides by its own
    record, ``circle_rotate.merged_loras``: merge and merge-pair list each LoRA they merge in. Else the
    name decides, as merge-pair names what it writes: ``..._high_noise_<LoRA stem>_<dtype>.safetensors``."""
    lora_name = PurePosixPath(lora.replace("\\", "/")).name
    local = Path(model)
    if local.suffix.lower() in (".safetensors", ".sft") and local.is_file():
        from circle_rotate.kernel.safetensors_io import read_header  # torch: only when a file is read
        from circle_rotate.tools.merge.provenance import SAME, merged_before

        try:
            metadata = read_header(local).metadata
        except (UserError, OSError, ValueError):
            metadata = None  # unreadable here: the name decides, as for a file that is elsewhere
        if metadata is not None:
            strengths = [float(e.get("strength", 1.0)) for e in merged_before(metadata) if e["file"] == lora_name
                         and isinstance(e.get("strength", 1.0), (int, float))]
            net = sum(strengths)
            # merged and taken out again at the opposite strength (merge's undo): the expert no longer holds it
            if not strengths or abs(net) <= SAME * max(abs(x) for x in strengths):
                return None
            return f"its metadata lists it at net strength {net:g}"
    stem = re.escape(PurePosixPath(lora_name).stem)
    if re.search(rf"_(?:high|low)_noise_{stem}_", PurePosixPath(model.replace("\\", "/")).name, re.IGNORECASE):
        return "by its name, as merge-pair names the experts it merges"
    return None


def _file_problems(what: str, name: str, folder: str) -> list:
    """Why ComfyUI's loader for ``folder`` would not list ``name`` (by its extension), if it would not."""
    suffix = PurePosixPath(name.replace("\\", "/")).suffix.lower()
    if suffix == ".gguf":  # a quantized model for the ComfyUI-GGUF custom node, never in the core loaders' lists
        loader = GGUF_LOADERS.get(folder)
        how = (f"give the .safetensors expert's name here and, in ComfyUI, swap its loader for ComfyUI-GGUF's "
               f"{loader} with this file" if loader else "give the .safetensors file")
        return [f"{what} {name} is a GGUF file, which ComfyUI's own loaders do not list ({how})"]
    if suffix not in MODEL_EXTENSIONS:
        return [f"{what} {name}: ComfyUI lists only {', '.join(MODEL_EXTENSIONS)} files in models/{folder}"]
    return []


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
        return switch_step(self.steps, self.shift, self.sampler, self.scheduler)

    def check(self) -> None:
        """Raise :class:`UserError` naming every value ComfyUI's nodes would refuse, and every choice that
        runs and gives the wrong video (experts or LoRAs swapped, a LoRA applied on top of its own merge,
        no high-noise step)."""
        bad = []
        doubled = []  # the experts given a LoRA they hold already
        if self.variant not in VARIANTS:
            bad.append(f"variant {self.variant!r} (use {' or '.join(VARIANTS)})")
        if self.end_image and self.variant != "fun-inp":
            bad.append("an end image needs the Fun-InP experts (--variant fun-inp)")
        for name, value in (("width", self.width), ("height", self.height)):
            if value < 16 or value > 16384 or value % 16:
                bad.append(f"{name} {value} (a multiple of 16 from 16 to 16384)")
        if not is_4n_plus_1(self.frames) or self.frames > MAX_FRAMES:
            bad.append(f"frames {self.frames} (4n+1 from 1 to {MAX_FRAMES - 3}, e.g. 81)")
        if not 2 <= self.steps <= MAX_STEPS:
            bad.append(f"steps {self.steps} (2 to {MAX_STEPS}: two experts need at least 2)")
        if not 0 <= self.cfg <= 100:
            bad.append(f"cfg {self.cfg} (0 to 100)")
        if not 0 < self.shift <= 100:
            bad.append(f"shift {self.shift} (above 0, at most 100)")
        if self.sampler not in SAMPLERS:
            bad.append(f"sampler {self.sampler!r}")
        if self.scheduler not in SCHEDULERS or self.scheduler not in SIGMA_SCHEDULERS:
            # the switch step comes from the scheduler's own sigmas: one not reproduced here has none
            bad.append(f"scheduler {self.scheduler!r} (one of {', '.join(s for s in SCHEDULERS if s in SIGMA_SCHEDULERS)})")
        elif not bad and self.switch == 0:  # the rest is valid, so the sigmas can be computed
            first = sampling_sigmas(self.sampler, self.scheduler, self.steps, self.shift)[0]
            bad.append(f"the {self.scheduler} schedule of {self.steps} steps at shift {self.shift:g} starts at sigma "
                       f"{first:.3f}, below the experts' boundary 0.9, so the high-noise expert would take no step "
                       "(more --steps, a larger --shift or another --scheduler)")
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
                bad += _file_problems(f"the {expert}-noise {what}", name, folder)
            if SHARD_NAME.match(Path(chain.model).name):  # UNETLoader loads one file as the whole model
                bad.append(f"{chain.model} is one shard of a sharded model (ComfyUI loads one whole file: "
                           "`circle-rotate merge SHARD -o ONE_FILE.safetensors --dtype fp16` writes one, and "
                           "merges a LoRA in with --lora)")
            for name, _ in chain.loras:
                # an error, not a warning: it runs, at twice the strength, and nothing in ComfyUI shows why;
                # twice on purpose has a clean way (below), as `merge` refuses a LoRA merged in already
                how = _already_merged(chain.model, name)
                if how:
                    bad.append(f"the {expert}-noise LoRA {name} is already merged into {chain.model} ({how}): "
                               "applied again it would count twice")
                    doubled.append(f"--strength-{expert}")
        for what, name, folder in (("the text encoder", self.text_encoder, "text_encoders"), ("the VAE", self.vae, "vae")):
            bad += _file_problems(what, name, folder)
        if bad:
            fix = "see `circle-rotate workflow --help` for each flag's range"
            if doubled:
                flags = "/".join(dict.fromkeys(doubled))
                fix = (f"leave the LoRAs out for merged experts (they carry them); for twice the effect on purpose, give "
                       f"the original expert with {flags} 2, or merge at {flags} 2; " + fix)
            raise UserError("the workflow would not run as meant: " + "; ".join(bad), fix=fix)


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
