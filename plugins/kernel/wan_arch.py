"""Wan2.2 I2V-A14B architecture facts, in one place.

Everything here was read from musubi-tuner 0.3.4's own source, and a CI test checks it
against musubi's ``WanModel`` (``tests/test_wan_arch.py``):

- ``wan/configs/wan_i2v_A14B.py`` / ``wan_t2v_A14B.py``: dim 5120, ffn_dim 13824, 40 heads,
  40 layers, freq_dim 256, patch (1, 2, 2), in_dim 36 (I2V: 16 noise + 4 mask + 16 image
  latent channels) or 16 (T2V), out_dim 16, text_len 512, boundary 0.900 (I2V) / 0.875 (T2V).
- ``wan/modules/model.py``: ``WanModel`` parameter names. Wan2.2 uses the plain cross
  attention (no ``k_img``/``v_img``, no ``img_emb``) even for I2V; ``norm1``/``norm2`` have no
  parameters; ``freqs`` is a plain attribute, not a buffer, so it is not in a checkpoint.
- ``wan/modules/vae.py``: the Wan2.1 VAE (used by both A14B experts) has ``z_dim=16`` and
  stride (4, 8, 8): T frames become 1 + (T - 1) / 4 latent frames.
- ``networks/lora_wan.py``: LoRA wraps every ``nn.Linear`` inside ``WanAttentionBlock``
  except names matching ``.*(patch_embedding|text_embedding|time_embedding|time_projection|norm|head).*``,
  named ``lora_unet_`` + module path with dots replaced by underscores.
- ``FP8_OPTIMIZATION_TARGET_KEYS``/``EXCLUDE_KEYS``: what ``--fp8_scaled`` quantizes: weights
  under ``blocks`` except norms and modulation.

The high- and low-noise experts have identical keys, shapes and dtypes; only their values
differ. See :mod:`circle_rotate.kernel.checkpoint_identity` for what can be told from a header.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Dict, Tuple

Shape = Tuple[int, ...]

#: Prefix ComfyUI's repackaged / saved Wan checkpoints may carry.
COMFY_PREFIX = "model.diffusion_model."

#: musubi-tuner's sd-scripts style LoRA module prefix.
MUSUBI_LORA_PREFIX = "lora_unet_"

#: Linear layers in each ``WanAttentionBlock`` that ``networks.lora_wan`` wraps (Wan2.2).
LORA_TARGETS_IN_BLOCK: Tuple[str, ...] = (
    "self_attn.q",
    "self_attn.k",
    "self_attn.v",
    "self_attn.o",
    "cross_attn.q",
    "cross_attn.k",
    "cross_attn.v",
    "cross_attn.o",
    "ffn.0",
    "ffn.2",
)

#: musubi's default exclusion applied to module paths inside a block (``fullmatch``).
LORA_EXCLUDE_PATTERN = re.compile(r".*(patch_embedding|text_embedding|time_embedding|time_projection|norm|head).*")

#: What musubi's ``--fp8_scaled`` quantizes (substring tests on the key), from model.py.
FP8_TARGET_KEYS: Tuple[str, ...] = ("blocks",)
FP8_EXCLUDE_KEYS: Tuple[str, ...] = (
    "norm", "patch_embedding", "text_embedding", "time_embedding", "time_projection", "head", "modulation", "img_emb",
)

VAE_STRIDE: Tuple[int, int, int] = (4, 8, 8)  # (time, height, width)
VAE_LATENT_CHANNELS = 16
#: Wan2.2 I2V conditions on 4 mask channels + the 16 image-latent channels.
I2V_EXTRA_CHANNELS = 4 + VAE_LATENT_CHANNELS

#: Timestep (0-1000 scale) at which Wan2.2 hands over from the high- to the low-noise expert.
BOUNDARY_I2V = 900
BOUNDARY_T2V = 875

#: Wan2.2 generates at 16 fps; 81 frames (5 s + 1) is its native length.
NATIVE_FPS = 16
NATIVE_FRAMES = 81


@dataclass(frozen=True)
class WanDiTConfig:
    """Shape parameters of a Wan DiT (one expert). Defaults are Wan2.2 I2V-A14B."""

    dim: int = 5120
    ffn_dim: int = 13824
    num_heads: int = 40
    num_layers: int = 40
    in_dim: int = 36
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: Tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    qk_norm: bool = True
    cross_attn_norm: bool = True
    model_version: str = "2.2"

    @property
    def i2v(self) -> bool:
        return self.in_dim == 16 + I2V_EXTRA_CHANNELS

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def with_layers(self, num_layers: int) -> "WanDiTConfig":
        """The same widths with another number of blocks (e.g. a few real-sized blocks)."""
        return dataclasses.replace(self, num_layers=num_layers)

    def validate(self) -> None:
        """Raise ``ValueError`` for a shape musubi's ``WanModel`` would reject."""
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"dim {self.dim} must split into {self.num_heads} heads of even size")
        if self.model_version not in ("2.1", "2.2"):
            raise ValueError(f"model_version must be '2.1' or '2.2', not {self.model_version!r}")


