"""What a LoRA or a Wan expert file is, from its header (and, for LoRAs, its small weights).

For a LoRA: layout, ranks, alphas and scales, which Wan2.2 target modules it covers and which
it misses, dtypes, parameter count, delta norms, its ``ss_*`` training records, which expert it
was trained for (and the evidence), and whether ComfyUI's loader maps every key. For a model:
what :func:`circle_rotate.kernel.checkpoint_identity.identify_checkpoint` tells plus its fp8 layout.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from circle_rotate.kernel.checkpoint_identity import EXPERT_METADATA_KEY, expert_from_metadata, identify_checkpoint
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.expert_names import expert_from_file_name, expert_from_text
from circle_rotate.kernel.shards import read_checkpoint
from circle_rotate.kernel.wan_arch import BOUNDARY_I2V, BOUNDARY_T2V, I2V_A14B, WanDiTConfig, lora_target_modules
from circle_rotate.tools.lora.diffs import comfy_applies, parse_diff_key
from circle_rotate.tools.lora.files import (LoraIndex, is_peft_magnitude, load_module, nonfinite_keys, read_lora_index,
                                         require_a_wan_module)
from circle_rotate.tools.lora.keys import NO_ALPHA_IS_SCALE_1, block_index, module_sort_key, parse_lora_key, peft_adapter
from circle_rotate.tools.lora.lycoris import LABELS, parse_product_key, product_rank
from circle_rotate.tools.lora.peft_metadata import PEFT_METADATA_KEY
from circle_rotate.tools.merge.fp8 import fp8_layout

_DTYPE_LABEL = {"F16": "fp16", "BF16": "bf16", "F32": "fp32", "F8_E4M3": "fp8_e4m3fn", "F8_E5M2": "fp8_e5m2"}
#: Layouts ComfyUI's LoRA loader maps for a Wan model (comfy/lora.py model_lora_keys_unet, read Oct 2025).
COMFY_LOADS = ("musubi", "comfy")
#: ComfyUI renames Wan Fun's ``lora_unet__`` names to ``lora_unet_`` only when this exact key is in the
#: file (comfy/lora_convert.py:39, ComfyUI 0.3.64); without it every ``lora_unet__`` key is not loaded.
WAN_FUN_MARKER = "lora_unet__blocks_0_cross_attn_k.lora_down.weight"


@dataclass(frozen=True)
class LoraReport:
    path: str
    format: str
    modules: int
    ranks: Dict[int, int]  # rank -> modules
    alphas: Dict[str, int]  # alpha (or "missing") -> modules
    scales: Dict[str, int]  # alpha / rank (or "unknown") -> modules
    dtypes: List[str]
    params: int
    file_bytes: int
    target_model: str
    targets_covered: int
    targets_total: int
    missing_targets: List[str]
    extra_modules: List[str]
    delta_norm: Dict[str, float]  # min / median / max of ||scale * up @ down||_F
    largest_deltas: List[Tuple[str, float]]
    expert: Optional[str]
    expert_evidence: Optional[str]
    comfyui_loads_all_keys: bool
    unknown_keys: List[str]
    training: Dict[str, str]
    nonfinite_keys: List[str] = field(default_factory=list)  # tensors holding NaN/inf: unusable as they are
    kind: str = "lora"
    diffs: Dict[str, int] = field(default_factory=dict)  # whole-tensor differences: "weight"/"bias"/"modulation" -> count
    comfyui_skips: List[str] = field(default_factory=list)  # differences ComfyUI does not apply (the modulation's)
    products: Dict[str, int] = field(default_factory=dict)  # "LoHa"/"LoKr" -> modules
    dora: int = 0  # modules carrying a DoRA magnitude (dora_scale, or PEFT's lora_magnitude_vector)
    comfyui_not_loaded: List[str] = field(default_factory=list)  # tensors ComfyUI leaves out or never applies
    text_encoder_keys: List[str] = field(default_factory=list)  # not for the DiT: every command leaves them out
    metadata_mismatch: List[str] = field(default_factory=list)  # ss_network_dim/alpha the tensors disagree with
    alpha_from_metadata: int = 0  # modules whose alpha is diffusers' lora_adapter_metadata's (no alpha tensor)

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ModelReport:
    path: str
    family: str
    task: str
    expert: Optional[str]
    expert_evidence: Optional[str]
    dtype: str
    fp8_layout: str  # "none", "scaled_fp8 (legacy)", "comfy_quant"
    key_prefix: str
    dim: Optional[int]
    num_layers: int
    in_dim: Optional[int]
    tensors: int
    params: int
    file_bytes: int
    metadata_keys: List[str]
    shards: int = 1  # files the model is stored in (the official release: 6 per expert)
    layout: str = "wan"  # key names: "wan" or "diffusers" (CheckpointIdentity.layout)
    kind: str = "model"

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def lora_expert(index: LoraIndex) -> Tuple[Optional[str], Optional[str]]:
    """(expert, evidence) a LoRA was trained for: metadata first, then the file name.

    Metadata: our own ``circle_rotate.expert``; musubi's ``modelspec.timestep_range`` (a range
    above the 0.9 boundary is the high-noise expert); ``ss_sd_model_name`` (the ``--dit`` file
    it was trained on, e.g. ``wan2.2_i2v_low_noise_14B_fp16.safetensors``) and titles. File
    name: ``high_noise``/``low_noise``, or the released pair's ``_h``/``_l`` suffix.
    """
    meta = index.metadata
    value = meta.get(EXPERT_METADATA_KEY, "").lower()
    if value in ("high", "low"):
        return value, "metadata"
    rng = re.fullmatch(r"\s*\(?\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*\)?\s*", meta.get("modelspec.timestep_range", ""))
    if rng:
        lo, hi = float(rng.group(1)), float(rng.group(2))
        if lo >= BOUNDARY_T2V:  # the lower of the two boundaries (I2V 900, T2V 875)
            return "high", "metadata (timestep range)"
        if hi <= BOUNDARY_I2V:
            return "low", "metadata (timestep range)"
    found = expert_from_metadata(meta) or expert_from_text(meta.get("ss_sd_model_name", ""))
    if found:
        return found, "metadata"
    found = expert_from_file_name(Path(index.path).name)
    return (found, "filename") if found else (None, None)


def _in_features(index: LoraIndex) -> Dict[str, int]:
    """Module -> in_features, over its LoRA pairs and LoHa/LoKr modules."""
    return {**{m: i.in_features for m, i in index.modules.items()},
            **{m: p.delta_shape[1] for m, p in index.products.items()}}


def _target_config(index: LoraIndex) -> Tuple[str, Optional[WanDiTConfig]]:
    features = _in_features(index)
    if not any(block_index(name) is not None for name in features):  # the blocks are what tell the model
        return "unknown (top-level modules only)", None
    q = next((f for name, f in features.items() if name.endswith("self_attn.q")), None)
    dim = q if q else next(iter(features.values()))
    version = "2.1" if any(name.endswith(("k_img", "v_img")) for name in features) else "2.2"
    if dim == I2V_A14B.dim:
        name = "wan2.2-a14b" if version == "2.2" else "wan2.1-14b"
        return name, WanDiTConfig(model_version=version)
    blocks = [b for b in map(block_index, features) if b is not None]
    layers = max(blocks) + 1 if blocks else 0
    return f"wan (dim {dim}, {layers} blocks)", WanDiTConfig(dim=dim, num_layers=layers, num_heads=1, model_version=version)


def _comfy_maps(key: str) -> bool:
    """Whether ComfyUI's loader consumes ``key`` for a Wan model and applies it (Wan Fun renaming aside).
    Its key map holds the ``lora_unet_`` and ``diffusion_model.`` names only (module docstring of
    :mod:`circle_rotate.tools.lora.keys`); of PEFT's adapter names it reads ``default`` alone
    (comfy/weight_adapter/lora.py:99), and PEFT's DoRA magnitude under no name."""
    parsed = parse_lora_key(key)
    if parsed is not None:
        return parsed.fmt in COMFY_LOADS and peft_adapter(key) in (None, "default")
    if parse_product_key(key) is not None:
        return True
    if parse_diff_key(key) is not None:
        return comfy_applies(key)
    return key.endswith(".dora_scale") and not is_peft_magnitude(key)


