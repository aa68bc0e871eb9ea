"""Distances between floats in units in the last place (ulps), for tests that compare two roundings."""

from __future__ import annotations

import torch


def ordered(t: torch.Tensor) -> torch.Tensor:
    """Map float bits to integers that are consecutive for neighbouring floats (sign-magnitude)."""
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()]
    raw = t.contiguous().view(bits).to(torch.int64)
    width = 8 * t.element_size()
    raw = raw & ((1 << width) - 1)
    sign = raw >> (width - 1)
    mag = raw & ((1 << (width - 1)) - 1)
    return torch.where(sign.bool(), -mag, mag)


def max_ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    assert a.dtype == b.dtype and a.shape == b.shape
    return int((ordered(a) - ordered(b)).abs().max())
