"""LoRA key names for Wan DiTs: one canonical module path, three file layouts.

The canonical name of a LoRA module is the Wan parameter path without ``.weight``
(``blocks.3.self_attn.q``), exactly as in musubi-tuner's ``WanModel`` and the official and
ComfyUI checkpoints. The layouts, with where each rule was read:

- ``musubi`` (sd-scripts style, what ``networks.lora_wan`` saves): ``lora_unet_`` + the path with
  dots turned into underscores, then ``.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``.
  Underscores are ambiguous (``self_attn_q``), so names are read back against the Wan module
  grammar below, never by blind replacement. ComfyUI's ``lora_convert.convert_lora_wan_fun``
  also accepts the ``lora_unet__blocks`` double underscore of Wan Fun LoRAs; so do we.
- ``comfy``: ``diffusion_model.`` + path + ``.lora_A.weight`` / ``.lora_B.weight`` / ``.alpha``.
  ComfyUI's ``comfy/lora.py`` ``model_lora_keys_unet`` maps ``<state-dict key minus .weight>``
  (its model state dict carries ``diffusion_model.``), and ``weight_adapter/lora.py``
  ``LoRAAdapter.load`` reads ``.lora_B.weight``/``.lora_A.weight`` there, with ``.alpha``
  (read in ``comfy/lora.py`` ``load_lora``) scaling by ``alpha / rank``.
- ``diffusers``: ``transformer.`` + the diffusers module path (``blocks.3.attn1.to_q``) +
  ``.lora_A.weight`` / ``.lora_B.weight``, no alpha (diffusers' Wan loader folds alpha into the
  weights, ``loaders/lora_conversion_utils.py`` ``_convert_non_diffusers_wan_lora_to_diffusers``;
  a file diffusers saved may hold one in its ``lora_adapter_metadata``, which
  :mod:`circle_rotate.tools.lora.files` reads).
  PEFT's ``base_model.model.`` prefix is read too.

Three more spellings are read, never written (:data:`READ_ONLY_FORMATS`); ComfyUI's loader maps
none of them for Wan, so ``convert --format comfy`` is how such a file loads there:

- ``diffsynth``: no prefix at all (or ``pipe.dit.``), Wan's module names, PEFT parts
  (DiffSynth-Studio saves ``blocks.0.self_attn.q.lora_A.weight``, or with PEFT's adapter name kept,
  ``...lora_A.default.weight``); no alpha, scale 1 as its loader applies it. The adapter name is
  read in every layout with PEFT parts; ComfyUI maps only ``default`` (``weight_adapter/lora.py``).
- ``finetrainers``: ``diffusion_model.`` + Diffusers' module names (``blocks.0.attn1.to_q``); no alpha.
- ``lycoris``: ``lycoris_`` + the underscored Wan name, sd-scripts parts with alpha (SimpleTuner's
  LyCORIS LoRAs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from circle_rotate.kernel.wan_arch import MUSUBI_LORA_PREFIX

FORMATS: Tuple[str, ...] = ("musubi", "comfy", "diffusers")
PARTS: Tuple[str, ...] = ("down", "up", "alpha")
#: Formats whose files carry a per-module alpha; diffusers has none (scale is 1).
FORMATS_WITH_ALPHA = ("musubi", "comfy")
READ_ONLY_FORMATS: Tuple[str, ...] = ("diffsynth", "finetrainers", "lycoris")
#: Layouts whose trainers write no alpha: a module without one has scale 1.
NO_ALPHA_IS_SCALE_1: Tuple[str, ...] = ("comfy", "diffusers", "diffsynth", "finetrainers")
LYCORIS_PREFIX = "lycoris_"
COMFY_LORA_PREFIX = "diffusion_model."
DIFFUSERS_PREFIXES: Tuple[str, ...] = ("transformer.", "base_model.model.")

# Linear (and the one Conv3d) modules of a Wan DiT that a LoRA can target.
_IN_BLOCK = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
             "cross_attn.v", "cross_attn.o", "cross_attn.k_img", "cross_attn.v_img", "ffn.0", "ffn.2")
_TOP_LEVEL = ("patch_embedding", "text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2",
              "time_projection.1", "head.head", "img_emb.proj.1", "img_emb.proj.3")

# Wan path <-> diffusers WanTransformer3DModel path (from diffusers' Wan LoRA converter).
_DIFFUSERS_IN_BLOCK = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0", "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
}
_DIFFUSERS_TOP = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
}
_FROM_DIFFUSERS_IN_BLOCK = {v: k for k, v in _DIFFUSERS_IN_BLOCK.items()}
_FROM_DIFFUSERS_TOP = {v: k for k, v in _DIFFUSERS_TOP.items()}
# The parameters no LoRA targets, Diffusers' name -> Wan's (diffusers' scripts/convert_wan_to_diffusers.py;
# its norm2 is Wan's norm3, the cross-attention norm; the other LayerNorms have no parameters in either).
_FROM_DIFFUSERS_OTHER_IN_BLOCK = {
    "scale_shift_table": "modulation", "norm2.weight": "norm3.weight", "norm2.bias": "norm3.bias",
    "attn1.norm_q.weight": "self_attn.norm_q.weight", "attn1.norm_k.weight": "self_attn.norm_k.weight",
    "attn2.norm_q.weight": "cross_attn.norm_q.weight", "attn2.norm_k.weight": "cross_attn.norm_k.weight",
    "attn2.norm_added_k.weight": "cross_attn.norm_k_img.weight",
}
_FROM_DIFFUSERS_OTHER_TOP = {
    "scale_shift_table": "head.modulation",
    "condition_embedder.image_embedder.norm1.weight": "img_emb.proj.0.weight",
    "condition_embedder.image_embedder.norm1.bias": "img_emb.proj.0.bias",
    "condition_embedder.image_embedder.norm2.weight": "img_emb.proj.4.weight",
    "condition_embedder.image_embedder.norm2.bias": "img_emb.proj.4.bias",
    "condition_embedder.image_embedder.pos_embed": "img_emb.emb_pos",
}
_UNDERSCORED_IN_BLOCK = {m.replace(".", "_"): m for m in _IN_BLOCK}
_UNDERSCORED_TOP = {m.replace(".", "_"): m for m in _TOP_LEVEL}

_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_BLOCK_UNDERSCORED = re.compile(r"blocks_(\d+)_(.+)")

# Suffix -> part, per layout family. Order matters only for readability.
_PARTS = {".lora_A.weight": "down", ".lora_B.weight": "up", ".alpha": "alpha",
          ".lora_down.weight": "down", ".lora_up.weight": "up"}
# A PEFT model's own state dict keeps the adapter's name between the part and ".weight"
# (peft/tuners/lora/layer.py: lora_A is a ModuleDict keyed by adapter); DiffSynth-Studio's trainer
# saves it so: "blocks.0.self_attn.q.lora_A.default.weight". Any one-segment name is an adapter.
_PEFT_ADAPTER = re.compile(r"(.+)\.lora_([AB])\.([^.]+)\.weight")
#: Prefixes DiffSynth-Studio's trainer leaves before Wan's names: none with its documented
#: ``--remove_prefix_in_ckpt pipe.dit.``, ``pipe.dit.`` without it.
DIFFSYNTH_PREFIXES: Tuple[str, ...] = ("pipe.dit.",)


@dataclass(frozen=True)
class LoraKey:
    """One tensor of a LoRA file, understood: which Wan module, which part, which layout."""

    module: str  # canonical Wan path, e.g. "blocks.0.self_attn.q"
    part: str  # "down", "up" or "alpha"
    fmt: str  # one of FORMATS, or READ_ONLY_FORMATS


def is_wan_module(path: str) -> bool:
    """Whether ``path`` names a LoRA-able Wan DiT module (any block index)."""
    m = _BLOCK.fullmatch(path)
    return (m is not None and m.group(2) in _IN_BLOCK) or path in _TOP_LEVEL


def _to_wan(name: str, block: "re.Pattern[str]", in_block: Dict[str, str], top: Dict[str, str]) -> Optional[str]:
    """A module name in some spelling -> the Wan path, through that spelling's tables."""
    m = block.fullmatch(name)
    if m:
        inner = in_block.get(m.group(2))
        return f"blocks.{int(m.group(1))}.{inner}" if inner else None
    return top.get(name)


