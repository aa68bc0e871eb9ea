"""The streaming merge's arithmetic, one row range of one tensor at a time, on worker threads.

A chunk is decoded from the memory-mapped base into the worker's fp32 scratch buffer (fp8
dequantized with its scale), gets each LoRA's ``factor * up @ down`` added in place (``addmm_``),
and is encoded (cast, plain fp8 or scaled fp8) into an output buffer taken from a free list.
Measured on the real 14B shapes, what costs is memory traffic, not the rank-32 arithmetic, so:
the scratch pass is small enough to stay in the core's cache across decode, addmm and encode,
and output buffers are reused rather than allocated (fresh ones are page-faulted in, every
chunk). The per-tensor pieces (2-D view of the base, its scale, the deltas in fp32) are prepared
once per tensor, not per pass.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import List, NamedTuple, Optional, Tuple

import torch

from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.safetensors_io import tensor_bytes
from circle_rotate.tools.lora.lycoris import add_rows
from circle_rotate.tools.merge.fp8 import quantize_into

#: Elements per compute job: its output (2 MB in fp16) is one write.
JOB_ELEMS = 1 << 20
#: Elements per pass through a worker's fp32 scratch buffer: 512 KB stays in the core's cache
#: across decode, addmm and encode (larger passes measured slower: the addmm leaves the cache).
SCRATCH_ELEMS = 1 << 17


@dataclass(frozen=True)
class Source:
    """What one computed output tensor is made from."""

    weight: torch.Tensor  # the base tensor as stored, 2-D (rows, everything else), a view of the map
    scale: Optional[torch.Tensor]  # fp32 scalar that dequantizes an fp8_scaled base weight
    deltas: Tuple[Tuple[torch.Tensor, torch.Tensor, float], ...]  # (up, down, factor), fp32, 2-D
    dtype: torch.dtype  # output dtype
    encode: str  # "cast", "fp8" or "fp8_scaled" (see circle_rotate.tools.merge.plan.OutTensor)
    key: str = ""  # the output key, for errors
    diffs: Tuple[Tuple[torch.Tensor, float], ...] = ()  # (whole-tensor difference, factor), fp32, 2-D like weight
    products: Tuple[Tuple[str, Tuple[torch.Tensor, ...], float], ...] = ()  # (LoHa/LoKr kind, its factors, factor)


class Pooled(NamedTuple):
    """A computed chunk: ``data`` (the bytes to write) is a view of ``buf``, which goes back to
    :meth:`Chunks.release` once written."""

    data: memoryview
    buf: torch.Tensor


def as_2d(t: torch.Tensor) -> torch.Tensor:
    rows = t.shape[0] if t.dim() else 1
    return t.reshape(rows, t.numel() // rows if rows else 0)


def row_ranges(rows: int, cols: int, elems: int, r0: int = 0, r1: Optional[int] = None) -> List[Tuple[int, int]]:
    """Row ranges within ``r0:r1`` (default all ``rows``) of about ``elems`` elements each."""
    step = max(1, elems // max(1, cols))
    end = rows if r1 is None else r1
    return [(r, min(r + step, end)) for r in range(r0, end, step)]


#: Below this sum of squares every value is under 65504 in magnitude: finite, and in fp16's range.
_SAFE_SUM_SQUARES = 65504.0 ** 2


def _surely_finite(work: torch.Tensor) -> bool:
    """Fast test, one BLAS dot of the cache-resident pass (a sum of squares): True proves every value
    finite and within fp16's range; inf/NaN make it fail, as do large values (then check exactly)."""
    flat = work.view(-1)
    return float(torch.dot(flat, flat)) < _SAFE_SUM_SQUARES


def _refuse_non_finite(t: torch.Tensor, key: str, r0: int, r1: int) -> None:
    """The exact check, for the rare pass the fast test could not clear."""
    if not bool(torch.isfinite(t).all()):
        raise UserError(f"'{key}' would hold inf/NaN values in the output (rows {r0}-{r1 - 1}); nothing was written",
                        fix="check the LoRA and base with `circle-rotate inspect`; lower the strength, or write "
                            "--dtype bf16/fp32 if fp16's range (65504) is what overflowed")


class Chunks:
    """Per-thread scratch buffers and a free list of output buffers; methods are thread-safe."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._free: SimpleQueue = SimpleQueue()

    def release(self, chunk: Pooled) -> None:
        """Give a written chunk's buffer back for reuse."""
        self._free.put(chunk.buf)

    def encoded(self, src: Source, scale: Optional[torch.Tensor], r0: int, r1: int) -> Pooled:
        """Rows ``r0:r1`` of the merged tensor in the output dtype (``scale``: an fp8_scaled output's)."""
        shape = (r1 - r0, src.weight.shape[1])
        nbytes = shape[0] * shape[1] * src.dtype.itemsize
        buf = self._out_buffer(nbytes, src.dtype.itemsize)
        out = buf[:nbytes].view(src.dtype).view(shape)
        for a, b in row_ranges(*src.weight.shape, SCRATCH_ELEMS, r0, r1):
            work, dst = self._decoded(src, a, b), out[a - r0:b - r0]
            sure = _surely_finite(work)
            if src.encode == "cast":
                dst.copy_(work)
                if not sure:  # after the cast: an fp16 overflow is an inf there
                    _refuse_non_finite(dst, src.key, a, b)
            else:
                if not sure:  # before: fp8 encoding would clamp an inf to the maximum
                    _refuse_non_finite(work, src.key, a, b)
                quantize_into(dst, work, scale if src.encode == "fp8_scaled" else None)
        return Pooled(tensor_bytes(out), buf)

    def max_abs(self, src: Source, r0: int, r1: int) -> float:
        """max |W'| over rows ``r0:r1`` of the merged tensor (0 for no rows)."""
        return max((float(self._decoded(src, a, b).abs_().max())
                    for a, b in row_ranges(*src.weight.shape, SCRATCH_ELEMS, r0, r1)), default=0.0)

    def _decoded(self, src: Source, r0: int, r1: int) -> torch.Tensor:
        rows = src.weight[r0:r1]
        buf = self._scratch(rows.numel()).view(rows.shape).copy_(rows)  # never write into the map
        if src.scale is not None:
            buf.mul_(src.scale)
        for up, down, factor in src.deltas:
            buf.addmm_(up[r0:r1], down, alpha=factor)
        for diff, factor in src.diffs:
            buf.add_(diff[r0:r1], alpha=factor)
        for kind, parts, factor in src.products:
            add_rows(buf, kind, parts, r0, r1, factor)
        return buf

    def _scratch(self, numel: int) -> torch.Tensor:
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.numel() < numel:
            buf = self._local.buf = torch.empty(max(numel, SCRATCH_ELEMS), dtype=torch.float32)
        return buf[:numel]

    def _out_buffer(self, nbytes: int, itemsize: int) -> torch.Tensor:
        try:
            buf = self._free.get_nowait()
        except Empty:
            buf = None
        if buf is None or buf.numel() < nbytes:  # sized for any job of this dtype (a job <= JOB_ELEMS)
            buf = torch.empty(max(nbytes, JOB_ELEMS * itemsize), dtype=torch.uint8)
        return buf
