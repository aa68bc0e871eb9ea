"""Random Wan LoRAs with the real module names (and whole-tensor differences), for tests and the merge benchmark."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, Optional, Union

import torch

from circle_rotate.kernel.wan_arch import WanDiTConfig, dit_shapes, lora_target_modules
from circle_rotate.tools.lora.files import LoraModule, write_lora

PathLike = Union[str, os.PathLike]


def random_lora_modules(cfg: WanDiTConfig, *, rank: int = 4, alpha: float = 1.0, seed: int = 0,
                        dtype: torch.dtype = torch.bfloat16, modules: Optional[Iterable[str]] = None,
                        up_std: float = 0.02) -> Dict[str, LoraModule]:
    """A LoRA over ``modules`` (default: every musubi target of ``cfg``) with a nonzero ``up``.

    ``down`` is scaled like kaiming init; ``up`` is nonzero (a freshly initialised LoRA has
    ``up == 0`` and merges to nothing, which would test nothing).
    """
    shapes = dit_shapes(cfg)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for module in (modules if modules is not None else lora_target_modules(cfg)):
        out_f, in_f = shapes[module + ".weight"][:2]
        down = torch.randn(rank, in_f, generator=gen) / in_f ** 0.5
        up = torch.randn(out_f, rank, generator=gen) * up_std
        out[module] = LoraModule(module, down.to(dtype), up.to(dtype), float(alpha))
    return out


def write_random_lora(path: PathLike, cfg: WanDiTConfig, *, fmt: str = "musubi", metadata: Optional[Dict[str, str]] = None,
                      diffs: bool = False, **kwargs) -> Path:
    """Write :func:`random_lora_modules` as a LoRA file in layout ``fmt``; with ``diffs``, also
    :func:`random_diffs` (as the lightx2v LoRAs carry; ``fmt`` "comfy" names every one)."""
    extra = random_diffs(cfg, seed=kwargs.get("seed", 0)) if diffs else None
    return write_lora(path, random_lora_modules(cfg, **kwargs), fmt=fmt, metadata=metadata, diffs=extra)


def random_diffs(cfg: WanDiTConfig, *, seed: int = 0, dtype: torch.dtype = torch.bfloat16, std: float = 0.01,
                 params: Optional[Iterable[str]] = None) -> Dict[str, torch.Tensor]:
    """Whole-tensor differences by Wan parameter, shaped like ``cfg``'s: by default what the
    lightx2v LoRAs carry beside their pairs (every norm weight, every bias, every modulation)."""
    shapes = dit_shapes(cfg)
    if params is None:
        params = [p for p in shapes if ".norm" in p or p.endswith((".bias", "modulation"))]
    gen = torch.Generator().manual_seed(seed)
    return {p: (torch.randn(shapes[p], generator=gen) * std).to(dtype) for p in params}