def comfy_not_loaded(index: LoraIndex) -> List[str]:
    """The tensors of a LoRA that ComfyUI's LoraLoaderModelOnly does not load ("lora key not loaded") or
    never applies, judged key by key as ComfyUI maps each one (so a file mixing two layouts it reads loads)."""
    renamed = WAN_FUN_MARKER in index.header.tensors
    return sorted(k for k in index.header.keys()
                  if (k.startswith("lora_unet__") and not renamed) or not _comfy_maps(k))


def _metadata_mismatch(index: LoraIndex) -> List[str]:
    """``ss_network_dim``/``ss_network_alpha`` values that the tensors' ranks/alphas contradict
    (a renamed or resized file whose records were copied unchanged), and a ``lora_adapter_metadata``
    whose r is not the tensors' rank (diffusers then builds layers the tensors do not fit)."""
    # (ss_network_alpha against the alpha tensors: an alpha read from lora_adapter_metadata is no record of it)
    found = {"ss_network_dim": {i.rank for i in index.modules.values()},
             "ss_network_alpha": {i.alpha for i in index.modules.values() if i.alpha_key is not None}}
    out = []
    for key, values in found.items():
        try:
            said = float(index.metadata[key])
        except (KeyError, ValueError):  # absent, or "Dynamic" (sd-scripts' resize of mixed ranks)
            continue
        if values and values != {said}:
            shown = ", ".join(f"{v:g}" for v in sorted(values))
            out.append(f"{key} says {said:g}, the tensors hold {shown}")
    if index.peft_rank_mismatch:
        said = ", ".join(f"{r:g}" for r in sorted(set(index.peft_rank_mismatch.values())))
        held = ", ".join(f"{r:g}" for r in sorted({index.modules[m].rank for m in index.peft_rank_mismatch}))
        out.append(f"{PEFT_METADATA_KEY} says r {said} for {len(index.peft_rank_mismatch)} module(s), the tensors hold "
                   f"{held} (diffusers cannot load it)")
    return out


