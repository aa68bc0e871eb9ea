"""What a merge will write, decided from headers alone: every output tensor and where it comes from.

:func:`plan_merge` checks that each LoRA fits the base (every module has a weight of the right
shape; a LoRA for another model, or a shape mismatch, is an error naming the key) and decides,
for each base tensor, one of:

- ``raw``: copied byte for byte (untouched and already in the output representation);
- ``compute``: decoded (fp8 dequantized with its scale), LoRA deltas added in fp32, encoded
  (cast, plain fp8, or per-tensor scaled fp8 with a fresh scale);
- ``scale`` / ``marker`` / ``const``: the fp8 side tensors a scaled output needs (a fresh
  ``.scale_weight``; the ``scaled_fp8`` marker; ``.scale_input`` = 1).

An fp8_scaled output has ComfyUI's own layout: every Linear weight (block projections and FFNs,
and the text/time embeddings, time projection and head, see :func:`circle_rotate.kernel.wan_arch.is_linear_weight`)
in float8_e4m3fn with an fp32 scalar ``.scale_weight`` and ``.scale_input``, and the
``scaled_fp8`` marker (0 elements). ComfyUI builds every Linear of a model with that marker as
a scaled fp8 Linear with both scales as parameters (``comfy/ops.py``; a 2-element marker would
drop ``scale_input``), so a Linear without them loads narrowed to fp8 unscaled and is logged as
``unet missing``. An input scale of 1 is what ComfyUI assumes when there is none.

No key is dropped except fp8 side tensors (scales, ``scaled_fp8`` marker, input scales,
``comfy_quant``) when the output stops being fp8, and nothing is ever dropped silently: the plan
lists them in ``dropped``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from circle_rotate.kernel.checkpoint_identity import EXPERT_METADATA_KEY, VARIANT_METADATA_KEY, CheckpointIdentity
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.safetensors_io import DTYPES
from circle_rotate.kernel.shards import AnyHeader
from circle_rotate.tools.merge.provenance import MERGED_LORAS_KEY, merged_history
from circle_rotate.kernel.wan_arch import is_fp8_target, is_linear_weight
from circle_rotate.tools.lora.files import LoraIndex
from circle_rotate.tools.lora.lycoris import LABELS
from circle_rotate.tools.merge.fp8 import FP8, INPUT_SCALE_SUFFIX, LEGACY_SCALE_SUFFIX, MARKER, Fp8Layout, check_dequantizable
from circle_rotate.tools.option_values import FLOAT_DTYPES, MERGE_DTYPES

_TORCH = {name: DTYPES[code] for name, code in FLOAT_DTYPES.items()}
_FLOAT = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_FP8 = {"F8_E4M3", "F8_E5M2"}


@dataclass(frozen=True)
class BaseInfo:
    """The base expert as read once: its header, what it is, and where it keeps its fp8 scales."""

    header: AnyHeader
    identity: CheckpointIdentity
    layout: Fp8Layout


@dataclass(frozen=True)
class LoraSource:
    """One LoRA to merge: its index, the user's strength, each module's ``alpha / rank`` and the sketch of
    its delta that the output's record keeps (:mod:`circle_rotate.tools.merge.delta_sketch`; None: none kept)."""

    index: LoraIndex
    strength: float
    scales: Dict[str, float]
    sketch: Optional[List[float]] = None


@dataclass(frozen=True)
class Delta:
    """One change to a base tensor from LoRA number ``lora``, by ``kind``: ``factor * up @ down`` of
    module ``module`` ("lora"); ``factor`` times its LoHa or LoKr delta ("loha", "lokr",
    :mod:`circle_rotate.tools.lora.lycoris`); ``factor`` times its whole-tensor difference of
    parameter ``module`` ("diff")."""

    lora: int
    module: str  # a module path, or for a "diff" a parameter path
    factor: float  # strength * alpha / rank (LoHa/LoKr: strength * their scale); strength for a difference
    kind: str = "lora"


@dataclass(frozen=True)
class OutTensor:
    """One tensor of the output and how to produce it."""

    key: str
    dtype: torch.dtype
    shape: Tuple[int, ...]
    kind: str  # "raw", "compute", "scale", "marker", "const"
    src: Optional[str] = None  # base key read by raw/compute
    src_scale: Optional[str] = None  # base scale that dequantizes ``src``
    deltas: Tuple[Delta, ...] = ()
    encode: str = "cast"  # compute: "cast", "fp8" (plain) or "fp8_scaled"
    scale_key: Optional[str] = None  # fp8_scaled compute: the output key of its scale
    weight_key: Optional[str] = None  # scale: the output weight it scales
    value: float = 0.0  # const: every element's value


