"""Resize a LoRA to a smaller rank by SVD, reporting how much of each delta is lost.

For ``delta = up @ down`` (rank r) the best rank-k approximation in the Frobenius norm keeps
the k largest singular values (Eckart-Young). The SVD is taken without forming the
``out x in`` delta: with ``up = Qu Ru`` and ``down^T = Qd Rd`` (thin QR), ``delta = Qu (Ru Rd^T) Qd^T``
and only the r x r middle needs an SVD. The scale ``alpha / rank`` is kept (``alpha`` becomes
``alpha * k / r``), so the new factors have the magnitudes of the old ones. A module's delta has
rank at most ``min(out, in)`` (Wan2.2's ``head.head`` has 64 rows), so a module is kept at that where
it is below the rank asked for, exactly. Whole-tensor differences (:mod:`circle_rotate.tools.lora.diffs`)
have no rank and are written unchanged.
"""

from __future__ import annotations

import logging
import os
import statistics
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Tuple, Union

import torch

from circle_rotate.kernel.atomic import check_output_path
from circle_rotate.kernel.errors import UserError
from circle_rotate.tools.lora.files import (AlphaIfMissing, LoraModule, load_diffs, module_scales, read_lora_index,
                                         require_layout, require_lora_only, require_wan_lora, resolved_modules, write_lora)
from circle_rotate.tools.lora.keys import FORMATS

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class ResizeReport:
    src: str
    out: str
    format: str
    rank: int
    modules: int
    resized: int
    rel_error: Dict[str, float]  # min / mean / max over resized modules
    worst: List[Tuple[str, float]]
    per_module: Dict[str, float]
    ranks: Dict[int, int] = field(default_factory=dict)  # rank -> modules, as written (some may be below `rank`)

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def _gram_inner(u1: torch.Tensor, d1: torch.Tensor, u2: torch.Tensor, d2: torch.Tensor) -> float:
    """<u1 @ d1, u2 @ d2> (Frobenius) from small products only."""
    return float(((u1.T @ u2) * (d1 @ d2.T)).sum())


