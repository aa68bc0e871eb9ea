"""Merge LoRAs into a Wan expert, streaming: ``W' = W + sum(strength * alpha / rank * up @ down)``, plus
``strength * diff`` for a LoRA's whole-tensor differences (:mod:`circle_rotate.tools.lora.diffs`) and
``strength * scale * delta`` for its LoHa and LoKr modules (:mod:`circle_rotate.tools.lora.lycoris`).

The base is memory-mapped (its pages are page cache, not process memory) and the output is
written tensor by tensor through :class:`circle_rotate.kernel.safetensors_io.SafetensorsWriter`, so
the process holds a few row chunks at a time, never a whole model or even a whole tensor.
Untouched tensors are read byte for byte straight into the output's buffers. Touched ones are
computed in fp32 in row chunks on a small thread pool (torch releases the GIL; the arithmetic is
:mod:`circle_rotate.tools.merge.chunks`) while the main thread hands finished chunks in order to
a direct-I/O writer (:mod:`circle_rotate.kernel.direct_io`): the disk writes while we compute, and no
CPU goes into copying GBs through the page cache. An fp8_scaled output first takes the maximum
of the merged tensor (one extra pass over its chunks) to get its per-tensor scale.

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
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from circle_rotate.kernel.atomic import check_output_path
from circle_rotate.kernel.disk_space import short_disks
from circle_rotate.kernel.checkpoint_identity import EXPERT_METADATA_KEY, identify_checkpoint
from circle_rotate.kernel.errors import DiskFullError, UserError
from circle_rotate.kernel.progress import progress
from circle_rotate.kernel.safetensors_io import FileSpan, SafetensorsWriter, tensor_bytes
from circle_rotate.kernel.shards import AnyHeader, read_checkpoint
from circle_rotate.kernel.write_checks import device_of
from circle_rotate.tools.lora.files import (AlphaIfMissing, load_diff, load_module, load_product, module_scales,
                                         read_lora_index, require_wan_lora)
from circle_rotate.tools.lora.lycoris import factors
from circle_rotate.tools.merge.chunks import JOB_ELEMS, Chunks, Pooled, Source, as_2d, row_ranges
from circle_rotate.tools.merge.delta_sketch import delta_sketch
from circle_rotate.tools.merge.fp8 import fp8_layout, scale_from_max
from circle_rotate.tools.merge.ordered_pipeline import pipelined, torch_threads
from circle_rotate.tools.merge.plan import BaseInfo, LoraSource, MergePlan, OutTensor, plan_merge
from circle_rotate.tools.merge.provenance import check_experts_agree, check_not_merged_again
from circle_rotate.tools.merge.renamed_base import RenamedHeader, wan_named
from circle_rotate.tools.option_values import check_scale_fits

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
#: Bytes per read of an untouched tensor (the progress bar advances by them).
RAW_CHUNK = 32 << 20


@dataclass(frozen=True)
class MergeReport:
    """What a merge did (``to_dict`` for ``--json``)."""

    out: str
    base: str
    expert: Optional[str]
    dtype: str
    loras: List[Dict[str, object]]  # file, strength, modules and differences merged, keys skipped
    tensors: int
    merged: int
    converted: int
    copied: int
    dropped: List[str]
    bytes: int
    seconds: float

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


class _Executor:
    """Turns a :class:`MergePlan` into an ordered stream of output byte chunks."""

    def __init__(self, plan: MergePlan, maps: Dict[Path, Tuple[mmap.mmap, int]], pool: ThreadPoolExecutor):
        self.plan, self.maps, self.pool = plan, maps, pool  # per base file (one, or each shard): its map and descriptor
        self.header: AnyHeader = plan.base
        self.by_key = {t.key: t for t in plan.tensors}
        self.scales: Dict[str, torch.Tensor] = {}
        self.chunks = Chunks()

    def view(self, key: str) -> torch.Tensor:
        info, shard = self.header.tensors[key], self.header.header_of(key)
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=info.torch_dtype)
        return torch.frombuffer(self.maps[shard.path][0], dtype=info.torch_dtype, count=info.numel,
                                offset=shard.data_start + info.begin).reshape(info.shape)

    def source(self, t: OutTensor) -> Source:
        """The base view, its scale and the deltas of ``t`` (a LoRA module is a few MB at most)."""
        deltas, diffs, products = [], [], []
        for d in t.deltas:
            index = self.plan.loras[d.lora].index
            if d.kind == "diff":
                diffs.append((as_2d(load_diff(index, d.module).float()), d.factor))
            elif d.kind in ("loha", "lokr"):
                products.append((d.kind, factors(d.kind, load_product(index, d.module)), d.factor))
            else:
                mod = load_module(index, d.module)
                deltas.append((as_2d(mod.up.float()), mod.down.float().reshape(mod.rank, -1), d.factor))
        scale = self.view(t.src_scale).float().reshape(()) if t.src_scale is not None else None
        return Source(as_2d(self.view(t.src)), scale, tuple(deltas), t.dtype, t.encode, t.key, tuple(diffs), tuple(products))

    def scale_of(self, weight_key: str) -> torch.Tensor:
        """Per-tensor scale of a merged fp8_scaled weight: max |W'| / 448 (one pass over its chunks)."""
        if weight_key not in self.scales:
            t = self.by_key[weight_key]
            src = self.source(t)
            jobs = [self.pool.submit(self.chunks.max_abs, src, r0, r1)
                    for r0, r1 in row_ranges(*src.weight.shape, JOB_ELEMS)]
            self.scales[weight_key] = scale_from_max(max((f.result() for f in jobs), default=0.0), t.dtype)
        return self.scales[weight_key]

    def _raw_pieces(self, t: OutTensor) -> Iterator[Tuple[str, Union[FileSpan, bytes]]]:
        info, shard = self.header.tensors[t.src], self.header.header_of(t.src)
        start, end = shard.data_start + info.begin, shard.data_start + info.end
        fd = self.maps[shard.path][1]
        if start == end:
            yield t.key, b""
        for a in range(start, end, RAW_CHUNK):
            yield t.key, FileSpan(fd, a, min(RAW_CHUNK, end - a))

    def pieces(self) -> Iterator[Tuple[str, Union[memoryview, bytes, FileSpan, Callable[[], Pooled]]]]:
        """(key, bytes or a job making them) for every output tensor, in output order."""
        for t in self.plan.tensors:
            if t.kind == "marker":
                yield t.key, b""
            elif t.kind == "const":
                yield t.key, tensor_bytes(torch.full(t.shape, t.value, dtype=t.dtype))
            elif t.kind == "scale":
                yield t.key, tensor_bytes(self.scale_of(t.weight_key).reshape(t.shape).to(t.dtype))
            elif t.kind == "raw":
                yield from self._raw_pieces(t)
            else:
                scale = self.scale_of(t.key) if t.encode == "fp8_scaled" else None
                src = self.source(t)
                for r0, r1 in row_ranges(*src.weight.shape, JOB_ELEMS) or [(0, 0)]:
                    yield t.key, partial(self.chunks.encoded, src, scale, r0, r1)

    def written(self, group: Iterable[Tuple[str, object]], bar) -> Iterator[Union[bytes, memoryview, FileSpan]]:
        """The chunks of one tensor for the writer, advancing ``bar``; a computed chunk's buffer is
        reused once the writer, which consumes each chunk before asking for the next, is done with it."""
        for _, piece in group:
            data = piece.data if isinstance(piece, Pooled) else piece
            yield data
            bar.update(data.nbytes if isinstance(data, (memoryview, FileSpan)) else len(data))
            if isinstance(piece, Pooled):
                self.chunks.release(piece)


