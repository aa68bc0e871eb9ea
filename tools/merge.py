"""Merge LoRAs into a Wan expert, streaming: ``W' = W + sum(strength * alpha / rank * up @ down)``.

The base is memory-mapped (its pages are page cache, not process memory) and the output is
written tensor by tensor through :class:`circle_rotate.safetensors_io.SafetensorsWriter`, so
the process holds a few row chunks at a time, never a whole model or even a whole tensor.
Untouched tensors go from the map to the output file byte for byte. Touched ones are computed
in fp32 in row chunks on a small thread pool (torch releases the GIL) while the main thread
writes finished chunks in order; an fp8_scaled output first takes the maximum of the merged
tensor (one extra pass over its chunks) to get its per-tensor scale.

Output is atomic: any error, Ctrl-C or full disk removes the temporary file.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from circle_rotate.atomic import check_output_path
from circle_rotate.checkpoint_id import EXPERT_METADATA_KEY, identify_checkpoint
from circle_rotate.errors import UserError
from circle_rotate.progress import progress
from circle_rotate.safetensors_io import SafetensorsHeader, SafetensorsWriter, read_header, tensor_bytes
from circle_rotate.tools.fp8 import quantize, scale_from_max
from circle_rotate.tools.lora_io import AlphaIfMissing, load_module, module_scales, read_lora_index, require_wan_lora
from circle_rotate.tools.merge_plan import LoraSource, MergePlan, OutTensor, plan_merge
from circle_rotate.tools.pipeline import counted, pipelined, torch_threads

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
#: Elements per compute chunk: 1 MB of fp32 stays in cache across decode, addmm and encode, and
#: chunks this small are served from the allocator's free lists (no fresh pages to fault in).
CHUNK_ELEMS = 1 << 18
#: Bytes per write of an untouched tensor.
RAW_CHUNK = 32 << 20


@dataclass(frozen=True)
class MergeReport:
    """What a merge did (``to_dict`` for ``--json``)."""

    out: str
    base: str
    expert: Optional[str]
    dtype: str
    loras: List[Dict[str, object]]  # file, strength, modules merged
    tensors: int
    merged: int
    converted: int
    copied: int
    dropped: List[str]
    bytes: int
    seconds: float

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def _as_2d(t: torch.Tensor) -> torch.Tensor:
    rows = t.shape[0] if t.dim() else 1
    return t.reshape(rows, -1)


class _Executor:
    """Turns a :class:`MergePlan` into an ordered stream of output byte chunks."""

    def __init__(self, plan: MergePlan, mm: mmap.mmap, pool: ThreadPoolExecutor):
        self.plan, self.mm, self.pool = plan, mm, pool
        self.header: SafetensorsHeader = plan.base
        self.by_key = {t.key: t for t in plan.tensors}
        self.scales: Dict[str, torch.Tensor] = {}

    def view(self, key: str) -> torch.Tensor:
        info = self.header.tensors[key]
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=info.torch_dtype)
        return torch.frombuffer(self.mm, dtype=info.torch_dtype, count=info.numel,
                                offset=self.header.data_start + info.begin).reshape(info.shape)

    def _loaded_deltas(self, t: OutTensor) -> Tuple[Tuple[torch.Tensor, torch.Tensor, float], ...]:
        """(up, down, factor) in fp32 for each LoRA touching ``t``; a LoRA module is a few MB at most."""
        out = []
        for d in t.deltas:
            mod = load_module(self.plan.loras[d.lora].index, d.module)
            out.append((_as_2d(mod.up.float()), mod.down.float().reshape(mod.rank, -1), d.factor))
        return tuple(out)

    def _decoded(self, t: OutTensor, deltas, r0: int, r1: int) -> torch.Tensor:
        buf = _as_2d(self.view(t.src))[r0:r1].to(torch.float32, copy=True)  # never write into the map
        if t.src_scale is not None:
            buf.mul_(self.view(t.src_scale).float().reshape(()))
        for up, down, factor in deltas:
            buf.addmm_(up[r0:r1], down, alpha=factor)
        return buf

    def _encoded(self, t: OutTensor, deltas, scale, r0: int, r1: int) -> memoryview:
        buf = self._decoded(t, deltas, r0, r1)
        if t.encode == "fp8_scaled":
            return tensor_bytes(quantize(buf, scale, t.dtype))
        if t.encode == "fp8":
            return tensor_bytes(quantize(buf, None, t.dtype))
        return tensor_bytes(buf.to(t.dtype))

    def _row_ranges(self, t: OutTensor) -> List[Tuple[int, int]]:
        info = self.header.tensors[t.src]
        rows = info.shape[0] if info.shape else 1
        step = max(1, CHUNK_ELEMS // max(1, info.numel // max(rows, 1)))
        return [(r, min(r + step, rows)) for r in range(0, rows, step)] or [(0, 0)]

    def _max_abs(self, t: OutTensor, deltas, r0: int, r1: int) -> float:
        return float(self._decoded(t, deltas, r0, r1).abs().max()) if r1 > r0 else 0.0

    def scale_of(self, weight_key: str) -> torch.Tensor:
        """Per-tensor scale of a merged fp8_scaled weight: max |W'| / 448 (one pass over its chunks)."""
        if weight_key not in self.scales:
            t = self.by_key[weight_key]
            deltas = self._loaded_deltas(t)
            jobs = [self.pool.submit(self._max_abs, t, deltas, r0, r1) for r0, r1 in self._row_ranges(t)]
            self.scales[weight_key] = scale_from_max(max(f.result() for f in jobs), t.dtype)
        return self.scales[weight_key]

    def _raw_pieces(self, t: OutTensor) -> Iterator[Tuple[str, Union[memoryview, bytes]]]:
        # Slices of the map: the kernel copies page cache to page cache, nothing lands in our heap.
        info = self.header.tensors[t.src]
        start, end = self.header.data_start + info.begin, self.header.data_start + info.end
        if start == end:
            yield t.key, b""
        for a in range(start, end, RAW_CHUNK):
            yield t.key, memoryview(self.mm)[a:min(a + RAW_CHUNK, end)]

    def pieces(self) -> Iterator[Tuple[str, Union[memoryview, bytes, Callable[[], memoryview]]]]:
        """(key, bytes or a job making them) for every output tensor, in output order."""
        for t in self.plan.tensors:
            if t.kind == "marker":
                yield t.key, b""
            elif t.kind == "scale":
                yield t.key, tensor_bytes(self.scale_of(t.weight_key).reshape(t.shape).to(t.dtype))
            elif t.kind == "raw":
                yield from self._raw_pieces(t)
            else:
                scale = self.scale_of(t.key) if t.encode == "fp8_scaled" else None
                deltas = self._loaded_deltas(t)
                for r0, r1 in self._row_ranges(t):
                    yield t.key, partial(self._encoded, t, deltas, scale, r0, r1)


