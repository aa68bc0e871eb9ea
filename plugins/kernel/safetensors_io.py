"""Safetensors without loading: read a header, stream tensors in, write one tensor at a time.

Wan2.2 experts are 28 GB in fp16, so nothing in this project loads a whole checkpoint.
:func:`read_header` parses only the JSON header (and checks it against the file size, so a
truncated download is caught before any work). :class:`SafetensorsWriter` writes the header
first, then each tensor's bytes as they are produced, through :func:`circle_rotate.kernel.atomic.atomic_path`,
so the peak memory is one tensor and a failure leaves no partial file.

Pickle checkpoints (``.pt``, ``.ckpt``, ``.pth``, ``.bin``) are never unpickled here.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import torch

from circle_rotate.kernel.atomic import atomic_path
from circle_rotate.kernel.direct_io import DirectWriter, read_at
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.input_files import require_file

PathLike = Union[str, os.PathLike]

#: safetensors dtype strings <-> torch dtypes.
DTYPES: Dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES: Dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
ITEM_SIZE: Dict[str, int] = {k: torch.tensor([], dtype=v).element_size() for k, v in DTYPES.items()}

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl")
# A header larger than this is not a real checkpoint (safetensors itself caps it at 100 MB).
_MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a safetensors header."""

    name: str
    dtype: str  # safetensors name, e.g. "F16"
    shape: Tuple[int, ...]
    begin: int  # offsets relative to the start of the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class SafetensorsHeader:
    """Everything a safetensors file says about itself without reading tensor data."""

    path: Path
    tensors: Dict[str, TensorInfo]
    metadata: Dict[str, str] = field(default_factory=dict)
    data_start: int = 0
    file_size: int = 0

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def keys(self):
        return self.tensors.keys()

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def largest_tensor_bytes(self) -> int:
        return max((t.nbytes for t in self.tensors.values()), default=0)

    @property
    def storage_order(self) -> List[str]:
        """Every tensor in file order (the order a streaming read wants)."""
        return sorted(self.tensors, key=lambda k: self.tensors[k].begin)

    # One file is a model of one shard: readers of sharded models (circle_rotate.kernel.shards) take either.
    @property
    def shards(self) -> Tuple["SafetensorsHeader"]:
        return (self,)

    def header_of(self, key: str) -> "SafetensorsHeader":
        return self


def refuse_pickle(path: PathLike) -> None:
    """Raise for pickle checkpoints: unpickling runs arbitrary code."""
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise UserError(
            f"'{p.suffix}' files are pickles and are never unpickled here",
            path=p,
            fix="convert it to .safetensors with a tool you trust, or download the .safetensors release",
        )


def _refuse_other_format(p: Path, head: bytes) -> None:
    """Name the formats a safetensors name can hide, by their magic bytes (else a misleading "truncated")."""
    if head.startswith(b"GGUF"):
        raise UserError("a GGUF file (a quantized model for ComfyUI-GGUF), not safetensors", path=p,
                        fix="merge into the fp16 or fp8_scaled .safetensors expert (circle-rotate download models) and "
                            "quantize the merged file with ComfyUI-GGUF's tools; or load the LoRA beside the GGUF "
                            "model in ComfyUI (LoraLoaderModelOnly)")
    if head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip, or a bare pickle
        raise UserError("a PyTorch pickle checkpoint, not safetensors (whatever its name says); it is never unpickled here",
                        path=p, fix="convert it to .safetensors with a tool you trust, or download the .safetensors release")