def execute_plan(plan: MergePlan, out: Path, *, workers: Optional[int] = None) -> None:
    """Write the merge ``plan`` to ``out`` atomically (the caller validated the path)."""
    workers = workers or min(4, os.cpu_count() or 1)
    specs = {t.key: (t.dtype, t.shape) for t in plan.tensors}
    with contextlib.ExitStack() as files, torch_threads(1), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")  # the maps are read-only on purpose
        maps: Dict[Path, Tuple[mmap.mmap, int]] = {}
        for shard in plan.base.shards:
            fh = files.enter_context(open(shard.path, "rb"))
            maps[shard.path] = (mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), fh.fileno())
            with contextlib.suppress(AttributeError, OSError):
                maps[shard.path][0].madvise(mmap.MADV_SEQUENTIAL)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="merge")
        try:
            executor = _Executor(plan, maps, pool)
            bar = progress(total=plan.output_bytes, desc=f"merge -> {out.name}", unit="B", unit_scale=True)
            with bar, SafetensorsWriter(out, specs, metadata=plan.metadata, direct=True) as writer:
                stream = pipelined(executor.pieces(), pool, depth=8 * workers)
                for key, group in groupby(stream, key=lambda kv: kv[0]):
                    writer.write_raw(key, executor.written(group, bar))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for mm, _ in maps.values():
                with contextlib.suppress(BufferError):  # a view still referenced; the map closes when collected
                    mm.close()