def execute_plan(plan: MergePlan, out: Path, *, workers: Optional[int] = None) -> None:
    """Write the merge ``plan`` to ``out`` atomically (the caller validated the path)."""
    workers = workers or min(4, os.cpu_count() or 1)
    specs = {t.key: (t.dtype, t.shape) for t in plan.tensors}
    with open(plan.base.path, "rb") as fh, torch_threads(1), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")  # the map is read-only on purpose
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        with contextlib.suppress(AttributeError, OSError):
            mm.madvise(mmap.MADV_SEQUENTIAL)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="merge")
        try:
            executor = _Executor(plan, mm, pool)
            bar = progress(total=plan.output_bytes, desc=f"merge -> {out.name}", unit="B", unit_scale=True)
            with bar, SafetensorsWriter(out, specs, metadata=plan.metadata) as writer:
                stream = pipelined(executor.pieces(), pool, depth=8 * workers)
                for key, group in groupby(stream, key=lambda kv: kv[0]):
                    writer.write_raw(key, counted(group, bar))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            with contextlib.suppress(BufferError):  # a view still referenced; the map closes when collected
                mm.close()


def load_sources(loras: Sequence[Tuple[PathLike, float]], *, alpha_if_missing: AlphaIfMissing = None) -> List[LoraSource]:
    """Read and check each ``(path, strength)`` LoRA (headers and alphas only)."""
    sources = []
    for path, strength in loras:
        index = read_lora_index(path)
        require_wan_lora(index)
        sources.append(LoraSource(index, float(strength), module_scales(index, alpha_if_missing=alpha_if_missing)))
    return sources