@dataclass(frozen=True)
class MergePlan:
    base: AnyHeader
    identity: CheckpointIdentity
    loras: Tuple[LoraSource, ...]
    dtype: str
    tensors: Tuple[OutTensor, ...]
    metadata: Dict[str, str]
    dropped: Tuple[str, ...] = ()
    applied: Tuple[int, ...] = field(default_factory=tuple)  # modules (LoRA, LoHa, LoKr) merged per LoRA
    applied_diffs: Tuple[int, ...] = field(default_factory=tuple)  # whole-tensor differences added per LoRA
    skipped: Tuple[Tuple[str, ...], ...] = field(default_factory=tuple)  # per LoRA: keys left out (--skip-absent)

    def count(self, kind: str) -> int:
        return sum(t.kind == kind for t in self.tensors)

    @property
    def output_bytes(self) -> int:
        return sum(torch.tensor([], dtype=t.dtype).element_size() * math.prod(t.shape) for t in self.tensors)


#: Wan2.1 I2V's image-embedding (CLIP) layers: a Wan2.1 I2V LoRA has them, Wan2.2 has none.
_WAN21_IMAGE = re.compile(r"(^|\.)(k_img|v_img|norm_k_img|img_emb)(\.|$)")


def _deltas(header: AnyHeader, prefix: str, loras: Sequence[LoraSource], skip_absent: bool = False
            ) -> Tuple[Dict[str, List[Delta]], Tuple[Tuple[str, ...], ...]]:
    """(base weight key -> its deltas, the LoRA keys left out of each LoRA); raises once for every LoRA
    that does not fit. ``skip_absent`` leaves out modules and differences the base has no tensor for,
    as ComfyUI's loader does ("lora key not loaded"), unless that is all of them."""
    out: Dict[str, List[Delta]] = {}
    errors: List[str] = []
    skipped: List[Tuple[str, ...]] = []
    skippable = True  # every error is modules absent from the base, which --skip-absent would leave out
    for i, src in enumerate(loras):
        index = src.index
        missing: List[Tuple[str, str, str]] = []  # (LoRA key, Wan module or parameter, why)
        mismatched: List[str] = []
        for param, diff in index.diffs.items():  # whole-tensor differences: param += strength * diff
            key = prefix + param
            base = header.tensors.get(key)
            if base is None:
                missing.append((diff.key, param, f"'{diff.key}' (no '{key}' in the base)"))
            elif tuple(base.shape) != tuple(diff.shape):
                mismatched.append(f"'{diff.key}' is {list(diff.shape)} but '{key}' is {list(base.shape)}")
            else:
                out.setdefault(key, []).append(Delta(i, param, src.strength, kind="diff"))
        changes = [(module, info.down_key, f"'{info.up_key}'/'{info.down_key}'", (info.out_features, info.in_features),
                    Delta(i, module, src.strength * src.scales[module])) for module, info in index.modules.items()]
        changes += [(module, next(iter(info.keys.values())), f"{LABELS[info.kind]} module '{module}'", info.delta_shape,
                     Delta(i, module, src.strength * info.scale, kind=info.kind)) for module, info in index.products.items()]
        for module, first_key, named, (rows, cols), delta in changes:
            key = prefix + module + ".weight"
            base = header.tensors.get(key)
            if base is None:
                missing.append((first_key, module, f"'{first_key}' (no '{key}' in the base)"))
                continue
            if base.shape[0] != rows or math.prod(base.shape[1:]) != cols:
                mismatched.append(f"{named}: a [{rows}, {cols}] delta, but '{key}' is {list(base.shape)}")
                continue
            out.setdefault(key, []).append(delta)
        name = index.path.name
        example = missing[0][2] if missing else ""
        everything = len(missing) == len(index.modules) + len(index.products) + len(index.diffs)
        if missing and everything:
            skippable = False
            errors.append(f"{name}: no LoRA key matches this base (e.g. {example}); it was made for another model")
        elif missing and not skip_absent:
            wan21 = all(_WAN21_IMAGE.search(path) for _, path, _ in missing)
            errors.append(f"{name}: {len(missing)} LoRA module(s) have no weight in the base, e.g. {example}"
                          + (" (Wan2.1 I2V's image-embedding layers, which Wan2.2 has not)" if wan21 else ""))
        if mismatched:
            skippable = False
            errors.append(f"{name}: shape mismatch: {mismatched[0]}" + (f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""))
        skipped.append(tuple(k for k, _, _ in missing))
    if errors:
        fix = ("pass --skip-absent to leave them out, as ComfyUI's loader does (it logs 'lora key not loaded' for each), "
               "or use a LoRA trained for Wan2.2" if skippable else
               "use the LoRA trained for this model (Wan2.2 I2V-A14B, the same expert); check which file is the expert and which the LoRA")
        raise UserError(f"LoRA does not fit {header.path.name}: " + "; ".join(errors), path=loras[0].index.path if len(loras) == 1 else None,
                        fix=fix)
    return out, tuple(skipped)


