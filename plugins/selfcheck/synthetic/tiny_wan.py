"""Tiny (or partly real-sized) Wan2.2 DiT checkpoints with the real key names and dtypes.

Written one tensor at a time through :class:`circle_rotate.kernel.safetensors_io.SafetensorsWriter`,
so a benchmark checkpoint with a few real 14B-sized blocks (~0.7 GB each in fp16) never
sits in memory whole.

dtypes, as the files users download have them:

- ``fp32`` / ``fp16`` / ``bf16``: every tensor in that dtype (the Comfy-Org fp16 experts).
- ``fp8_e4m3fn``: the weights musubi's ``--fp8_scaled`` would quantize (block Linear
  weights, see :func:`circle_rotate.kernel.wan_arch.is_fp8_target`) stored as plain fp8 (no
  scale), everything else in ``rest_dtype``.
- ``fp8_scaled``: ComfyUI's scaled-fp8 layout (read in ComfyUI's ``comfy/model_detection.py``
  and ``comfy/ops.py``): a top-level ``scaled_fp8`` marker tensor, every Linear weight
  (:func:`circle_rotate.kernel.wan_arch.is_linear_weight`) in fp8_e4m3fn with a per-tensor fp32
  ``<layer>.scale_weight`` (weight = fp8 * scale) and ``<layer>.scale_input`` (1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple, Union

import torch

from circle_rotate.kernel.checkpoint_identity import EXPERT_METADATA_KEY
from circle_rotate.kernel.safetensors_io import SafetensorsWriter, iter_tensors, read_header
from circle_rotate.kernel.wan_arch import WanDiTConfig, dit_shapes, is_fp8_target, is_linear_weight, tiny_config

PathLike = Union[str, os.PathLike]
DTYPES = ("fp32", "fp16", "bf16", "fp8_e4m3fn", "fp8_scaled")
_TORCH = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448


def init_tensor(name: str, shape: Tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A plausible fp32 value for parameter ``name``: scaled normal weights, small biases,
    norm weights near 1, modulation as musubi initialises it (randn / sqrt(dim))."""
    if name.endswith("modulation"):
        return torch.randn(shape, generator=gen) / shape[-1] ** 0.5
    if "norm" in name and name.endswith(".weight"):
        return 1.0 + 0.05 * torch.randn(shape, generator=gen)
    if name.endswith(".bias"):
        return 0.02 * torch.randn(shape, generator=gen)
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    return torch.randn(shape, generator=gen) / max(fan_in, 1) ** 0.5


def quantize_fp8_scaled(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor scaled fp8: returns (fp8_e4m3fn weight, fp32 scalar scale), ``w ~= q * scale``."""
    w = w.float()
    scale = (w.abs().max() / FP8_MAX).clamp(min=1e-12)
    q = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale.reshape(()).to(torch.float32)


def _quantized(name: str, dtype: str) -> bool:
    """musubi's --fp8_base quantizes the block Linears; ComfyUI's fp8_scaled files every Linear."""
    return is_linear_weight(name) if dtype == "fp8_scaled" else is_fp8_target(name)


def _plan(cfg: WanDiTConfig, dtype: str, rest: torch.dtype) -> Dict[str, Tuple[torch.dtype, Tuple[int, ...]]]:
    specs: Dict[str, Tuple[torch.dtype, Tuple[int, ...]]] = {}
    if dtype == "fp8_scaled":
        specs["scaled_fp8"] = (torch.float8_e4m3fn, (0,))
    for name, shape in dit_shapes(cfg).items():
        if dtype in _TORCH:
            specs[name] = (_TORCH[dtype], shape)
        elif _quantized(name, dtype):
            specs[name] = (torch.float8_e4m3fn, shape)
            if dtype == "fp8_scaled":
                specs[name[: -len(".weight")] + ".scale_weight"] = (torch.float32, ())
                specs[name[: -len(".weight")] + ".scale_input"] = (torch.float32, ())
        else:
            specs[name] = (rest, shape)
    return specs


def tiny_wan_tensors(cfg: WanDiTConfig, dtype: str = "fp16", *, seed: int = 0, rest_dtype: str = "fp16") -> Iterator[
        Tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` of a random Wan DiT in checkpoint order (scale tensors after their weight)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    gen = torch.Generator().manual_seed(seed)
    rest = _TORCH[rest_dtype]
    if dtype == "fp8_scaled":
        yield "scaled_fp8", torch.empty(0, dtype=torch.float8_e4m3fn)
    for name, shape in dit_shapes(cfg).items():
        value = init_tensor(name, shape, gen)
        if dtype in _TORCH:
            yield name, value.to(_TORCH[dtype])
        elif not _quantized(name, dtype):
            yield name, value.to(rest)
        elif dtype == "fp8_e4m3fn":
            yield name, value.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        else:
            q, scale = quantize_fp8_scaled(value)
            yield name, q
            yield name[: -len(".weight")] + ".scale_weight", scale
            yield name[: -len(".weight")] + ".scale_input", torch.ones((), dtype=torch.float32)


def write_tiny_wan(path: PathLike, *, config: Optional[WanDiTConfig] = None, dtype: str = "fp16", seed: int = 0,
                   key_prefix: str = "", expert: Optional[str] = None, rest_dtype: str = "fp16",
                   metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write a random Wan DiT checkpoint with the real key names (atomically, one tensor at a time).

    Args:
        path: output ``.safetensors``.
        config: shapes (default: :func:`circle_rotate.kernel.wan_arch.tiny_config`); use
            ``wan_arch.I2V_A14B.with_layers(3)`` for real-sized blocks.
        dtype: one of ``fp32, fp16, bf16, fp8_e4m3fn, fp8_scaled``.
        seed: values are a function of the seed (two experts = two seeds).
        key_prefix: ``""`` (official/musubi) or ``"model.diffusion_model."`` (ComfyUI).
        expert: ``"high"``/``"low"`` to record in the metadata, or None (like real files).
        rest_dtype: dtype of the non-quantized tensors in fp8 files.
        metadata: extra ``__metadata__`` entries.

    Returns:
        The path written.
    """
    cfg = config or tiny_config()
    meta = dict(metadata or {})
    if expert is not None:
        meta[EXPERT_METADATA_KEY] = expert
    specs = {key_prefix + k: v for k, v in _plan(cfg, dtype, _TORCH[rest_dtype]).items()}
    with SafetensorsWriter(path, specs, metadata=meta or None) as writer:
        for name, tensor in tiny_wan_tensors(cfg, dtype, seed=seed, rest_dtype=rest_dtype):
            writer.write(key_prefix + name, tensor)
    return Path(path)


def write_release_shards(single: PathLike, folder: PathLike, *, shards: int = 6) -> Path:
    """``single``'s tensors stored as the official Wan2.2 release stores an expert, written by huggingface_hub (the
    writer of that layout): ``diffusion_pytorch_model-0000i-of-0000n.safetensors`` and its index, in ``folder``
    (about ``shards`` files; a tensor larger than a shard gets its own). Returns the first shard."""
    from huggingface_hub import save_torch_state_dict

    header = read_header(single)
    state = dict(iter_tensors(header))  # in file order, as a model's state_dict is
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_torch_state_dict(state, folder, filename_pattern="diffusion_pytorch_model{suffix}.safetensors",
                          max_shard_size=header.total_bytes // shards + 1)
    written = sorted(folder.glob("diffusion_pytorch_model-*.safetensors"))
    if len(written) < 2:
        raise ValueError(f"{single} did not split into shards")
    return written[0]