def load_sources(loras: Sequence[Tuple[PathLike, float]], *, alpha_if_missing: AlphaIfMissing = None) -> List[LoraSource]:
    """Read and check each ``(path, strength)`` LoRA, and sketch its delta for the output's record
    (:mod:`circle_rotate.tools.merge.delta_sketch`: module by module, small beside the merge)."""
    sources = []
    for path, strength in loras:
        index = read_lora_index(path)
        require_wan_lora(index)
        scales = module_scales(index, alpha_if_missing=alpha_if_missing)
        sources.append(LoraSource(index, float(strength), scales, delta_sketch(index, scales)))
    return sources


@dataclass(frozen=True)
class PreparedMerge:
    """A validated merge, ready to write (see :func:`prepare_merge`)."""

    plan: MergePlan
    out: Path


def read_base(path: PathLike) -> BaseInfo:
    """Read the base's header once, tell what it is and where its fp8 scales are: everything the
    plan is decided from (the merge then only executes it). A Diffusers-format expert is read under
    Wan's names (:mod:`circle_rotate.tools.merge.renamed_base`).

    Raises:
        UserError: unreadable, not a safetensors file, not a Wan DiT, or a Diffusers tensor with no Wan name.
    """
    header = read_checkpoint(path)
    identity = identify_checkpoint(header)
    if not identity.is_wan:
        raise UserError("not a Wan DiT checkpoint (no patch_embedding/blocks weights)", path=header.path,
                        fix="give the expert model where the EXPERT goes and the LoRA as the LoRA (were they swapped?)")
    if identity.layout == "diffusers":  # read under Wan's names, so LoRAs match and the output is Wan's layout
        header = wan_named(header)
        identity = identify_checkpoint(header)
    return BaseInfo(header, identity, fp8_layout(header, identity.key_prefix))


def prepare_merge(base: Union[PathLike, BaseInfo], loras: Sequence[Tuple[PathLike, float]], out: PathLike, *,
                  dtype: str = "same", alpha_if_missing: AlphaIfMissing = None, force: bool = False,
                  expert: Optional[str] = None, skip_absent: bool = False,
                  ignore_expert_evidence: bool = False, strength_flags: Optional[Sequence[str]] = None) -> PreparedMerge:
    """Check every input and decide every output tensor; nothing is written.

    Args: as :func:`merge_loras`; ``base`` may also be a :func:`read_base` result already read.
        ``ignore_expert_evidence``: merge a LoRA whose metadata or name says the other expert.
        ``strength_flags``: the option each LoRA's strength came from, for messages (default ``--lora NAME``).

    Raises:
        UserError: bad paths, not a Wan base, a LoRA that does not fit, missing alpha, or nothing to do.
    """
    base_path = base.header.path if isinstance(base, BaseInfo) else base
    out_p = check_output_path(out, inputs=[base_path, *(p for p, _ in loras)], force=force, suffix=".safetensors")
    info = base if isinstance(base, BaseInfo) else read_base(base)
    check_output_path(out_p, inputs=[s.path for s in info.header.shards], force=force)  # a sharded base: each shard
    if not loras and dtype == "same" and len(info.header.shards) == 1 and not isinstance(info.header, RenamedHeader):
        raise UserError("nothing to do: no LoRA to merge, and --dtype same keeps the expert as it is",
                        path=info.header.path, fix="pass --lora FILE to merge one, or --dtype fp16, bf16 or fp8_scaled "
                                                   "to convert the expert")
    sources = load_sources(loras, alpha_if_missing=alpha_if_missing)
    indexes = [s.index for s in sources]
    check_not_merged_again(info.header.metadata, indexes, Path(info.header.path).name, [s.sketch for s in sources],
                           strengths=[s.strength for s in sources])
    if not ignore_expert_evidence:
        check_experts_agree(info.identity, indexes, Path(info.header.path).name)
    plan = plan_merge(info, sources, dtype=dtype, expert=expert, skip_absent=skip_absent)
    _check_strengths_fit(plan, strength_flags)
    _check_free_space(plan, out_p)
    return PreparedMerge(plan, out_p)


