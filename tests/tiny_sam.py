"""A randomly initialised Segment Anything of the reference's architecture (ViT encoder, prompt
encoder, two-way mask decoder), small enough for a CPU test, used through segment-anything's
own ``SamPredictor``.

segment-anything imports two torchvision helpers at module level. No torchvision wheel works
with the CPU torch this project tests on (its compiled operators fail to load), so when
``import torchvision`` fails, :func:`torchvision_shim` puts a stand-in in ``sys.modules`` that
does what torchvision does for the one call path the predictor takes: ``to_pil_image`` on an
(H, W, 3) uint8 array is ``PIL.Image.fromarray``, and ``resize`` of a PIL image to (h, w) is
``img.resize((w, h), BILINEAR)``. The mask generator's NMS is never called here.
"""

from __future__ import annotations

import contextlib
import sys
import types
from typing import Iterator

import numpy as np


def _stub() -> dict:
    from PIL import Image

    def to_pil_image(pic, mode=None):
        arr = np.asarray(pic)
        if arr.ndim != 3 or arr.dtype != np.uint8:
            raise NotImplementedError("the shim handles (H, W, C) uint8 arrays only")
        return Image.fromarray(arr, mode)

    def resize(img, size, interpolation=None, max_size=None, antialias=True):
        if not isinstance(img, Image.Image) or len(size) != 2:
            raise NotImplementedError("the shim resizes PIL images to an explicit (h, w) only")
        return img.resize((int(size[1]), int(size[0])), Image.BILINEAR)

    def not_here(*_a, **_k):
        raise NotImplementedError("torchvision shim: not needed by SamPredictor")

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.resize, functional.to_pil_image = resize, to_pil_image
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    boxes.batched_nms = boxes.box_area = not_here
    tv.transforms, transforms.functional, tv.ops, ops.boxes = transforms, functional, ops, boxes
    return {"torchvision": tv, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional,
            "torchvision.ops": ops, "torchvision.ops.boxes": boxes}


@contextlib.contextmanager
def torchvision_shim() -> Iterator[bool]:
    """Make ``segment_anything`` importable; yields whether the stand-in is in use."""
    try:
        # the names segment-anything takes; another test's bare torchvision stub has none of them
        from torchvision.transforms.functional import resize, to_pil_image  # noqa: F401
        real = True
    except Exception:  # missing, or present but its operators do not load on this torch
        real = False
    if real:
        yield False
        return
    saved = {k: sys.modules.get(k) for k in list(sys.modules) if k == "torchvision" or k.startswith("torchvision.")}
    stub = _stub()
    sys.modules.update(stub)
    try:
        yield True
    finally:
        for k in stub:
            sys.modules.pop(k, None)
        sys.modules.update({k: v for k, v in saved.items() if v is not None})


def tiny_sam(seed: int = 0):
    """A segment-anything ``Sam`` (image size 1024, patch 16, as ViT-B) with a 2-block, 32-wide
    encoder, random weights from ``seed``; needs :func:`torchvision_shim` active on import."""
    import torch
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(seed)
    sam = _build_sam(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1])
    return sam.eval()