def read_header(path: PathLike) -> SafetensorsHeader:
    """Parse and validate a safetensors header, reading no tensor data.

    Raises:
        UserError: missing file, pickle suffix, truncated or malformed header, or tensor
            offsets past the end of the file (an interrupted download).
    """
    p = Path(path)
    refuse_pickle(p)
    require_file(p)
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise UserError(f"not a safetensors file ({size} bytes, too short for a header)", path=p,
                            fix="re-download or re-save the file")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            _refuse_other_format(p, head)  # only here: a real header length can start with any byte
            raise UserError(f"not a safetensors file or truncated (header of {n} bytes, file of {size})", path=p,
                            fix="re-download the file; an interrupted download leaves this")
        raw = fh.read(n)
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"safetensors header is not valid JSON ({exc})", path=p, fix="re-download or re-save the file") from None
    if not isinstance(obj, dict):
        raise UserError("safetensors header is not a JSON object", path=p, fix="re-download or re-save the file")
    metadata = obj.pop("__metadata__", None) or {}
    data_start = 8 + n
    tensors: Dict[str, TensorInfo] = {}
    bad = []
    for name, spec in obj.items():
        try:
            dtype = spec["dtype"]
            shape = tuple(int(s) for s in spec["shape"])
            begin, end = (int(o) for o in spec["data_offsets"])
        except (KeyError, TypeError, ValueError):
            bad.append(f"{name} (malformed entry)")
            continue
        if dtype not in DTYPES:
            bad.append(f"{name} (unknown dtype {dtype})")
            continue
        info = TensorInfo(name, dtype, shape, begin, end)
        if info.nbytes != info.numel * ITEM_SIZE[dtype]:
            bad.append(f"{name} (size does not match shape {list(shape)})")
        elif data_start + end > size:
            bad.append(f"{name} (data ends at byte {data_start + end}, file has {size})")
        tensors[name] = info
    if bad:
        shown = ", ".join(sorted(bad)[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise UserError(f"truncated or corrupt safetensors file: {shown}", path=p,
                        fix="re-download the file; an interrupted download or copy leaves this")
    return SafetensorsHeader(p, tensors, {str(k): str(v) for k, v in metadata.items()}, data_start, size)


def read_tensor(header: SafetensorsHeader, key: str, *, fh: Optional[BinaryIO] = None) -> torch.Tensor:
    """Read one tensor by seeking to it (no memory map of the whole file is kept).

    Args:
        header: from :func:`read_header`.
        key: tensor name.
        fh: an open binary handle on ``header.path`` to reuse across calls.
    """
    info = header.tensors.get(key)
    if info is None:
        raise UserError(f"key '{key}' not in file", path=header.path, fix="check the key name (circle-rotate inspect lists them)")
    own = fh is None
    handle = open(header.path, "rb") if own else fh
    try:
        handle.seek(header.data_start + info.begin)
        buf = bytearray(info.nbytes)
        if handle.readinto(buf) != info.nbytes:
            raise UserError(f"key '{key}' is cut short", path=header.path, fix="re-download the file")
    finally:
        if own:
            handle.close()
    return torch.frombuffer(buf, dtype=torch.uint8).view(info.torch_dtype).reshape(info.shape) if info.nbytes else \
        torch.empty(info.shape, dtype=info.torch_dtype)


def iter_tensors(header: SafetensorsHeader, keys=None) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` one at a time in file order, holding one tensor in memory."""
    wanted = list(header.tensors) if keys is None else list(keys)
    order = sorted(wanted, key=lambda k: header.tensors[k].begin)
    with open(header.path, "rb") as fh:
        for key in order:
            yield key, read_tensor(header, key, fh=fh)


@dataclass(frozen=True)
class FileSpan:
    """``nbytes`` of the open file ``fd`` from ``offset``: a :meth:`SafetensorsWriter.write_raw`
    chunk read straight into the output's buffers (untouched tensors of a base model)."""

    fd: int
    offset: int
    nbytes: int


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor as safetensors stores them."""
    t = t.detach().contiguous().cpu()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def _encoded_header(header: Mapping[str, object]) -> bytes:
    """The length prefix and JSON of a safetensors header, padded with spaces so that the data section
    starts 8-byte aligned, as the format does."""
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor, atomically.

    The full list of names, dtypes and shapes is given up front (so the header can be
    written first), then :meth:`write` is called once per tensor in that order.

    Example:
        >>> specs = {"a": (torch.float16, (2, 3))}
        >>> with SafetensorsWriter("out.safetensors", specs, metadata={"k": "v"}) as w:
        ...     w.write("a", torch.zeros(2, 3, dtype=torch.float16))
    """

    def __init__(self, path: PathLike, specs: Mapping[str, Tuple[torch.dtype, Tuple[int, ...]]], *,
                 metadata: Optional[Mapping[str, str]] = None, direct: bool = False):
        """``direct``: write through :class:`circle_rotate.kernel.direct_io.DirectWriter` (no page cache;
        for multi-GB outputs, where the cache costs more CPU than it saves)."""
        self.path = Path(path)
        self._direct = direct
        self._order = list(specs)
        self._specs = dict(specs)
        self._next = 0
        header: Dict[str, object] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        offset = 0
        for name in self._order:
            dtype, shape = specs[name]
            nbytes = ITEM_SIZE[DTYPE_NAMES[dtype]]
            for s in shape:
                nbytes *= int(s)
            header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": [int(s) for s in shape], "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        self._header = _encoded_header(header)
        self._data_bytes = offset
        self._ctx = None
        self._fh: Optional[BinaryIO] = None

    def __enter__(self) -> "SafetensorsWriter":
        self._ctx = atomic_path(self.path, size=len(self._header) + self._data_bytes)
        tmp = self._ctx.__enter__()
        try:
            self._fh = DirectWriter(tmp) if self._direct else open(tmp, "wb")
            self._fh.write(self._header)
        except BaseException as err:  # __exit__ will not run: drop the temporary file here (a full disk says so)
            if self._fh is not None:
                with contextlib.suppress(OSError):
                    self._fh.close()
            self._ctx.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor; it must be the next name, dtype and shape declared."""
        if self._next >= len(self._order) or self._order[self._next] != name:
            expected = self._order[self._next] if self._next < len(self._order) else "nothing"
            raise RuntimeError(f"SafetensorsWriter: got '{name}', expected {expected}")
        dtype, shape = self._specs[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
            raise RuntimeError(f"SafetensorsWriter: '{name}' is {tensor.dtype}{list(tensor.shape)}, declared {dtype}{list(shape)}")
        self._fh.write(tensor_bytes(tensor))
        self._next += 1

    def write_raw(self, name: str, chunks: Iterable[Union[bytes, memoryview, FileSpan]]) -> None:
        """Append the next tensor's stored bytes as they are (byte-for-byte copies of untouched tensors)."""
        if self._next >= len(self._order) or self._order[self._next] != name:
            raise RuntimeError(f"SafetensorsWriter: got '{name}' out of order")
        for chunk in chunks:
            if isinstance(chunk, FileSpan):
                self._copy_span(chunk)
            else:
                self._fh.write(chunk)
        self._next += 1

    def _copy_span(self, span: FileSpan) -> None:
        if isinstance(self._fh, DirectWriter):
            self._fh.copy_from(span.fd, span.offset, span.nbytes)
            return
        buf, done = memoryview(bytearray(min(span.nbytes, 32 << 20))), 0
        while done < span.nbytes:
            got = read_at(span.fd, buf[:span.nbytes - done], span.offset + done)
            if not got:
                raise OSError(errno.EIO, f"source ended {span.nbytes - done} bytes early")
            self._fh.write(buf[:got])
            done += got

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if isinstance(self._fh, DirectWriter):
                self._fh.close(discard=exc_type is not None)
            elif self._fh is not None:
                self._fh.close()
            if exc_type is None and self._next != len(self._order):
                missing = self._order[self._next]
                raise RuntimeError(f"SafetensorsWriter: '{missing}' was never written")
        except BaseException as err:  # a failed final write (a full disk) must not be renamed into place
            if exc_type is None:
                exc_type, exc, tb = type(err), err, err.__traceback__
            raise
        finally:
            self._ctx.__exit__(exc_type, exc, tb)
        return False


def copy_raw(header: SafetensorsHeader, key: str, fh: BinaryIO, *, chunk: int = 64 << 20) -> Iterator[bytes]:
    """Yield the stored bytes of ``key`` in chunks, for byte-for-byte copies."""
    info = header.tensors[key]
    fh.seek(header.data_start + info.begin)
    left = info.nbytes
    while left:
        data = fh.read(min(chunk, left))
        if not data:
            raise UserError(f"key '{key}' is cut short", path=header.path, fix="re-download the file")
        left -= len(data)
        yield data


def rewrite_metadata(path: PathLike, metadata: Mapping[str, str]) -> None:
    """Replace the ``__metadata__`` of the safetensors file at ``path`` with ``metadata``: the
    header is written anew (:func:`_encoded_header`), the tensor bytes
    copied as they are, and the file replaced atomically (a failure leaves it as it was)."""
    import shutil

    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        with atomic_path(path) as tmp, open(tmp, "wb") as out:
            out.write(_encoded_header(header))
            shutil.copyfileobj(fh, out, 16 << 20)