def _encoding(dtype: str, src_dtype: str, canonical: str, scaled: bool, layout: Fp8Layout) -> Tuple[torch.dtype, str]:
    """Output (torch dtype, encode) of one non-side tensor for the requested ``dtype``."""
    src = DTYPES[src_dtype]
    is_float = src_dtype in _FLOAT
    if not is_float:
        return src, "cast"
    if dtype in _TORCH:
        return _TORCH[dtype], "cast"
    keep = (src, "fp8_scaled" if scaled else ("fp8" if src_dtype in _FP8 else "cast"))
    if dtype == "same":
        return keep
    if dtype == "fp8_e4m3fn":  # musubi's --fp8_base targets: the block Linears
        return (FP8, "fp8") if src_dtype in _FP8 or is_fp8_target(canonical) else keep
    target = src_dtype in _FP8 or is_linear_weight(canonical)
    # fp8_scaled on a comfy_quant base: its quantized layers stay its own (adding layers would also
    # need comfy_quant entries); on any other base, every fp8 target is quantized with a scale.
    if layout.comfy_quant or not target:
        return keep
    return FP8, "fp8_scaled"


def _weight_plan(header, key, prefix, dtype, layout, deltas) -> OutTensor:
    info = header.tensors[key]
    canonical = key[len(prefix):] if key.startswith(prefix) else key
    scaled = key in layout.scale_of
    out_dtype, encode = _encoding(dtype, info.dtype, canonical, scaled, layout)
    touched = tuple(deltas.get(key, ()))
    same_repr = out_dtype == info.torch_dtype and (encode == "fp8_scaled") == scaled
    if not touched and same_repr:
        return OutTensor(key, out_dtype, info.shape, "raw", src=key, encode=encode,
                         scale_key=layout.scale_of.get(key))
    if info.dtype in _FP8 or key in layout.formats:
        why = check_dequantizable(header, layout, key)
        if why:
            raise UserError(f"cannot merge into or convert {why}", path=header.path,
                            fix="merge into an fp16/bf16 or per-tensor fp8_scaled base instead")
    scale_key = None
    if encode == "fp8_scaled":
        scale_key = layout.scale_of.get(key) or key[: -len(".weight")] + LEGACY_SCALE_SUFFIX
    return OutTensor(key, out_dtype, info.shape, "compute", src=key, src_scale=layout.scale_of.get(key),
                     deltas=touched, encode=encode, scale_key=scale_key)


def _side_tensor(header: AnyHeader, layout: Fp8Layout, key: str, weights: Dict[str, OutTensor],
                 scaled_out: set) -> Optional[OutTensor]:
    """How an fp8 side tensor (marker, scale, input scale, comfy_quant) goes out; None drops it."""
    info = header.tensors[key]
    if key == layout.marker_key:
        return OutTensor(key, info.torch_dtype, info.shape, "raw", src=key) if scaled_out else None
    owner = next((w for w, s in layout.scale_of.items() if s == key), None)
    if owner is not None:  # a weight's scale: copied with an untouched weight, recomputed with a merged one
        if owner not in scaled_out:
            return None
        if weights[owner].kind == "raw":
            return OutTensor(key, info.torch_dtype, info.shape, "raw", src=key)
        return OutTensor(key, torch.float32, info.shape, "scale", weight_key=owner)
    # input scales / comfy_quant stay while their weight keeps its stored representation
    owner = next(w for w, aux in layout.aux_of.items() if key in aux)
    w = weights[owner]
    same = w.dtype == header.tensors[owner].torch_dtype and (w.encode == "fp8_scaled") == (owner in layout.scale_of)
    return OutTensor(key, info.torch_dtype, info.shape, "raw", src=key) if same else None


