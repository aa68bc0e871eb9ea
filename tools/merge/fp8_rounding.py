"""What ComfyUI does to an fp8 weight when it applies a LoRA at load time, as pure maths.

Reimplemented from reading ComfyUI 0.3.64 (GPL-3.0; read, not copied), to compare its load-time
LoRA with our pre-merged files on the same numbers (``plugins/selfcheck/bench_fp8_merge.py``):

- ``comfy/model_patcher.py`` ``patch_weight_to_device``: the stored weight is taken to fp32 and,
  for a scaled fp8 Linear, multiplied by its ``scale_weight`` (``convert_weight``); the LoRA adds
  ``(strength * alpha / rank) * (up @ down)`` in fp32 (``comfy/weight_adapter/lora.py``); the sum
  goes back through the layer's ``set_weight``: divided by the *stored* scale (no fresh one, so
  a merged value beyond ``448 * scale`` saturates) and stochastically rounded to fp8 with a seed
  that is the CRC-32 of the parameter's name.
- ``comfy/float.py`` ``stochastic_rounding``: the value is first rounded to fp16; each element's
  fp8 exponent is ``floor(log2 |x|)`` (clamped to the format's range, 0 meaning subnormal); its
  mantissa, in units of the fp8 spacing at that exponent, gets uniform noise in [0, 1) (drawn in
  fp16, rows in slices of about 4096 x 4096 elements from one generator) and is floored: rounding
  up with probability equal to the fraction. The result is clamped to the fp8 range.

Stochastic rounding is unbiased but noisier than round-to-nearest: its error variance per
element is ``f (1 - f) * spacing^2`` against at most ``spacing^2 / 4`` for nearest, about twice
as large on average.
"""

from __future__ import annotations

import zlib

import torch

FP8 = torch.float8_e4m3fn
_MANTISSA_BITS, _EXPONENT_BIAS, _EXPONENT_MAX = 3, 7, 15  # float8_e4m3fn
_SLICE_ELEMS = 4096 * 4096


def comfy_seed(name: str) -> int:
    """The seed ComfyUI gives a parameter's rounding: the CRC-32 of its name (e.g.
    ``diffusion_model.blocks.0.self_attn.q.weight``)."""
    return zlib.crc32(name.encode("utf-8"))


def _round_rows(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    h = x.half()
    magnitude = h.abs()
    sign = torch.where(magnitude == 0, torch.zeros_like(h), torch.sign(h))
    exponent = torch.clamp(torch.floor(torch.log2(magnitude)) + _EXPONENT_BIAS, 0, _EXPONENT_MAX)
    normal = exponent != 0
    steps = 2 ** _MANTISSA_BITS
    # the mantissa in fp8 spacings: (|x| / 2^e - 1) * 8 for normals, |x| / 2^(1 - bias - 3) below
    frac = torch.where(normal, (magnitude / 2.0 ** (exponent - _EXPONENT_BIAS) - 1.0) * steps,
                       magnitude / 2.0 ** (1 - _EXPONENT_BIAS - _MANTISSA_BITS))
    frac = frac + torch.rand(frac.shape, dtype=frac.dtype, generator=gen)
    mantissa = frac.floor() / steps
    value = torch.where(normal, 2.0 ** (exponent - _EXPONENT_BIAS) * (1.0 + mantissa),
                        2.0 ** (1 - _EXPONENT_BIAS) * mantissa)
    limit = float(torch.finfo(FP8).max)
    return (sign * value).clamp(-limit, limit)


def stochastic_round_fp8(x: torch.Tensor, *, seed: int) -> torch.Tensor:
    """``x`` rounded stochastically to float8_e4m3fn the way ComfyUI does it (see module doc)."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(x.shape, dtype=FP8)
    rows = x.shape[0]
    slices = max(1, x.numel() / _SLICE_ELEMS)
    step = max(1, round(rows / slices))
    for r in range(0, rows, step):
        out[r:r + step].copy_(_round_rows(x[r:r + step], gen))
    return out


def comfy_loadtime_lora(q: torch.Tensor, scale: torch.Tensor, delta: torch.Tensor, *, name: str) -> torch.Tensor:
    """The fp8 weight ComfyUI holds after applying ``delta`` (fp32, ``strength * alpha/rank * up @ down``)
    at load time to the scaled fp8 weight ``q`` (scale ``scale``) named ``name``; dequantize with the
    same ``scale``."""
    s = scale.float().reshape(())
    w = q.float() * s + delta.float()
    return stochastic_round_fp8(w / s, seed=comfy_seed(name))
