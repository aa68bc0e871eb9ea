"""What a learned metric needs before it can run: its package, its weights, a device.

Shared by :mod:`circle_rotate.eval.learned` (the registry's entries) and
:mod:`circle_rotate.eval.sam_drift` (the YOLO + SAM backend), which must not import each other.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

from circle_rotate.eval.context import EvalContext


class Unavailable(Exception):
    """A learned backend cannot run here; the message says what is missing and the fix."""


def _need(module: str, pip: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise Unavailable(f"the '{module}' package is not installed (pip install {pip})")


#: The learned metrics' weights a user can point at (``--weights NAME=PATH``): CLIP for clip_i,
#: YOLO and SAM for subject_drift_sam.
WEIGHT_NAMES = ("clip", "yolo", "sam")


def _weights(ctx: EvalContext, name: str) -> Optional[str]:
    value = dict(ctx.options.get("weights") or {}).get(name) or os.environ.get(f"CIRCLE_ROTATE_{name.upper()}_WEIGHTS")
    return str(value) if value else None


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
