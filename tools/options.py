"""Option values of the LoRA and merge tools, parsed and listed without importing torch.

The command line builds every parser at start-up; what it needs then (dtype names for
``choices=``, the ``FILE[:STRENGTH]`` and ``--alpha-if-missing`` parsers) lives here so that
``circle-rotate --help`` does not pay for torch. The torch-side tables are derived from these
names in the modules that compute (:mod:`circle_rotate.tools.merge_plan`, :mod:`circle_rotate.tools.combine`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple, Union

from circle_rotate.errors import UserError

#: What a musubi/sd-scripts LoRA saved without alpha is taken to have: None (refuse), "rank" or a number.
AlphaIfMissing = Union[None, str, float]
#: ``--dtype`` of merge and merge-pair.
MERGE_DTYPES = ("same", "fp16", "bf16", "fp32", "fp8_e4m3fn", "fp8_scaled")
#: ``--dtype`` of combine, the default (exact) first.
COMBINE_DTYPE_NAMES = ("fp32", "fp16", "bf16")
#: Plain float dtype names -> their safetensors dtype (``circle_rotate.safetensors_io.DTYPES`` maps those to torch).
FLOAT_DTYPES: Dict[str, str] = {"fp16": "F16", "bf16": "BF16", "fp32": "F32"}


def parse_alpha_if_missing(text: Optional[str]) -> AlphaIfMissing:
    """CLI value -> ``None``, ``"rank"`` or a float (raises UserError for anything else)."""
    if text is None or text == "rank":
        return text
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--alpha-if-missing must be 'rank' or a number, not {text!r}", fix="e.g. --alpha-if-missing 1") from None
    if not value > 0:
        raise UserError(f"--alpha-if-missing must be positive, not {text}", fix="e.g. --alpha-if-missing 1")
    return value


def parse_lora_spec(text: str) -> Tuple[Path, float]:
    """``FILE[:STRENGTH]`` -> (path, strength); a suffix that is not a number stays part of the path.

    Raises:
        UserError: an empty file name.
    """
    path, strength = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            strength = float(tail)
            path = head
        except ValueError:
            pass
    if not path:
        raise UserError(f"no file in {text!r}", fix="write --lora FILE or --lora FILE:STRENGTH, e.g. lora.safetensors:0.8")
    return Path(path), strength