@dataclass(frozen=True)
class PreparedMerge:
    """A validated merge, ready to write (see :func:`prepare_merge`)."""

    plan: MergePlan
    out: Path


def prepare_merge(base: PathLike, loras: Sequence[Tuple[PathLike, float]], out: PathLike, *, dtype: str = "same",
                  alpha_if_missing: AlphaIfMissing = None, force: bool = False,
                  expert: Optional[str] = None) -> PreparedMerge:
    """Check every input and decide every output tensor; nothing is written.

    Args: as :func:`merge_loras`.

    Raises:
        UserError: bad paths, not a Wan base, a LoRA that does not fit, missing alpha.
    """
    if not loras:
        raise UserError("no LoRA given", fix="pass --lora FILE[:STRENGTH] at least once")
    out_p = check_output_path(out, inputs=[base, *(p for p, _ in loras)], force=force)
    header = read_header(base)
    identity = identify_checkpoint(header)
    if not identity.is_wan:
        raise UserError("not a Wan DiT checkpoint (no patch_embedding/blocks weights)", path=header.path,
                        fix="pass the expert model as --base and the LoRA as --lora (were they swapped?)")
    plan = plan_merge(header, identity, load_sources(loras, alpha_if_missing=alpha_if_missing), dtype=dtype, expert=expert)
    return PreparedMerge(plan, out_p)


def run_merge(prepared: PreparedMerge, *, workers: Optional[int] = None) -> MergeReport:
    """Write a :class:`PreparedMerge` and report what was done."""
    plan, out_p = prepared.plan, prepared.out
    start = time.perf_counter()
    execute_plan(plan, out_p, workers=workers)
    seconds = time.perf_counter() - start
    logger.info("merged %s into %s in %.1f s", ", ".join(str(s.index.path) for s in plan.loras), out_p, seconds)
    return MergeReport(
        out=str(out_p), base=str(plan.base.path), expert=plan.metadata.get(EXPERT_METADATA_KEY), dtype=plan.dtype,
        loras=[{"file": str(s.index.path), "strength": s.strength, "modules": n} for s, n in zip(plan.loras, plan.applied)],
        tensors=len(plan.tensors), merged=sum(1 for t in plan.tensors if t.deltas),
        converted=sum(1 for t in plan.tensors if t.kind == "compute" and not t.deltas),
        copied=plan.count("raw"), dropped=list(plan.dropped), bytes=plan.output_bytes, seconds=round(seconds, 3),
    )


def merge_loras(base: PathLike, loras: Sequence[Tuple[PathLike, float]], out: PathLike, *, dtype: str = "same",
                alpha_if_missing: AlphaIfMissing = None, force: bool = False, expert: Optional[str] = None,
                workers: Optional[int] = None) -> MergeReport:
    """Merge ``loras`` (path, strength) into the expert ``base`` and write ``out``.

    Args:
        base: a Wan DiT ``.safetensors`` (fp16/bf16/fp32/fp8_e4m3fn/fp8_scaled, with or without
            ComfyUI's ``model.diffusion_model.`` prefix).
        loras: LoRA files with their strengths, applied in order.
        out: output ``.safetensors``; never one of the inputs.
        dtype: ``same`` (the base's own representation) or fp16/bf16/fp32/fp8_e4m3fn/fp8_scaled.
        alpha_if_missing: see :func:`circle_rotate.tools.lora_io.module_scales`.
        force: replace an existing ``out``.
        expert: ``high``/``low`` to record in the output metadata (default: the base's, if known).
        workers: compute threads (default: the CPU count, at most 4).

    Returns:
        A :class:`MergeReport`.

    Raises:
        UserError: bad paths, not a Wan base, a LoRA that does not fit, missing alpha.
    """
    prepared = prepare_merge(base, loras, out, dtype=dtype, alpha_if_missing=alpha_if_missing, force=force, expert=expert)
    return run_merge(prepared, workers=workers)