def _from_underscored(body: str) -> Optional[str]:
    return _to_wan(body, _BLOCK_UNDERSCORED, _UNDERSCORED_IN_BLOCK, _UNDERSCORED_TOP)


def _from_diffusers_path(path: str) -> Optional[str]:
    return _to_wan(path, _BLOCK, _FROM_DIFFUSERS_IN_BLOCK, _FROM_DIFFUSERS_TOP)


def wan_param_from_diffusers(key: str) -> Optional[str]:
    """The Wan parameter a Diffusers ``WanTransformer3DModel`` state-dict key holds; None when it has no Wan name.

    Example:
        >>> wan_param_from_diffusers("blocks.3.attn2.to_out.0.bias")
        'blocks.3.cross_attn.o.bias'
    """
    for suffix in (".weight", ".bias"):
        module = _from_diffusers_path(key[: -len(suffix)]) if key.endswith(suffix) else None
        if module:
            return module + suffix
    m = _BLOCK.fullmatch(key)
    if m:
        inner = _FROM_DIFFUSERS_OTHER_IN_BLOCK.get(m.group(2))
        return f"blocks.{int(m.group(1))}.{inner}" if inner else None
    return _FROM_DIFFUSERS_OTHER_TOP.get(key)


def _split_suffix(key: str) -> Optional[Tuple[str, str]]:
    """(stem, part) of a LoRA tensor name in sd-scripts' or PEFT's spelling, adapter name included."""
    for suffix, part in _PARTS.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    m = _PEFT_ADAPTER.fullmatch(key)
    return (m.group(1), "down" if m.group(2) == "A" else "up") if m else None


def key_stem(key: str) -> Optional[str]:
    """The module part of a LoRA tensor name, its part suffix (and PEFT adapter name) removed.

    Example:
        >>> key_stem("transformer.blocks.0.attn1.to_q.lora_A.weight")
        'transformer.blocks.0.attn1.to_q'
    """
    split = _split_suffix(key)
    return split[0] if split else None


