"""Convert a Wan LoRA between the musubi, ComfyUI and diffusers layouts, exactly.

musubi <-> comfy only renames: the ``down``/``up``/``alpha`` bytes are copied as they are, so a
round trip gives back the same tensors. diffusers has no alpha, so ``alpha / rank`` is folded
into the weights (exact when it is a power of two, as musubi's default 1/32 is; see
:func:`circle_rotate.tools.lora.files.fold_factors`); reading a diffusers file back gives
``alpha = rank``. Metadata (``ss_*`` training records included) is kept, but for the records a
scale is read from, which follow what is written (:func:`circle_rotate.tools.lora.peft_metadata.output_metadata`):
``ss_network_alpha`` becomes the alpha written (none in the diffusers layout), and diffusers'
``lora_adapter_metadata`` is rewritten for the folded diffusers file or dropped, as it would
otherwise scale the written weights again, or contradict the alpha tensors.

Whole-tensor differences (``.diff``/``.diff_b``/``.diff_m``, :mod:`circle_rotate.tools.lora.diffs`) are
copied byte for byte under the name ComfyUI applies in the target layout: ``comfy`` holds every one
(the modulation's as ``.diff_m``: ComfyUI applies it under no name, and says so for that one;
the report counts them); ``musubi`` holds weight and bias differences; ``diffusers`` none (it is
refused, naming the tensor).
LoHa and LoKr modules (:mod:`circle_rotate.tools.lora.lycoris`) are renamed between ``musubi`` and
``comfy``, bytes and alpha as they are; diffusers has no names for them.
"""

from __future__ import annotations

import math

import logging
import os
from dataclasses import asdict, dataclass
from typing import Dict, Tuple, Union

import torch

from circle_rotate.kernel.atomic import check_output_path
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.safetensors_io import SafetensorsWriter, copy_raw
from circle_rotate.tools.lora.diffs import comfy_applies, diff_key
from circle_rotate.tools.lora.files import (AlphaIfMissing, LoraIndex, check_folded, folded, load_module, module_scales,
                                         read_lora_index, require_layout, require_wan_lora)
from circle_rotate.tools.lora.keys import FORMATS, FORMATS_WITH_ALPHA, lora_key
from circle_rotate.tools.lora.lycoris import product_key
from circle_rotate.tools.lora.peft_metadata import output_metadata

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class ConvertReport:
    src: str
    out: str
    from_format: str
    to_format: str
    modules: int
    alpha: str  # "copied", "written (alpha = scale * rank)", "folded into the weights"
    diffs: int = 0  # whole-tensor differences copied
    products: int = 0  # LoHa/LoKr modules copied
    comfy_skips: int = 0  # differences (the modulation's) ComfyUI cannot apply under any name: merge adds them

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def _specs(index: LoraIndex, to: str) -> Dict[str, Tuple[torch.dtype, Tuple[int, ...]]]:
    specs: Dict[str, Tuple[torch.dtype, Tuple[int, ...]]] = {}
    tensors = index.header.tensors
    for name, info in index.modules.items():
        specs[lora_key(name, "down", to)] = (tensors[info.down_key].torch_dtype, info.down_shape)
        specs[lora_key(name, "up", to)] = (tensors[info.up_key].torch_dtype, info.up_shape)
        if to in FORMATS_WITH_ALPHA:
            alpha = tensors[info.alpha_key] if info.alpha_key else None
            specs[lora_key(name, "alpha", to)] = (alpha.torch_dtype, alpha.shape) if alpha else (torch.float32, ())
    for name, product in index.products.items():
        for part, key in product.stored:
            specs[product_key(name, part, to)] = (tensors[key].torch_dtype, tensors[key].shape)
    for param, diff in index.diffs.items():
        specs[diff_key(param, to)] = (tensors[diff.key].torch_dtype, diff.shape)
    return specs