def _delta_norms(index: LoraIndex, scales: Dict[str, Optional[float]]) -> Dict[str, float]:
    # ||U D||_F^2 = sum((U^T U) * (D D^T)): rank x rank products, never the full delta.
    norms = {}
    with open(index.path, "rb") as fh:
        for name in index.modules:
            mod = load_module(index, name, fh=fh)
            up, down = mod.up.float().reshape(mod.up.shape[0], -1), mod.down.float().reshape(mod.rank, -1)
            sq = float(((up.T @ up) * (down @ down.T)).sum().clamp(min=0))
            norms[name] = (scales[name] if scales[name] is not None else 1.0) * sq ** 0.5
    return norms


def inspect_lora(index: LoraIndex) -> LoraReport:
    """Describe a LoRA read by :func:`circle_rotate.tools.lora.files.read_lora_index`."""
    infos = list(index.modules.values())
    skipped = sorted(d.key for d in index.diffs.values() if not comfy_applies(d.key))
    # As module_scales reads them, without refusing: no alpha is scale 1 in the ComfyUI/diffusers layouts
    # and unknown in a musubi file; an alpha of 0 is unknown (ComfyUI applies 0, musubi-tuner the rank).
    scales = {i.module: ((i.alpha / i.rank if i.alpha else None) if i.alpha is not None else
                         (1.0 if index.fmt in NO_ALPHA_IS_SCALE_1 else None)) for i in infos}
    model, cfg = _target_config(index) if infos or index.products else ("unknown", None)
    expected = set(lora_target_modules(cfg)) if cfg else set()
    covered = set(index.modules) | set(index.products)
    norms = _delta_norms(index, scales) if infos else {}
    expert, evidence = lora_expert(index)
    not_loaded = comfy_not_loaded(index)
    mismatch = _metadata_mismatch(index)
    ordered = sorted(norms.values())
    products = list(index.products.values())
    tensors = index.header.tensors
    ranks = [i.rank for i in infos] + [r for r in (product_rank(p.kind, p.shapes) for p in products) if r is not None]
    alphas = [i.alpha for i in infos] + [p.alpha for p in products]
    shown_scales = [scales[i.module] for i in infos] + [p.scale for p in products]
    dtypes = {i.dtype for i in infos} | {tensors[k].dtype for p in products for k in p.keys.values()}
    return LoraReport(
        path=str(index.path), format=index.fmt, modules=len(infos) + len(products),
        ranks=dict(sorted(Counter(ranks).items())),
        alphas=dict(Counter("missing" if a is None else f"{a:g}" for a in alphas)),
        scales=dict(Counter("unknown" if sc is None else f"{sc:.6g}" for sc in shown_scales)),
        dtypes=sorted(_DTYPE_LABEL.get(d, d) for d in dtypes),
        params=sum(i.num_params for i in infos) + sum(tensors[k].numel for p in products for k in p.keys.values()),
        file_bytes=index.header.file_size,
        target_model=model, targets_covered=len(expected & covered), targets_total=len(expected),
        missing_targets=sorted(expected - covered, key=module_sort_key),
        extra_modules=sorted(covered - expected, key=module_sort_key),
        delta_norm={"min": ordered[0], "median": statistics.median(ordered), "max": ordered[-1]} if ordered else {},
        largest_deltas=sorted(norms.items(), key=lambda kv: -kv[1])[:3],
        expert=expert, expert_evidence=evidence,
        comfyui_loads_all_keys=bool(infos or index.diffs or index.products) and not not_loaded,
        unknown_keys=sorted(index.unknown_keys), training={k: v for k, v in index.metadata.items() if k.startswith("ss_")},
        nonfinite_keys=nonfinite_keys(index) if infos or index.diffs or index.products else [],
        diffs=dict(Counter(_diff_kind(p) for p in index.diffs)), comfyui_skips=skipped,
        products=dict(Counter(LABELS[p.kind] for p in index.products.values())), dora=len(index.dora),
        comfyui_not_loaded=not_loaded, text_encoder_keys=sorted(index.text_encoder), metadata_mismatch=mismatch,
        alpha_from_metadata=sum(1 for i in infos if i.alpha_key is None and i.alpha is not None),
    )


