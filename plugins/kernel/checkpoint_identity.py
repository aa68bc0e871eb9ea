"""What a Wan checkpoint is, told from its safetensors header alone (no weights read).

What the header can and cannot tell (the facts are in :mod:`circle_rotate.kernel.wan_arch`):

- I2V vs T2V: ``patch_embedding.weight`` has 36 input channels for I2V, 16 for T2V.
- Wan2.1 vs Wan2.2: Wan2.1 I2V-14B has ``img_emb.*`` and ``cross_attn.k_img``; Wan2.2 I2V-A14B
  has neither. Wan2.1 T2V-14B and Wan2.2 T2V-A14B have identical shapes ("wan-14b").
- dtype: the dtype of the block Linear weights; ``fp8_scaled`` when ComfyUI's ``scaled_fp8``
  marker or ``*.scale_weight`` / ``*.weight_scale`` tensors are present (musubi cannot train
  on those; see its docs/wan.md support matrix).
- Key prefix: ``model.diffusion_model.`` (ComfyUI) or none (official, musubi).
- Key layout: Wan's own names, or Diffusers' (``Wan-AI/Wan2.2-I2V-A14B-Diffusers``, from diffusers'
  ``convert_wan_to_diffusers.py``: ``blocks.N.attn1.to_q``, ``condition_embedder.*``), which neither
  musubi-tuner nor a LoRA in Wan's names can use. ``patch_embedding`` keeps its name in both.
- High- vs low-noise expert: the two have the same keys, shapes and dtypes, so the header's
  tensor table cannot tell them apart. We use, in order: ``__metadata__`` (our own outputs
  write ``circle_rotate.expert``; ``modelspec.title`` and similar text fields are searched for
  "high noise"/"low noise"), then the file or folder name (``high_noise``/``low_noise`` as in
  ``wan2.2_i2v_high_noise_14B_fp16.safetensors`` and the official ``high_noise_model/`` folder).
  The evidence used is reported, so a caller can say how sure it is.
- Wan2.2 I2V vs Fun-InP (inpaint): same keys and shapes (36 input channels: noise, 4 mask and 16
  conditioning-latent channels), and ComfyUI 0.3.64 detects both the same way (``WAN21_T2V``
  with ``in_dim`` 36; the conditioning node, ``WanImageToVideo`` or ``WanFunInpaintToVideo``,
  makes the difference). So ``variant`` is told like the expert: our ``circle_rotate.variant``
  metadata, then ``fun_inpaint`` in the name as Comfy-Org names them
  (``wan2.2_fun_inpaint_high_noise_14B_fp8_scaled.safetensors``); an I2V-shaped file without
  either is ``i2v``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional

from circle_rotate.kernel.expert_names import expert_from_text
from circle_rotate.kernel.shards import AnyHeader
from circle_rotate.kernel.wan_arch import COMFY_PREFIX, I2V_EXTRA_CHANNELS, VAE_LATENT_CHANNELS

#: Metadata key our own writers set to record which expert a file belongs to.
EXPERT_METADATA_KEY = "circle_rotate.expert"
#: ... and which Wan2.2 14B I2V-shaped model it is ("i2v" or "fun-inp").
VARIANT_METADATA_KEY = "circle_rotate.variant"
# "fun_inpaint" (Comfy-Org), "Fun-A14B-InP" (VideoX-Fun), "fun-inp"; not "fun_input".
_FUN_INP_TEXT = re.compile(r"fun[ _\-]?(?:a14b[ _\-]?)?inp(?:aint)?(?![a-z])", re.IGNORECASE)

_DTYPE_LABEL = {"F16": "fp16", "BF16": "bf16", "F32": "fp32", "F8_E4M3": "fp8_e4m3fn", "F8_E5M2": "fp8_e5m2"}

#: What to say of a Diffusers-layout expert where Wan's own key names are needed, and what to use instead.
DIFFUSERS_LAYOUT = ("is a Diffusers-format Wan transformer (blocks.N.attn1.to_q, condition_embedder.*); musubi-tuner "
                    "loads Wan's own key names (blocks.N.self_attn.q)")
WAN_LAYOUT_SOURCES = ("wan2.2_i2v_{high,low}_noise_14B_fp16.safetensors (circle-rotate download models) or the "
                      "shards in Wan-AI/Wan2.2-I2V-A14B's high_noise_model/ and low_noise_model/")
DIFFUSERS_FIX = ("write it in Wan's layout with circle-rotate merge FOLDER -o OUT.safetensors --dtype bf16 (transformer/ "
                 "is the high-noise expert, transformer_2/ the low-noise one), or use " + WAN_LAYOUT_SOURCES)
#: Diffusers' WanImageToVideoPipeline folder of each Wan2.2 expert (it runs transformer above the boundary).
_DIFFUSERS_EXPERT_FOLDER = {"transformer": "high", "transformer_2": "low"}

# Keys only Diffusers' WanTransformer3DModel has.
_DIFFUSERS_KEY = re.compile(r"blocks\.\d+\.attn1\.to_q\.weight$|condition_embedder\.")

@dataclass(frozen=True)
class CheckpointIdentity:
    """What a DiT checkpoint is. ``expert_evidence`` says how the expert was told."""

    path: str
    family: str  # "wan2.2-a14b", "wan2.1-14b", "wan-14b" (2.1 or 2.2, T2V), "wan2.1-1.3b", "wan2.2-5b", "unknown"
    task: str  # "i2v", "t2v", "unknown"
    expert: Optional[str]  # "high", "low" or None when nothing says
    expert_evidence: Optional[str]  # "metadata", "filename" or None
    dtype: str  # "fp16", "bf16", "fp32", "fp8_e4m3fn", "fp8_scaled", "mixed", "unknown"
    key_prefix: str  # "" or "model.diffusion_model."
    dim: Optional[int]
    num_layers: int
    in_dim: Optional[int]
    variant: Optional[str] = None  # "i2v" or "fun-inp" for I2V-shaped Wan2.2 14B files, else None
    layout: str = "wan"  # key names: "wan" (Wan's own, as ComfyUI and musubi load them) or "diffusers"

    @property
    def is_wan(self) -> bool:
        return self.family != "unknown"

    @property
    def trainable_by_musubi(self) -> bool:
        """musubi-tuner trains on fp16/bf16 (and plain fp8_e4m3fn with --fp8_base), never fp8_scaled."""
        return self.dtype in ("fp16", "bf16", "fp32", "fp8_e4m3fn")

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def expert_from_metadata(metadata: Dict[str, str]) -> Optional[str]:
    value = metadata.get(EXPERT_METADATA_KEY, "").strip().lower()
    if value in ("high", "low"):
        return value
    for key in ("modelspec.title", "modelspec.description", "modelspec.architecture", "ss_output_name", "title"):
        found = expert_from_text(metadata.get(key, ""))
        if found:
            return found
    return None


def expert_from_path(path: Path, *, two_experts: bool = True) -> Optional[str]:
    """Expert named by the file name, else by its folder (official ``high_noise_model/``, or, for a model that has
    two experts, the Diffusers release's ``transformer/`` and ``transformer_2/`` holding its
    ``diffusion_pytorch_model`` files: a Wan2.1 Diffusers release has one ``transformer/`` and no expert)."""
    found = expert_from_text(path.name) or expert_from_text(path.parent.name)
    if found is None and two_experts and path.name.startswith("diffusion_pytorch_model"):
        found = _DIFFUSERS_EXPERT_FOLDER.get(path.parent.name)
    return found


def variant_of(metadata: Dict[str, str], path: Path) -> str:
    """``fun-inp`` or ``i2v`` for an I2V-shaped Wan2.2 file: metadata first, then the file name (or the
    model folder above the official ``high_noise_model/``; other folder names say nothing)."""
    value = metadata.get(VARIANT_METADATA_KEY, "").strip().lower()
    if value in ("i2v", "fun-inp"):
        return value
    names = [path.name]
    if expert_from_text(path.parent.name) and path.parent.name.endswith("_model"):  # the official high_noise_model/
        names.append(path.parent.parent.name)
    return "fun-inp" if any(_FUN_INP_TEXT.search(n) for n in names) else "i2v"


def _strip_prefix(keys) -> tuple[str, Dict[str, str]]:
    keys = list(keys)
    if keys and sum(k.startswith(COMFY_PREFIX) for k in keys) * 2 > len(keys):
        return COMFY_PREFIX, {k[len(COMFY_PREFIX):]: k for k in keys if k.startswith(COMFY_PREFIX)}
    return "", {k: k for k in keys}


def _dtype_label(header: AnyHeader, plain: Dict[str, str]) -> str:
    if "scaled_fp8" in plain or any(k.endswith((".scale_weight", ".weight_scale")) for k in plain):
        return "fp8_scaled"
    weights = [header.tensors[full].dtype for k, full in plain.items()
               if k.startswith("blocks.") and k.endswith(".weight") and len(header.tensors[full].shape) == 2]
    kinds = set(weights)
    if not kinds:
        return "unknown"
    if len(kinds) > 1:
        return "mixed"
    return _DTYPE_LABEL.get(kinds.pop(), "unknown")


def identify_checkpoint(header: AnyHeader) -> CheckpointIdentity:
    """Identify a DiT checkpoint from its header; ``family == 'unknown'`` when it is not a Wan DiT."""
    prefix, plain = _strip_prefix(header.keys())
    layers = {int(m.group(1)) for k in plain if (m := re.match(r"blocks\.(\d+)\.", k))}
    num_layers = max(layers) + 1 if layers else 0
    patch = header.tensors.get(plain.get("patch_embedding.weight", ""), None)
    dim = patch.shape[0] if patch is not None else None
    in_dim = patch.shape[1] if patch is not None and len(patch.shape) > 1 else None

    if patch is None or num_layers == 0:
        family, task = "unknown", "unknown"
    else:
        has_img = any(k in plain for k in ("img_emb.proj.1.weight", "blocks.0.cross_attn.k_img.weight",
                                           "blocks.0.attn2.add_k_proj.weight"))  # the last: Diffusers' name
        if in_dim == 16 + I2V_EXTRA_CHANNELS:
            task = "i2v"
        elif in_dim == VAE_LATENT_CHANNELS:
            task = "t2v"
        else:
            task = "unknown"
        if dim == 5120 and task == "i2v":
            family = "wan2.1-14b" if has_img else "wan2.2-a14b"
        elif dim == 5120 and task == "t2v":
            family = "wan-14b"
        elif dim == 1536:
            family = "wan2.1-1.3b"
        elif dim == 3072 and in_dim == 48:
            family, task = "wan2.2-5b", "ti2v"
        else:
            family = "wan2.2-a14b" if not has_img else "wan2.1-14b"  # small test models keep the layout

    expert = expert_from_metadata(header.metadata)
    evidence = "metadata" if expert else None
    if expert is None:
        expert = expert_from_path(header.path, two_experts=family == "wan2.2-a14b")
        evidence = "filename" if expert else None
    return CheckpointIdentity(
        path=str(header.path), family=family, task=task, expert=expert, expert_evidence=evidence,
        dtype=_dtype_label(header, plain), key_prefix=prefix, dim=dim, num_layers=num_layers, in_dim=in_dim,
        variant=variant_of(header.metadata, header.path) if family == "wan2.2-a14b" and task == "i2v" else None,
        layout="diffusers" if any(_DIFFUSERS_KEY.match(k) for k in plain) else "wan",
    )
