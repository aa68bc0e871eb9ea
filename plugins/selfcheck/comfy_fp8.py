"""How a ComfyUI checkout took our scaled-fp8 experts, for ComfyUI 0.3.x and the versions with ``comfy/quant_ops.py``.

Both are read, not copied, from ComfyUI (GPL-3.0):

- 0.3.x (0.3.64 checked) sets ``model_config.scaled_fp8`` from the file's ``scaled_fp8`` marker,
  and applies a load-time LoRA by dividing by the *stored* ``scale_weight`` and rounding
  stochastically (:func:`circle_rotate.tools.merge.fp8_rounding.comfy_loadtime_lora` redoes it
  bit for bit).
- Newer ComfyUI runs ``comfy.utils.convert_old_quants`` first: the marker is consumed and each
  ``scale_weight`` becomes a per-layer ``weight_scale`` with a ``.comfy_quant`` entry, so
  ``scaled_fp8`` stays unset and ``model_detection`` sets ``quant_config`` (``{"mixed_ops": True}``;
  ``layer_quant_config`` in some releases between); each Linear holds its own ``quant_format``.
  A load-time LoRA goes through ``set_weight``, which requantizes with a *recalculated* scale
  (stochastic rounding), so only a tolerance can be checked against it: each element within
  one fp8 step of ``W + D``, and the LoRA's change applied once (unbiased rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple

import torch

FP8_FORMAT = "float8_e4m3fn"
_FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)
_MIN_STEP = 2.0 ** -9  # float8_e4m3fn's subnormal spacing, in units of the scale
#: allowed excess over one fp8 step: ComfyUI rounds to fp16 first and may dequantize to bf16
STEP_SLACK = 1.05
#: the fitted LoRA strength may differ from 1 by this much (rounding noise; 0.3.64 gives 1.002)
STRENGTH_TOLERANCE = 0.05


def fp8_detection(config: Any, layer_formats: Dict[str, Optional[str]]) -> Tuple[bool, str]:
    """Whether ComfyUI detected an expert as scaled float8_e4m3fn, in either shape its config takes.

    Args:
        config: the loaded model's ``model.model_config``.
        layer_formats: each Linear of the loaded diffusion model -> its ``quant_format`` (None where
            it has none; ComfyUI 0.3.x has none anywhere).

    Returns:
        ``(detected, words for the report)``: detected when ``config.scaled_fp8`` is float8_e4m3fn
        (0.3.x), or when ``quant_config`` (or ``layer_quant_config``) is set and every Linear is
        float8_e4m3fn (newer; our fp8_scaled files quantize every Linear).
    """
    scaled = getattr(config, "scaled_fp8", None)
    if scaled == torch.float8_e4m3fn:
        return True, f"scaled fp8 {scaled}"
    quant = getattr(config, "quant_config", None) or getattr(config, "layer_quant_config", None)
    if not quant:
        return False, f"scaled fp8 {scaled}, no quant_config"
    fp8 = sum(fmt == FP8_FORMAT for fmt in layer_formats.values())
    others = sorted({str(fmt) for fmt in layer_formats.values() if fmt != FP8_FORMAT})
    words = (f"quant_config {quant}, {fp8}/{len(layer_formats)} Linears {FP8_FORMAT}"
             + (f" (also {', '.join(others)})" if others else ""))
    return bool(layer_formats) and fp8 == len(layer_formats), words


def linear_formats(diffusion_model: torch.nn.Module) -> Dict[str, Optional[str]]:
    """Each Linear of a loaded ComfyUI diffusion model -> its ``quant_format`` (its mixed-precision
    Linear is not a ``torch.nn.Linear``, hence the class name)."""
    return {name: getattr(m, "quant_format", None) for name, m in diffusion_model.named_modules()
            if type(m).__name__ == "Linear"}


@dataclass(frozen=True)
class LoadtimeFit:
    """How ComfyUI's load-time LoRA weights sit against the exact ``W + D``, over all layers."""

    worst_step: float  # largest |theirs - (W + D)| in units of one fp8 step (<= 1 for any fp8 rounding)
    strength: float  # least-squares fit of theirs - W = strength * D (1: the LoRA applied once)
    layers: int

    @property
    def ok(self) -> bool:
        return self.worst_step <= STEP_SLACK and abs(self.strength - 1.0) <= STRENGTH_TOLERANCE


def loadtime_fit(layers: Iterable[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]) -> LoadtimeFit:
    """Fit ComfyUI's patched weights to the exact merge, whatever scale and rounding it used.

    Args:
        layers: per layer ``(theirs, base, delta, stored_scale)``: ComfyUI's patched weight
            dequantized, the base weight dequantized with its stored scale, the LoRA's change
            (``strength * alpha/rank * up @ down``) and that stored scale.

    Returns:
        The worst element error in fp8 steps and the fitted strength over all layers.
    """
    worst, dot, norm, count = 0.0, 0.0, 0.0, 0
    for theirs, base, delta, stored in layers:
        target = base.float() + delta.float()
        # a fresh scale (newer ComfyUI) or the stored one (0.3.x): the larger bounds both
        scale = torch.maximum(stored.float().reshape(()), target.abs().amax() / _FP8_MAX)
        # one step of e4m3 is at most |x| / 8 in the normal range, 2^-9 * scale below it
        step = torch.maximum(target.abs() / 8, _MIN_STEP * scale)
        worst = max(worst, float(((theirs.float() - target).abs() / step).max()))
        dot += float(((theirs.float() - base.float()) * delta.float()).sum())
        norm += float((delta.float() ** 2).sum())
        count += 1
    return LoadtimeFit(worst_step=worst, strength=dot / norm if norm else float("nan"), layers=count)