def _diff_kind(param: str) -> str:
    return "bias" if param.endswith(".bias") else ("modulation" if param.endswith("modulation") else "weight")


def inspect_model(path: Union[str, Path]) -> ModelReport:
    """Describe a DiT checkpoint from its header (all its shards' headers, for a sharded one)."""
    header = read_checkpoint(path)
    ident = identify_checkpoint(header)
    layout = fp8_layout(header, ident.key_prefix)
    kind = "comfy_quant" if layout.comfy_quant else ("scaled_fp8 (legacy)" if layout.marker_key or layout.scaled else "none")
    return ModelReport(
        path=str(header.path), family=ident.family, task=ident.task, expert=ident.expert,
        expert_evidence=ident.expert_evidence, dtype=ident.dtype, fp8_layout=kind, key_prefix=ident.key_prefix,
        dim=ident.dim, num_layers=ident.num_layers, in_dim=ident.in_dim, tensors=len(header.tensors),
        # weights and biases only: fp8 scales, input scales, comfy_quant JSON and the scaled_fp8 marker describe them
        params=sum(t.numel for k, t in header.tensors.items() if k not in layout.side_keys), file_bytes=header.file_size,
        metadata_keys=sorted(header.metadata), shards=len(header.shards), layout=ident.layout,
    )


def inspect_file(path: Union[str, Path]) -> Union[LoraReport, ModelReport]:
    """A :class:`LoraReport` when the file holds LoRA tensors, else a :class:`ModelReport` (``path`` may
    also name a sharded model: a shard, its index or its folder)."""
    header = read_checkpoint(path)
    if not header.tensors:  # a trainer that matched no module saves this; it is neither a LoRA nor a model
        raise UserError("holds no tensors (an empty LoRA: its trainer matched no module, or it was cut short)",
                        path=header.path, fix="retrain with target modules that exist in a Wan DiT, or re-download it")
    if any(parse_lora_key(k) or parse_diff_key(k) or parse_product_key(k) or k.endswith((".lora_down.weight", ".lora_A.weight"))
           for k in header.keys()):
        index = read_lora_index(header.path, finite=False)  # the file a folder holds
        require_a_wan_module(index)  # a Flux LoRA, say: nothing here to describe
        return inspect_lora(index)
    return inspect_model(path)