def _check_free_space(plan: MergePlan, out: Path) -> None:
    """Refuse before writing when ``out``'s disk cannot take the merged file (an old output
    replaced with --force stays until the new one is complete, so the whole file is needed);
    the error names the shortfall, as a disk that filled up while writing would."""
    short = short_disks([(out.parent, plan.output_bytes)])
    if short:
        _, need, free = short[0]
        raise DiskFullError(out, device=device_of(out.parent), need_gb=(need - free) / 1e9)


def _check_strengths_fit(plan: MergePlan, flags: Optional[Sequence[str]] = None) -> None:
    merged = [t.dtype for t in plan.tensors if t.deltas and t.encode != "fp8_scaled"]  # fp8_scaled rescales per tensor
    if merged:
        narrow = min(merged, key=lambda d: torch.finfo(d).max)
        for i, s in enumerate(plan.loras):
            products = [p.scale for p in s.index.products.values()]
            largest = max([*s.scales.values(), *products, *([1.0] if s.index.diffs else [])], default=0.0)  # a difference: scale 1
            check_scale_fits(flags[i] if flags else f"--lora {s.index.path.name} strength", s.strength, largest,
                             limit=torch.finfo(narrow).max, dtype=str(narrow).replace("torch.", ""))


def run_merge(prepared: PreparedMerge, *, workers: Optional[int] = None) -> MergeReport:
    """Write a :class:`PreparedMerge` and report what was done."""
    plan, out_p = prepared.plan, prepared.out
    start = time.perf_counter()
    execute_plan(plan, out_p, workers=workers)
    seconds = time.perf_counter() - start
    logger.info("wrote %s (%s) in %.1f s", out_p, "merged " + ", ".join(str(s.index.path) for s in plan.loras)
                if plan.loras else "converted, no LoRA", seconds)
    return MergeReport(
        out=str(out_p), base=str(plan.base.path), expert=plan.metadata.get(EXPERT_METADATA_KEY), dtype=plan.dtype,
        loras=[{"file": str(s.index.path), "strength": s.strength, "modules": n, "diffs": d, "skipped": list(k)}
               for s, n, d, k in zip(plan.loras, plan.applied, plan.applied_diffs, plan.skipped)],
        tensors=len(plan.tensors), merged=sum(1 for t in plan.tensors if t.deltas),
        converted=sum(1 for t in plan.tensors if t.kind == "compute" and not t.deltas),
        copied=plan.count("raw"), dropped=list(plan.dropped), bytes=plan.output_bytes, seconds=round(seconds, 3),
    )


def merge_loras(base: PathLike, loras: Sequence[Tuple[PathLike, float]], out: PathLike, *, dtype: str = "same",
                alpha_if_missing: AlphaIfMissing = None, force: bool = False, expert: Optional[str] = None,
                workers: Optional[int] = None, skip_absent: bool = False,
                ignore_expert_evidence: bool = False) -> MergeReport:
    """Merge ``loras`` (path, strength) into the expert ``base`` and write ``out``; with no LoRA,
    only convert it (join a sharded base into one file, change its dtype).

    Args:
        base: a Wan DiT ``.safetensors`` (fp16/bf16/fp32/fp8_e4m3fn/fp8_scaled, with or without
            ComfyUI's ``model.diffusion_model.`` prefix).
        loras: LoRA files with their strengths, applied in order (none: convert only).
        out: output ``.safetensors``; never one of the inputs.
        dtype: ``same`` (the base's own representation) or fp16/bf16/fp32/fp8_e4m3fn/fp8_scaled.
        alpha_if_missing: see :func:`circle_rotate.tools.lora.files.module_scales`.
        force: replace an existing ``out``.
        expert: ``high``/``low`` to record in the output metadata (default: the base's, if known).
        workers: compute threads (default: the CPU count, at most 4).
        skip_absent: see :func:`circle_rotate.tools.merge.plan.plan_merge`.
        ignore_expert_evidence: merge a LoRA whose metadata or name says it is for the other
            expert than the base's (see :mod:`circle_rotate.tools.merge.provenance`).

    Returns:
        A :class:`MergeReport`.

    Raises:
        UserError: bad paths, not a Wan base, a LoRA that does not fit, missing alpha, a LoRA
            for the other expert or one the base already holds, or nothing to do (no LoRA, one
            file, ``dtype`` same).
    """
    prepared = prepare_merge(base, loras, out, dtype=dtype, alpha_if_missing=alpha_if_missing, force=force, expert=expert,
                             skip_absent=skip_absent, ignore_expert_evidence=ignore_expert_evidence)
    return run_merge(prepared, workers=workers)