def convert_lora(src: PathLike, out: PathLike, *, to: str, alpha_if_missing: AlphaIfMissing = None,
                 force: bool = False) -> ConvertReport:
    """Write LoRA ``src`` in layout ``to`` (``musubi``, ``comfy`` or ``diffusers``).

    Args:
        src: a Wan LoRA in any layout :mod:`circle_rotate.tools.lora.keys` reads.
        out: the converted file (never ``src``).
        to: target layout.
        alpha_if_missing: see :func:`circle_rotate.tools.lora.files.module_scales`.
        force: replace an existing ``out``.

    Raises:
        UserError: unknown layout, not a Wan LoRA, ambiguous missing alpha, bad paths, a
            difference or LoHa/LoKr module the target layout cannot hold.
    """
    if to not in FORMATS:
        raise UserError(f"unknown target layout {to!r}", fix=f"use one of {', '.join(FORMATS)}")
    out_p = check_output_path(out, inputs=[src], force=force, suffix=".safetensors")
    index = read_lora_index(src)
    require_wan_lora(index)
    require_layout(index, to)
    # An alpha of 0 kept as it is (musubi) keeps its meaning; written as the rank (comfy) it is how
    # ComfyUI gets the scale musubi-tuner reads (the report says so); folded (diffusers) it needs asking.
    scales = module_scales(index, alpha_if_missing=alpha_if_missing, zero_alpha_as_rank=to in FORMATS_WITH_ALPHA)
    header = index.header
    written = {}  # module -> the alpha its file holds (layouts with alpha)
    for name, info in index.modules.items():
        if to in FORMATS_WITH_ALPHA:
            keep = info.alpha_key and not (to == "comfy" and info.alpha == 0)
            written[name] = float(info.alpha) if keep else scales[name] * info.rank
    # (a record copied as it was would contradict the tensors: inspect flags it, diffusers applies it)
    metadata = output_metadata(index.metadata, to, {n: i.rank for n, i in index.modules.items()}, written)
    with open(header.path, "rb") as fh, SafetensorsWriter(out_p, _specs(index, to), metadata=metadata) as writer:
        for name, info in index.modules.items():
            if to in FORMATS_WITH_ALPHA or scales[name] == 1.0:
                writer.write_raw(lora_key(name, "down", to), copy_raw(header, info.down_key, fh))
                writer.write_raw(lora_key(name, "up", to), copy_raw(header, info.up_key, fh))
            else:
                down, up = folded(load_module(index, name, fh=fh), scales[name])
                check_folded(out_p, name, to, down, up)
                writer.write(lora_key(name, "down", to), down)
                writer.write(lora_key(name, "up", to), up)
            if to in FORMATS_WITH_ALPHA:
                # musubi trains an alpha of 0 as alpha = rank (scale 1); ComfyUI applies 0 / rank = no change
                if info.alpha_key and not (to == "comfy" and info.alpha == 0):  # (scales: the rank, or as told)
                    writer.write_raw(lora_key(name, "alpha", to), copy_raw(header, info.alpha_key, fh))
                else:
                    writer.write(lora_key(name, "alpha", to), torch.tensor(scales[name] * info.rank, dtype=torch.float32))
        for name, product in index.products.items():
            for part, key in product.stored:
                writer.write_raw(product_key(name, part, to), copy_raw(header, key, fh))
        for param, diff in index.diffs.items():
            writer.write_raw(diff_key(param, to), copy_raw(header, diff.key, fh))
    if to not in FORMATS_WITH_ALPHA:
        rounded = sorted({str(header.tensors[info.down_key].torch_dtype).replace("torch.", "")
                          for name, info in index.modules.items() if math.frexp(scales[name])[0] != 0.5
                          and header.tensors[info.down_key].torch_dtype not in (torch.float32, torch.float64)})
        alpha = "folded into the weights" + (f" (rounded to {', '.join(rounded)}: the scale is not a power of two)"
                                             if rounded else " (exactly: each scale is a power of two)")
    else:
        zeros = sum(1 for i in index.modules.values() if i.alpha == 0)
        copied = sum(1 for i in index.modules.values() if i.alpha_key and not (to == "comfy" and i.alpha == 0))
        alpha = ("copied" if copied == len(index.modules) else "written (alpha = scale * rank)" if not copied else
                 f"{copied} copied, {len(index.modules) - copied} written (alpha = scale * rank)")
        if to == "comfy" and zeros:
            alpha += (f"; {zeros} alpha(s) of 0 written as the rank (scale 1, as musubi-tuner reads them; ComfyUI "
                      "reads 0 as no change)" if alpha_if_missing in (None, "rank") else
                      f"; {zeros} alpha(s) of 0 written as {alpha_if_missing:g}, as asked")
    from_metadata = sum(1 for i in index.modules.values() if i.alpha_key is None and i.alpha is not None)
    if from_metadata:  # (where the alpha came from: the input has no alpha tensors)
        alpha += f"; {from_metadata} alpha(s) read from lora_adapter_metadata, as Diffusers applies them"
    logger.info("converted %s (%s) -> %s (%s)", header.path, index.fmt, out_p, to)
    skips = sum(not comfy_applies(diff_key(param, to)) for param in index.diffs) if to == "comfy" else 0
    return ConvertReport(str(header.path), str(out_p), index.fmt, to, len(index.modules), alpha, len(index.diffs),
                         len(index.products), skips)