def svd_truncate(up: torch.Tensor, down: torch.Tensor, rank: int) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-``rank`` factors of ``up @ down`` (2-D, float64 maths).

    Args:
        up: (out, r); down: (r, in).
        rank: the new rank (< r).

    Returns:
        (up_k, down_k, relative Frobenius error of the truncation, ``||dropped||/||delta||``). The factors
        have ``min(rank, out, in)`` columns/rows: the delta has no more singular values than that.
    """
    u, d = up.double(), down.double()
    qu, ru = torch.linalg.qr(u)
    qd, rd = torch.linalg.qr(d.T)
    # thin: the middle is min(out, r) x min(in, r), which is smaller than ``rank`` when out or in is (a
    # full_matrices SVD then gives more rows of vh than singular values, and the products do not chain)
    p, s, vh = torch.linalg.svd(ru @ rd.T, full_matrices=False)
    rank = min(rank, s.shape[0])
    root = s[:rank].sqrt()
    up_k = (qu @ p[:, :rank]) * root
    down_k = root[:, None] * (vh[:rank] @ qd.T)
    total = float((s ** 2).sum())
    err = (float((s[rank:] ** 2).sum()) / total) ** 0.5 if total > 0 else 0.0
    return up_k, down_k, err


def relative_error(up: torch.Tensor, down: torch.Tensor, up_k: torch.Tensor, down_k: torch.Tensor) -> float:
    """``||up @ down - up_k @ down_k|| / ||up @ down||`` without forming either product."""
    u, d, uk, dk = (t.double() for t in (up, down, up_k, down_k))
    a, b, ab = _gram_inner(u, d, u, d), _gram_inner(uk, dk, uk, dk), _gram_inner(u, d, uk, dk)
    return (max(a + b - 2 * ab, 0.0) / a) ** 0.5 if a > 0 else 0.0


def resize_module(mod: LoraModule, rank: int) -> Tuple[LoraModule, float]:
    """``mod`` at ``rank`` (unchanged when already that small; at ``min(out, in)`` where that is smaller,
    see :func:`svd_truncate`) and its measured relative error after casting back to the stored dtype."""
    if mod.rank <= rank:
        return mod, 0.0
    up2, down2 = mod.up.reshape(mod.up.shape[0], mod.rank), mod.down.reshape(mod.rank, -1)
    up_k, down_k, _ = svd_truncate(up2.float(), down2.float(), rank)
    rank = int(down_k.shape[0])  # what was kept; alpha follows it so that the scale alpha / rank stays
    up_k = up_k.to(mod.up.dtype).reshape(mod.up.shape[0], rank, *mod.up.shape[2:])
    down_k = down_k.to(mod.down.dtype).reshape(rank, *mod.down.shape[1:])
    err = relative_error(up2, down2, up_k.reshape(up_k.shape[0], rank), down_k.reshape(rank, -1))
    return LoraModule(mod.module, down_k.contiguous(), up_k.contiguous(), mod.alpha * rank / mod.rank), err


def resize_lora(src: PathLike, out: PathLike, *, rank: int, to: str = "", alpha_if_missing: AlphaIfMissing = None,
                force: bool = False) -> ResizeReport:
    """Write ``src`` with every module of a larger rank reduced to ``rank``.

    Args:
        src: a Wan LoRA (any layout).
        out: the resized LoRA (never ``src``).
        rank: the new rank (>= 1).
        to: output layout; default the input's (``musubi`` for a mixed file).
        alpha_if_missing: see :func:`circle_rotate.tools.lora.files.module_scales`.
        force: replace an existing ``out``.

    Raises:
        UserError: bad rank or layout, not a Wan LoRA, ambiguous missing alpha, bad paths.
    """
    if rank < 1:
        raise UserError(f"--rank must be at least 1, not {rank}", fix="e.g. --rank 16")
    out_p = check_output_path(out, inputs=[src], force=force, suffix=".safetensors")
    index = read_lora_index(src)
    require_wan_lora(index)
    fmt = to or (index.fmt if index.fmt in FORMATS else "musubi")
    if fmt not in FORMATS:
        raise UserError(f"unknown layout {fmt!r}", fix=f"use one of {', '.join(FORMATS)}")
    require_lora_only(index, "resize")
    require_layout(index, fmt)
    modules = resolved_modules(index, module_scales(index, alpha_if_missing=alpha_if_missing))
    errors: Dict[str, float] = {}
    resized = {}
    for name, mod in modules.items():
        resized[name], err = resize_module(mod, rank)
        if mod.rank > rank:
            errors[name] = err
    # The ranks the file holds, not the one asked for: modules already at or below it are kept as they are, and
    # a module's rank stops at min(out, in). write_lora fills these records in from what it writes (ranks that
    # differ get sd-scripts' "Dynamic", networks/resize_lora.py, as no one number is true), and rewrites or
    # drops diffusers' lora_adapter_metadata, whose r would no longer match the tensors.
    metadata = dict(index.metadata)
    if resized:  # (present, so filled in)
        metadata.update(ss_network_dim="", ss_network_alpha="")
    write_lora(out_p, resized, fmt=fmt, metadata=metadata, diffs=load_diffs(index))
    values = list(errors.values())
    summary = {"min": min(values), "mean": statistics.fmean(values), "max": max(values)} if values else {}
    ranks: Dict[int, int] = {}
    for mod in resized.values():
        ranks[mod.rank] = ranks.get(mod.rank, 0) + 1
    logger.info("resized %d of %d modules to rank %d", len(errors), len(modules), rank)
    return ResizeReport(str(index.path), str(out_p), fmt, rank, len(modules), len(errors), summary,
                        sorted(errors.items(), key=lambda kv: -kv[1])[:3], errors, dict(sorted(ranks.items())))
