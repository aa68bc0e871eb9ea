"""Whole-tensor differences in Wan LoRA files: ``.diff``, ``.diff_b`` and ``.diff_m`` tensors.

Many Wan LoRAs in circulation carry, beside their low-rank pairs, whole-tensor differences for
the parameters a low-rank pair cannot hold: norm weights, biases, the blocks' modulation. The
lightx2v step-distillation LoRAs (the study's 4-step workflow) are the best-known. Every loader
adds them as they are, ``param += strength * diff``, with no alpha and no rank. Where each one
lands, as the loaders read them:

- ``<X>.diff`` goes to ``<X>.weight``, or to ``<X>`` itself for a parameter without ``.weight``
  (``blocks.N.modulation``). ComfyUI's ``comfy/lora.py``: ``load_lora`` patches the key that
  ``model_lora_keys_unet`` maps ``<X>`` to, which is ``<X>.weight``, or any other
  ``diffusion_model.`` key unchanged.
- ``<X>.diff_b`` goes to ``<X>.bias`` (ComfyUI: ``"{}.bias".format(...)``).
- ``<P>.diff_m`` goes to ``<P>.modulation``, as DiffSynth-Studio's and lightx2v's own loaders read
  it. ComfyUI cannot apply a modulation difference under any name: its loader does not read
  ``.diff_m`` ("lora key not loaded"), and though it reads ``<P>.modulation.diff``, its model
  patcher (``comfy/model_patcher.py``, ``_load_list``) never patches a parameter that sits on a
  module with children, which ``blocks.N.modulation`` and ``head.modulation`` do. So the comfy
  layout keeps ``.diff_m`` (ComfyUI says it skips them, rather than dropping them silently), and
  ``merge`` is the way to have them in a ComfyUI model.

A difference is named here by its Wan parameter path (``blocks.3.norm3.weight``), the key of
the base tensor it changes (without the base's own prefix).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Dict, Optional

from circle_rotate.kernel.wan_arch import I2V_A14B, MUSUBI_LORA_PREFIX, dit_shapes
from circle_rotate.tools.lora.keys import COMFY_LORA_PREFIX

#: Key suffix -> which parameter of the stem it changes. ``.diff`` is tried last only for clarity:
#: no key ends in two of these.
SUFFIXES: Dict[str, str] = {".diff_b": "bias", ".diff_m": "modulation", ".diff": "weight"}

# Every parameter name of a Wan DiT, Wan2.1 I2V's image layers included (a Wan2.1 LoRA names them).
_NAMES = dit_shapes(dataclasses.replace(I2V_A14B, model_version="2.1", num_layers=1))
_IN_BLOCK = frozenset(k[len("blocks.0."):] for k in _NAMES if k.startswith("blocks.0."))
_TOP = frozenset(k for k in _NAMES if not k.startswith("blocks."))
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_BLOCK_UNDERSCORED = re.compile(r"blocks_(\d+)(?:_(.+))?")


def _stems(params: frozenset) -> Dict[str, str]:
    """underscored stem -> dotted stem, for every stem a difference key can carry."""
    stems = set()
    for p in params:
        stems.add(p)
        if p.endswith((".weight", ".bias")):
            stems.add(p.rsplit(".", 1)[0])
        if p.endswith(".modulation"):
            stems.add(p[: -len(".modulation")])
    return {s.replace(".", "_"): s for s in stems}


_UNDERSCORED_IN_BLOCK = _stems(_IN_BLOCK)
_UNDERSCORED_TOP = _stems(_TOP)


@dataclass(frozen=True)
class DiffKey:
    """One difference tensor of a LoRA file, understood."""

    param: str  # the Wan parameter it changes, e.g. "blocks.0.norm3.weight"
    fmt: str  # "musubi" or "comfy"
    suffix: str  # ".diff", ".diff_b" or ".diff_m", as stored


def is_wan_param(path: str) -> bool:
    """Whether ``path`` is a parameter of a Wan DiT (any block index)."""
    m = _BLOCK.fullmatch(path)
    return m.group(2) in _IN_BLOCK if m else path in _TOP


def _dotted(body: str) -> Optional[str]:
    m = _BLOCK_UNDERSCORED.fullmatch(body)
    if m is None:
        return _UNDERSCORED_TOP.get(body)
    if m.group(2) is None:
        return f"blocks.{int(m.group(1))}"
    inner = _UNDERSCORED_IN_BLOCK.get(m.group(2))
    return f"blocks.{int(m.group(1))}.{inner}" if inner else None


def _target(stem: str, kind: str) -> Optional[str]:
    candidates = {"bias": (stem + ".bias",), "modulation": (stem + ".modulation",),
                  "weight": (stem + ".weight", stem)}[kind]
    return next((c for c in candidates if is_wan_param(c)), None)


def parse_diff_key(key: str) -> Optional[DiffKey]:
    """Understand one difference tensor's name; None when it is not one of a Wan parameter.

    Example:
        >>> parse_diff_key("diffusion_model.blocks.0.cross_attn.norm_k.diff")
        DiffKey(param='blocks.0.cross_attn.norm_k.weight', fmt='comfy', suffix='.diff')
    """
    suffix = next((s for s in SUFFIXES if key.endswith(s)), None)
    if suffix is None:
        return None
    stem = key[: -len(suffix)]
    if stem.startswith(COMFY_LORA_PREFIX):
        fmt, dotted = "comfy", stem[len(COMFY_LORA_PREFIX):]
    elif stem.startswith(MUSUBI_LORA_PREFIX):
        fmt, dotted = "musubi", _dotted(stem[len(MUSUBI_LORA_PREFIX):].lstrip("_"))
    else:
        return None
    param = _target(dotted, SUFFIXES[suffix]) if dotted else None
    return DiffKey(param, fmt, suffix) if param else None


def diff_key(param: str, fmt: str) -> str:
    """The name of a difference of ``param`` in layout ``fmt``: the one ComfyUI applies, and for a
    modulation, which ComfyUI cannot apply, lightx2v's ``.diff_m`` (the one merge and DiffSynth read).

    Raises:
        ValueError: ``param`` is not a Wan parameter, or ``fmt`` has no name ComfyUI would load
            for it: diffusers has no difference tensors, and ComfyUI maps ``lora_unet_`` names to
            ``.weight`` parameters only (so the musubi layout holds weight and bias differences).
    """
    if not is_wan_param(param):
        raise ValueError(f"{param!r} is not a Wan DiT parameter")
    if param.endswith(".weight"):
        stem, suffix = param[: -len(".weight")], ".diff"
    elif param.endswith(".bias"):
        stem, suffix = param[: -len(".bias")], ".diff_b"
    else:
        stem, suffix = param, ".diff"
    if fmt == "comfy":
        if param.endswith("modulation"):  # no name ComfyUI applies (module docstring): the one it warns about
            return COMFY_LORA_PREFIX + param[: -len(".modulation")] + ".diff_m"
        return COMFY_LORA_PREFIX + stem + suffix
    if fmt == "musubi" and stem != param:
        return MUSUBI_LORA_PREFIX + stem.replace(".", "_") + suffix
    raise ValueError(f"the {fmt} layout has no name ComfyUI loads for a difference of {param!r}")


def comfy_applies(key: str) -> bool:
    """Whether ComfyUI applies this difference tensor to the model (see the module docstring)."""
    parsed = parse_diff_key(key)
    if parsed is None or parsed.param.endswith("modulation"):
        return False
    return parsed.fmt == "comfy" or parsed.param.endswith((".weight", ".bias"))
