"""Option values of the LoRA and merge tools, parsed and listed without importing torch.

The command line builds every parser at start-up; what it needs then (dtype names for
``choices=``, the ``FILE[:STRENGTH]`` and ``--alpha-if-missing`` parsers) lives here so that
``circle-rotate --help`` does not pay for torch. The torch-side tables are derived from these
names in the modules that compute (:mod:`circle_rotate.tools.merge.plan`, :mod:`circle_rotate.tools.lora.combine`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

from circle_rotate.kernel.errors import BadStrengthError, UserError

#: What a musubi/sd-scripts LoRA saved without alpha is taken to have: None (refuse), "rank" or a number.
AlphaIfMissing = Union[None, str, float]
#: ``--dtype`` of merge and merge-pair.
MERGE_DTYPES = ("same", "fp16", "bf16", "fp32", "fp8_e4m3fn", "fp8_scaled")
#: ``--dtype`` of combine, the default (exact) first.
COMBINE_DTYPE_NAMES = ("fp32", "fp16", "bf16")
#: Plain float dtype names -> their safetensors dtype (``circle_rotate.kernel.safetensors_io.DTYPES`` maps those to torch).
FLOAT_DTYPES: Dict[str, str] = {"fp16": "F16", "bf16": "BF16", "fp32": "F32"}


def parse_alpha_if_missing(text: Optional[str]) -> AlphaIfMissing:
    """CLI value -> ``None``, ``"rank"`` or a float (raises UserError for anything else)."""
    if text is None or text == "rank":
        return text
    try:
        value = float(text)
    except ValueError:
        raise BadStrengthError("--alpha-if-missing", text, "must be 'rank' or a number", fix="e.g. --alpha-if-missing 1") from None
    if not (math.isfinite(value) and value > 0):
        raise BadStrengthError("--alpha-if-missing", text, "must be a positive finite number", fix="e.g. --alpha-if-missing 1")
    return value


def parse_strength(text: str, *, key: str = "strength") -> float:
    """A LoRA strength: a finite number (``nan``, ``inf`` and ``1e309`` are refused, naming ``key``)."""
    try:
        value = float(text)
    except ValueError:
        raise BadStrengthError(key, text, "is not a number", fix="write FILE:STRENGTH with a number, e.g. lora.safetensors:0.8") from None
    if not math.isfinite(value):
        raise BadStrengthError(key, text)
    return value


def check_scale_fits(key: str, value: float, scale: float, *, limit: float, dtype: str) -> None:
    """Refuse a strength whose ``|strength * alpha / rank|`` alone passes ``limit``, the largest
    finite value of the output ``dtype``: every weight it touches would be written as inf."""
    if abs(value * scale) > limit:
        raise BadStrengthError(key, value, f"times the LoRA's scale {scale:g} overflows {dtype} (max {limit:g})",
                               fix="use a strength around 1 (0.5-1.5 is the usual range)")


def parse_lora_spec(text: str) -> Tuple[Path, float]:
    """``FILE[:STRENGTH]`` -> (path, strength). A suffix after the last ``:`` is the strength
    unless the whole text names an existing file or the suffix looks like a path (``C:\\x``, ``a:b/c``).

    Raises:
        UserError: an empty file name.
        BadStrengthError: a strength that is not a finite number.
    """
    path, strength = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head and not Path(text).exists() and not any(c in tail for c in "/\\"):
        strength = parse_strength(tail, key=f"--lora {head} strength")
        path = head
    if not path:
        raise UserError(f"no file in {text!r}", fix="write --lora FILE or --lora FILE:STRENGTH, e.g. lora.safetensors:0.8")
    return Path(path), strength