I2V_A14B = WanDiTConfig()
#: musubi-tuner swaps at most all but one of a DiT's blocks to the CPU (it asserts so).
MAX_BLOCKS_TO_SWAP = I2V_A14B.num_layers - 1
T2V_A14B = WanDiTConfig(in_dim=16)


def tiny_config(*, dim: int = 64, num_layers: int = 2, num_heads: int = 4, ffn_dim: int = 172, i2v: bool = True) -> WanDiTConfig:
    """A small Wan2.2-shaped config for tests (text_dim stays 4096, as the T5 output does)."""
    cfg = WanDiTConfig(dim=dim, ffn_dim=ffn_dim, num_heads=num_heads, num_layers=num_layers,
                       in_dim=36 if i2v else 16)
    cfg.validate()
    return cfg


def _linear(name: str, fan_out: int, fan_in: int) -> Dict[str, Shape]:
    return {f"{name}.weight": (fan_out, fan_in), f"{name}.bias": (fan_out,)}


def block_shapes(cfg: WanDiTConfig, index: int) -> Dict[str, Shape]:
    """Parameter names and shapes of ``blocks.<index>``, in ``WanModel.state_dict()`` order."""
    p = f"blocks.{index}."
    d = cfg.dim
    # A module's own parameters come before its children's in state_dict(): modulation first.
    out: Dict[str, Shape] = {p + "modulation": (1, 6, d)}
    for attn in ("self_attn", "cross_attn"):
        if attn == "cross_attn" and cfg.cross_attn_norm:
            out[p + "norm3.weight"] = (d,)
            out[p + "norm3.bias"] = (d,)
        for proj in ("q", "k", "v", "o"):
            out.update(_linear(f"{p}{attn}.{proj}", d, d))
        if cfg.qk_norm:
            out[f"{p}{attn}.norm_q.weight"] = (d,)
            out[f"{p}{attn}.norm_k.weight"] = (d,)
        if attn == "cross_attn" and cfg.model_version == "2.1" and cfg.i2v:  # WanI2VCrossAttention
            out.update(_linear(f"{p}{attn}.k_img", d, d))
            out.update(_linear(f"{p}{attn}.v_img", d, d))
            if cfg.qk_norm:
                out[f"{p}{attn}.norm_k_img.weight"] = (d,)
    out.update(_linear(p + "ffn.0", cfg.ffn_dim, d))
    out.update(_linear(p + "ffn.2", d, cfg.ffn_dim))
    return out