def peft_adapter(key: str) -> Optional[str]:
    """The PEFT adapter name a ``...lora_A.<name>.weight`` key carries; None for any other key.

    Example:
        >>> peft_adapter("blocks.0.self_attn.q.lora_B.default.weight")
        'default'
    """
    m = _PEFT_ADAPTER.fullmatch(key)
    return m.group(3) if m else None


def module_of_stem(stem: str) -> Optional[Tuple[str, str]]:
    """``(Wan module, layout)`` of a key stem in the musubi (``lora_unet_blocks_0_self_attn_q``) or
    comfy (``diffusion_model.blocks.0.self_attn.q``) layout; None for anything else."""
    if stem.startswith(MUSUBI_LORA_PREFIX):
        module = _from_underscored(stem[len(MUSUBI_LORA_PREFIX):].lstrip("_"))  # Wan Fun: "lora_unet__blocks_0..."
        return (module, "musubi") if module else None
    if stem.startswith(COMFY_LORA_PREFIX):
        path = stem[len(COMFY_LORA_PREFIX):]
        return (path, "comfy") if is_wan_module(path) else None
    return None


def parse_lora_key(key: str) -> Optional[LoraKey]:
    """Understand one LoRA tensor name; None when it is not a LoRA tensor of a Wan module.

    Example:
        >>> parse_lora_key("lora_unet_blocks_0_cross_attn_k_img.lora_up.weight")
        LoraKey(module='blocks.0.cross_attn.k_img', part='up', fmt='musubi')
    """
    # every prefix with either family of parts: ComfyUI loads lora_unet_* with lora_A/lora_B too (its
    # loader tries each pair name under every key it maps, comfy/weight_adapter/lora.py)
    split = _split_suffix(key)
    if split is None:
        return None
    stem, part = split
    if stem.startswith((MUSUBI_LORA_PREFIX, COMFY_LORA_PREFIX)):
        found = module_of_stem(stem)
        if found:
            return LoraKey(found[0], part, found[1])
        module = _from_diffusers_path(stem[len(COMFY_LORA_PREFIX):]) if stem.startswith(COMFY_LORA_PREFIX) else None
        return LoraKey(module, part, "finetrainers") if module else None
    for prefix in DIFFUSERS_PREFIXES:
        if stem.startswith(prefix):
            path = stem[len(prefix):]
            # Some trainers write Wan's own names under "transformer."; accept both spellings.
            module = _from_diffusers_path(path) or (path if is_wan_module(path) else None)
            return LoraKey(module, part, "diffusers") if module else None
    if stem.startswith(LYCORIS_PREFIX):
        module = _from_underscored(stem[len(LYCORIS_PREFIX):])
        return LoraKey(module, part, "lycoris") if module else None
    path = next((stem[len(p):] for p in DIFFSYNTH_PREFIXES if stem.startswith(p)), stem)
    return LoraKey(path, part, "diffsynth") if is_wan_module(path) else None


def lora_key(module: str, part: str, fmt: str) -> str:
    """The tensor name of ``part`` of ``module`` in layout ``fmt`` (inverse of :func:`parse_lora_key`).

    Raises:
        ValueError: unknown format or part, a part the format cannot store, or not a Wan module.
    """
    if fmt not in FORMATS or part not in PARTS:
        raise ValueError(f"unknown LoRA format/part {fmt!r}/{part!r}")
    if not is_wan_module(module):
        raise ValueError(f"{module!r} is not a LoRA-able Wan DiT module")
    if fmt == "musubi":
        stem = MUSUBI_LORA_PREFIX + module.replace(".", "_")
        return stem + {"down": ".lora_down.weight", "up": ".lora_up.weight", "alpha": ".alpha"}[part]
    if fmt == "diffusers" and part == "alpha":
        raise ValueError("the diffusers layout has no alpha; fold it into the weights")
    if fmt == "comfy":
        stem = COMFY_LORA_PREFIX + module
    else:
        m = _BLOCK.fullmatch(module)
        stem = "transformer." + (f"blocks.{m.group(1)}.{_DIFFUSERS_IN_BLOCK[m.group(2)]}" if m else _DIFFUSERS_TOP[module])
    return stem + {"down": ".lora_A.weight", "up": ".lora_B.weight", "alpha": ".alpha"}[part]


def module_sort_key(module: str) -> Tuple[int, int, int, str]:
    """Order modules as a Wan state dict does: top-level inputs, blocks by index, then the head."""
    m = _BLOCK.fullmatch(module)
    if m:
        inner = m.group(2)
        return (1, int(m.group(1)), _IN_BLOCK.index(inner) if inner in _IN_BLOCK else len(_IN_BLOCK), inner)
    return (2 if module.startswith("head") else 0, 0, 0, module)


def block_index(module: str) -> Optional[int]:
    """``blocks.7.ffn.0`` -> 7; None for modules outside the blocks."""
    m = _BLOCK.fullmatch(module)
    return int(m.group(1)) if m else None
