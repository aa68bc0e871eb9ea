"""fp8 weights as ComfyUI stores them: plain ``float8_e4m3fn`` and per-tensor *scaled* fp8.

Read from upstream ComfyUI (GPL-3.0; read, not copied):

- Legacy "fp8_scaled" checkpoints (``comfy/model_detection.py`` ``model_config_from_unet`` and
  ``comfy/utils.py`` ``convert_old_quants``): a marker tensor ``<prefix>scaled_fp8`` (its dtype
  is the fp8 dtype; 2 elements would mean full-precision matmul), each quantized Linear weight
  in fp8 with an fp32 ``<layer>.scale_weight`` (``comfy/ops.py`` ``scaled_fp8_ops``: the
  weight used is ``weight * scale_weight``), optionally ``<layer>.scale_input``. The marker
  carries the model prefix: ComfyUI strips ``model.diffusion_model.`` and drops keys outside
  it, so a bare ``scaled_fp8`` in a prefixed file is lost and the fp8 weights load unscaled.
- Newer "comfy_quant" checkpoints: ``<layer>.weight_scale`` (and ``.input_scale``) with a
  per-layer ``<layer>.comfy_quant`` uint8 JSON tensor (``{"format": "float8_e4m3fn"}``) or a
  ``_quantization_metadata`` JSON entry in the header metadata.

Everything here is maths on tensors plus header inspection; nothing writes files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Optional

import torch

from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.safetensors_io import read_tensor
from circle_rotate.kernel.shards import AnyHeader

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
MARKER = "scaled_fp8"
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")  # legacy, comfy_quant
AUX_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")
LEGACY_SCALE_SUFFIX = ".scale_weight"
INPUT_SCALE_SUFFIX = ".scale_input"  # legacy; ComfyUI divides the input by it before an fp8 matmul
#: comfy_quant formats whose weight is ``fp8 * scalar scale`` (the only ones we dequantize).
DEQUANTIZABLE = frozenset({"float8_e4m3fn", "float8_e5m2"})
_MIN_SCALE = 1e-12  # an all-zero weight still gets a finite, positive scale


def dequantize(q: torch.Tensor, scale: Optional[torch.Tensor]) -> torch.Tensor:
    """fp8 (scaled or plain) -> fp32 weight, as ComfyUI computes it (``weight * scale``)."""
    w = q.float()
    return w if scale is None else w * scale.float().reshape(())


def scale_from_max(max_abs: float, dtype: torch.dtype = FP8) -> torch.Tensor:
    """The per-tensor scale that maps ``max_abs`` onto the fp8 ``dtype``'s largest value (fp32 scalar)."""
    return (torch.tensor(max_abs, dtype=torch.float32) / float(torch.finfo(dtype).max)).clamp(min=_MIN_SCALE)


def quantize_into(out: torch.Tensor, work: torch.Tensor, scale: Optional[torch.Tensor]) -> torch.Tensor:
    """fp32 ``work`` -> the fp8 tensor ``out`` (same shape, its dtype), divided by ``scale`` first
    when given; saturates at the dtype's max (a plain cast would turn an out-of-range e4m3fn value
    into NaN). Returns ``out``.

    ``work`` is overwritten: the streaming merge quantizes its scratch buffer in place rather
    than allocating two temporaries per chunk.
    """
    if scale is not None:
        work.div_(scale.float().reshape(()))
    limit = float(torch.finfo(out.dtype).max)
    return out.copy_(work.clamp_(-limit, limit))


@dataclass(frozen=True)
class Fp8Layout:
    """Where a checkpoint keeps its fp8 scales (all keys are full base keys)."""

    marker_key: Optional[str] = None
    scale_of: Dict[str, str] = field(default_factory=dict)  # weight key -> its scale key
    formats: Dict[str, str] = field(default_factory=dict)  # weight key -> comfy_quant format
    aux_of: Dict[str, tuple] = field(default_factory=dict)  # weight key -> its input-scale/comfy_quant keys
    comfy_quant: bool = False

    @property
    def scaled(self) -> bool:
        return bool(self.scale_of)

    @property
    def side_keys(self) -> FrozenSet[str]:
        """Keys that only describe quantization (marker, scales, input scales, comfy_quant)."""
        keys = set(self.scale_of.values())
        for aux in self.aux_of.values():
            keys.update(aux)
        if self.marker_key:
            keys.add(self.marker_key)
        return frozenset(keys)


def _layer_formats(header: AnyHeader, comfy_quant_keys) -> Dict[str, str]:
    formats: Dict[str, str] = {}
    raw = header.metadata.get("_quantization_metadata")
    if raw:
        try:
            for layer, conf in json.loads(raw).get("layers", {}).items():
                formats[layer] = conf.get("format", "") if isinstance(conf, dict) else str(conf)
        except (ValueError, AttributeError):
            raise UserError("header metadata '_quantization_metadata' is not valid JSON", path=header.path,
                            fix="re-download the checkpoint") from None
    for key in comfy_quant_keys:  # a few bytes each
        try:
            conf = json.loads(bytes(read_tensor(header.header_of(key), key).tolist()).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise UserError(f"'{key}' is not a JSON quantization config", path=header.path,
                            fix="re-download the checkpoint") from None
        formats[key[: -len(".comfy_quant")]] = conf.get("format", "") if isinstance(conf, dict) else ""
    return formats


def fp8_layout(header: AnyHeader, prefix: str = "") -> Fp8Layout:
    """Find the fp8 marker and each quantized weight's scale and side tensors."""
    keys = set(header.keys())
    marker = next((k for k in (prefix + MARKER, MARKER) if k in keys), None)
    scale_of: Dict[str, str] = {}
    aux_of: Dict[str, list] = {}
    for key in keys:
        for suffix in SCALE_SUFFIXES:
            if key.endswith(suffix) and key[: -len(suffix)] + ".weight" in keys:
                scale_of[key[: -len(suffix)] + ".weight"] = key
        for suffix in AUX_SUFFIXES:
            if key.endswith(suffix) and key[: -len(suffix)] + ".weight" in keys:
                aux_of.setdefault(key[: -len(suffix)] + ".weight", []).append(key)
    cq_keys = [k for k in keys if k.endswith(".comfy_quant")]
    layer_formats = _layer_formats(header, cq_keys)
    formats = {layer + ".weight": fmt for layer, fmt in layer_formats.items() if layer + ".weight" in keys}
    for weight in scale_of:
        formats.setdefault(weight, "float8_e4m3fn" if header.tensors[weight].dtype == "F8_E4M3" else "float8_e5m2")
    return Fp8Layout(marker, scale_of, formats, {k: tuple(sorted(v)) for k, v in aux_of.items()},
                     comfy_quant=bool(cq_keys or "_quantization_metadata" in header.metadata))


def check_dequantizable(header: AnyHeader, layout: Fp8Layout, weight: str) -> Optional[str]:
    """Why ``weight`` cannot be turned back into real numbers here, or None when it can."""
    fmt = layout.formats.get(weight)
    if fmt is not None and fmt not in DEQUANTIZABLE:
        return f"'{weight}' is quantized as {fmt!r}"
    scale_key = layout.scale_of.get(weight)
    if scale_key is not None and header.tensors[scale_key].numel != 1:
        return f"'{scale_key}' is not a per-tensor scale (shape {list(header.tensors[scale_key].shape)})"
    if scale_key is None and fmt is not None and header.tensors[weight].dtype not in ("F8_E4M3", "F8_E5M2"):
        return f"'{weight}' is quantized ({fmt}) without a scale tensor"
    return None