def plan_merge(base: BaseInfo, loras: Sequence[LoraSource], *, dtype: str = "same",
               expert: Optional[str] = None, skip_absent: bool = False) -> MergePlan:
    """Decide every output tensor of merging ``loras`` into the base (headers only, no I/O).

    Args:
        base: the base's header, identity and fp8 layout (``circle_rotate.tools.merge.run.read_base``).
        loras: the LoRAs with strengths and scales, applied in order.
        dtype: one of :data:`MERGE_DTYPES`.
        expert: ``high``/``low`` to record in the metadata (default: the base's own, if known).
        skip_absent: leave out LoRA modules and differences the base has no tensor for (a Wan2.1
            I2V LoRA's image layers on Wan2.2), as ComfyUI does; the plan lists them in ``skipped``.

    Raises:
        UserError: unknown dtype, a LoRA that does not fit (naming the key), or fp8 weights
            that would have to be dequantized but use a format we cannot read.
    """
    if dtype not in MERGE_DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}", fix=f"use one of {', '.join(MERGE_DTYPES)}")
    header, identity, layout = base.header, base.identity, base.layout
    prefix = identity.key_prefix
    # "same" on a scaled base means ComfyUI's scaled layout, completed: a base of ours from before
    # every Linear was quantized gets its remaining Linears scaled rather than copied unscaled.
    encoding = "fp8_scaled" if dtype == "same" and layout.scaled and not layout.comfy_quant else dtype
    deltas, skipped = _deltas(header, prefix, loras, skip_absent)
    side = layout.side_keys
    order = header.storage_order
    weights = {k: _weight_plan(header, k, prefix, encoding, layout, deltas) for k in order if k not in side}
    input_scales = not layout.comfy_quant and not (layout.marker_key and header.tensors[layout.marker_key].numel == 2)
    scaled_out = {t.key for t in weights.values() if t.encode == "fp8_scaled"}
    tensors: List[OutTensor] = []
    dropped: List[str] = []
    if scaled_out and layout.marker_key is None and not layout.comfy_quant:
        tensors.append(OutTensor(prefix + MARKER, FP8, (0,), "marker"))
    for key in order:
        if key not in side:
            t = weights[key]
            tensors.append(t)
            if t.encode == "fp8_scaled" and t.scale_key not in header.tensors:
                tensors.append(OutTensor(t.scale_key, torch.float32, (), "scale", weight_key=key))
            input_key = key[: -len(".weight")] + INPUT_SCALE_SUFFIX
            if t.encode == "fp8_scaled" and input_scales and input_key not in header.tensors:
                tensors.append(OutTensor(input_key, torch.float32, (), "const", value=1.0))
            continue
        kept = _side_tensor(header, layout, key, weights, scaled_out)
        if kept is None:
            dropped.append(key)
        else:
            tensors.append(kept)
    metadata = dict(header.metadata)
    if not scaled_out:
        metadata.pop("_quantization_metadata", None)
    metadata[MERGED_LORAS_KEY] = merged_history(header.metadata, [(s.index, s.strength) for s in loras], dtype,
                                                [s.sketch for s in loras], base_name=Path(header.path).name)
    metadata["circle_rotate.merge_dtype"] = dtype
    if expert or identity.expert:
        metadata[EXPERT_METADATA_KEY] = expert or identity.expert
    if identity.variant:  # I2V and Fun-InP share every key: only this (and the name) tells them apart
        metadata[VARIANT_METADATA_KEY] = identity.variant
    def applied(i: int, diff: bool) -> int:
        return sum(1 for ds in deltas.values() for d in ds if d.lora == i and (d.kind == "diff") == diff)

    return MergePlan(header, identity, tuple(loras), dtype, tuple(tensors), metadata, tuple(dropped),
                     tuple(applied(i, False) for i in range(len(loras))), tuple(applied(i, True) for i in range(len(loras))),
                     skipped)
