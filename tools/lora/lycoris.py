"""LoHa and LoKr modules (LyCORIS; musubi-tuner's ``networks.loha`` and ``networks.lokr``): names and deltas.

musubi-tuner trains them for Wan (``--network_module networks.loha`` / ``networks.lokr``), but its
``merge_lora.py`` merges plain LoRA only; ComfyUI loads both. Their deltas:

- LoHa, a Hadamard product of two low-rank products:
  ``delta = (alpha / dim) * (w1_a @ w1_b) * (w2_a @ w2_b)`` with ``dim = w1_b.shape[0]``.
- LoKr, a Kronecker product: ``delta = scale * kron(w1, w2)``, where a factor stored decomposed
  is ``w_a @ w_b``, and ``scale = alpha / dim`` with ``dim`` the rank of the decomposed factor
  (``w2_b``'s, else ``w1_b``'s), or 1 when both factors are stored whole.

Both as musubi-tuner applies them (``networks/loha.py`` and ``networks/lokr.py``,
``merge_weights_to_tensor``) and as ComfyUI does (``comfy/weight_adapter/loha.py``, ``lokr.py``). A
file without alpha has scale 1 in both. musubi stores its LoKr ``w1`` whole; LyCORIS may store it
decomposed (``lokr_w1_a``/``lokr_w1_b``), which ComfyUI reads too.

Keys are ``<stem>.<part>`` with the stem in the musubi (``lora_unet_...``) or comfy
(``diffusion_model....``) layout, alpha as a LoRA's. :func:`add_rows` adds a row range of a
delta, so a merge never holds a whole one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import torch

from circle_rotate.kernel.wan_arch import MUSUBI_LORA_PREFIX
from circle_rotate.tools.lora.keys import COMFY_LORA_PREFIX, module_of_stem

#: kind -> the tensor names (after ``<stem>.``) its modules store.
PARTS: Dict[str, Tuple[str, ...]] = {
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
    "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"),
}
_KIND_OF = {part: kind for kind, parts in PARTS.items() for part in parts}
LABELS = {"loha": "LoHa", "lokr": "LoKr"}


@dataclass(frozen=True)
class ProductKey:
    """One tensor of a LoHa or LoKr module, understood."""

    module: str  # canonical Wan path, e.g. "blocks.0.self_attn.q"
    kind: str  # "loha" or "lokr"
    part: str  # e.g. "hada_w1_a"
    fmt: str  # "musubi" or "comfy"


def parse_product_key(key: str) -> Optional[ProductKey]:
    """Understand one LoHa/LoKr tensor name; None for anything else (alpha included: it is a LoRA's name too).

    Example:
        >>> parse_product_key("lora_unet_blocks_0_ffn_2.lokr_w2_a")
        ProductKey(module='blocks.0.ffn.2', kind='lokr', part='lokr_w2_a', fmt='musubi')
    """
    stem, _, part = key.rpartition(".")
    kind = _KIND_OF.get(part)
    found = module_of_stem(stem) if kind else None
    return ProductKey(found[0], kind, part, found[1]) if found else None


def product_key(module: str, part: str, fmt: str) -> str:
    """The name of ``part`` (or ``alpha``) of ``module`` in layout ``fmt`` (inverse of :func:`parse_product_key`).

    Raises:
        ValueError: a layout with no LoHa/LoKr names (diffusers), or an unknown part.
    """
    if part not in _KIND_OF and part != "alpha":
        raise ValueError(f"unknown LoHa/LoKr part {part!r}")
    if fmt == "musubi":
        return f"{MUSUBI_LORA_PREFIX}{module.replace('.', '_')}.{part}"
    if fmt == "comfy":
        return f"{COMFY_LORA_PREFIX}{module}.{part}"
    raise ValueError(f"the {fmt} layout has no name for a LoHa/LoKr module")


def missing_parts(kind: str, parts: Mapping[str, object]) -> Tuple[str, ...]:
    """The parts a module of ``kind`` needs and ``parts`` lacks (empty when it is complete)."""
    if kind == "loha":
        return tuple(p for p in PARTS["loha"] if p not in parts)
    need = []
    for w in ("lokr_w1", "lokr_w2"):
        if w not in parts and not (f"{w}_a" in parts and f"{w}_b" in parts):
            need.append(w)
    return tuple(need)


def product_rank(kind: str, shapes: Mapping[str, Tuple[int, ...]]) -> Optional[int]:
    """The ``dim`` that alpha is divided by (None: a LoKr stored whole, whose scale is 1)."""
    if kind == "loha":
        return shapes["hada_w1_b"][0]
    for part in ("lokr_w2_b", "lokr_w1_b"):
        if part in shapes:
            return shapes[part][0]
    return None


def product_scale(kind: str, shapes: Mapping[str, Tuple[int, ...]], alpha: Optional[float]) -> float:
    """``alpha / dim`` as both loaders compute it; 1 without alpha or for a LoKr stored whole."""
    dim = product_rank(kind, shapes)
    return 1.0 if alpha is None or dim is None else alpha / dim


def _factor(parts: Mapping[str, Tuple[int, ...]], w: str) -> Tuple[int, int]:
    if w in parts:
        return tuple(parts[w][:2])
    return parts[f"{w}_a"][0], parts[f"{w}_b"][1]


def delta_shape(kind: str, shapes: Mapping[str, Tuple[int, ...]]) -> Tuple[int, int]:
    """(out, in) of the module's delta, from its tensors' shapes."""
    if kind == "loha":
        return shapes["hada_w1_a"][0], shapes["hada_w1_b"][1]
    (a, b), (c, d) = _factor(shapes, "lokr_w1"), _factor(shapes, "lokr_w2")
    return a * c, b * d


def factors(kind: str, tensors: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, ...]:
    """The fp32 factors :func:`add_rows` takes: LoHa's four matrices; LoKr's whole ``w1`` and ``w2``
    (small: each is about the square root of the weight's size)."""
    t = {k: v.float().reshape(v.shape[0], -1) for k, v in tensors.items()}
    if kind == "loha":
        return tuple(t[p] for p in PARTS["loha"])
    return tuple(t[w] if w in t else t[f"{w}_a"] @ t[f"{w}_b"] for w in ("lokr_w1", "lokr_w2"))


def add_rows(out: torch.Tensor, kind: str, f: Tuple[torch.Tensor, ...], r0: int, r1: int, factor: float) -> torch.Tensor:
    """``out += factor * delta[r0:r1]`` in place (``out`` fp32, ``r1 - r0`` rows), from :func:`factors`."""
    if kind == "loha":
        w1a, w1b, w2a, w2b = f
        return out.addcmul_(w1a[r0:r1] @ w1b, w2a[r0:r1] @ w2b, value=factor)  # no third temporary
    w1, w2 = f
    c = w2.shape[0]  # delta row i is kron row (i // c, i % c)
    first, last = r0 // c, (r1 - 1) // c
    block = torch.kron(w1[first:last + 1], w2)
    return out.add_(block[r0 - first * c: r1 - first * c], alpha=factor)