def dit_shapes(cfg: WanDiTConfig) -> Dict[str, Shape]:
    """Every parameter name of a Wan DiT checkpoint (no prefix) with its shape."""
    cfg.validate()
    d = cfg.dim
    out: Dict[str, Shape] = {}
    out["patch_embedding.weight"] = (d, cfg.in_dim, *cfg.patch_size)
    out["patch_embedding.bias"] = (d,)
    out.update(_linear("text_embedding.0", d, cfg.text_dim))
    out.update(_linear("text_embedding.2", d, d))
    out.update(_linear("time_embedding.0", d, cfg.freq_dim))
    out.update(_linear("time_embedding.2", d, d))
    out.update(_linear("time_projection.1", 6 * d, d))
    for i in range(cfg.num_layers):
        out.update(block_shapes(cfg, i))
    patch_volume = cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
    out["head.modulation"] = (1, 2, d)
    out.update(_linear("head.head", patch_volume * cfg.out_dim, d))
    if cfg.model_version == "2.1" and cfg.i2v:
        out.update({"img_emb.proj.0.weight": (1280,), "img_emb.proj.0.bias": (1280,)})
        out.update(_linear("img_emb.proj.1", 1280, 1280))
        out.update(_linear("img_emb.proj.3", d, 1280))
        out.update({"img_emb.proj.4.weight": (d,), "img_emb.proj.4.bias": (d,)})
    return out


def lora_target_modules(cfg: WanDiTConfig) -> Tuple[str, ...]:
    """Module paths (``blocks.N.self_attn.q`` ...) that musubi's ``networks.lora_wan`` wraps."""
    targets = list(LORA_TARGETS_IN_BLOCK)
    if cfg.model_version == "2.1" and cfg.i2v:
        targets += ["cross_attn.k_img", "cross_attn.v_img"]
    return tuple(f"blocks.{i}.{t}" for i in range(cfg.num_layers) for t in targets)


def musubi_lora_name(module_path: str) -> str:
    """``blocks.0.self_attn.q`` -> ``lora_unet_blocks_0_self_attn_q`` (musubi / sd-scripts naming)."""
    return MUSUBI_LORA_PREFIX + module_path.replace(".", "_")


def is_fp8_target(key: str) -> bool:
    """Whether musubi's ``--fp8_scaled`` (and ComfyUI fp8_scaled files) quantize this weight."""
    return (
        key.endswith(".weight")
        and any(t in key for t in FP8_TARGET_KEYS)
        and not any(x in key for x in FP8_EXCLUDE_KEYS)
    )


#: Every ``nn.Linear`` weight of ComfyUI's ``WanModel`` (``comfy/ldm/wan/model.py``): under a
#: scaled-fp8 checkpoint ComfyUI builds each of them as a scaled fp8 Linear, so each needs an fp8
#: weight and its ``.scale_weight``; one left in fp16 is narrowed to fp8 unscaled at load and
#: logged as ``unet missing``. ``patch_embedding`` is a Conv3d and the norms are not Linear.
LINEAR_WEIGHT = re.compile(
    r"(text_embedding\.[02]|time_embedding\.[02]|time_projection\.1|head\.head|img_emb\.proj\.[13]"
    r"|blocks\.\d+\.(self_attn|cross_attn)\.(q|k|v|o|k_img|v_img)|blocks\.\d+\.ffn\.[02])\.weight")


def is_linear_weight(key: str) -> bool:
    """Whether ``key`` (no prefix) is the weight of a Linear layer: what ComfyUI's fp8_scaled quantizes."""
    return LINEAR_WEIGHT.fullmatch(key) is not None


def latent_frames(frames: int) -> int:
    """Latent frames the VAE makes of ``frames`` pixel frames (``frames`` must be 4n+1)."""
    if frames < 1 or (frames - 1) % VAE_STRIDE[0]:
        raise ValueError(f"{frames} frames is not of the form 4n+1")
    return 1 + (frames - 1) // VAE_STRIDE[0]


def is_4n_plus_1(frames: int) -> bool:
    return frames >= 1 and (frames - 1) % VAE_STRIDE[0] == 0
