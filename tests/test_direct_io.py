"""direct_io: the bytes written are exactly the bytes given, with or without O_DIRECT, whatever the chunking."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from circle_rotate.kernel import direct_io
from circle_rotate.kernel.direct_io import DirectWriter
from circle_rotate.kernel.errors import DiskFullError
from circle_rotate.kernel.safetensors_io import FileSpan, SafetensorsWriter, read_header

BUF = 64 << 10  # small staging buffers so a few hundred KB cross many buffer boundaries


def _source(tmp_path: Path, n: int = 700_001) -> Path:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(n))
    return src


def _write_mixed(out: Path, src: Path):
    """Interleave small, unaligned and buffer-sized writes with file copies; return what was
    written and the writer."""
    data = src.read_bytes()
    want = bytearray()
    w = DirectWriter(out, buffer_bytes=BUF, buffers=2)
    with open(src, "rb") as fh:
        for size in (8 + 3, 10_240, BUF, 1, 3 * BUF + 17):
            piece = os.urandom(size)
            w.write(piece)
            want += piece
        for offset, n in ((0, 5), (123, 200_000), (4096, BUF), (len(data) - 999, 999)):
            w.copy_from(fh.fileno(), offset, n)
            want += data[offset:offset + n]
        w.write(memoryview(b"tail"))
        want += b"tail"
        w.close()
    return bytes(want), w


def test_direct_writer_writes_exactly_what_it_is_given(tmp_path):
    src = _source(tmp_path)
    out = tmp_path / "out.bin"
    want, _ = _write_mixed(out, src)
    assert out.read_bytes() == want


def test_without_o_direct_the_same_bytes_come_out(tmp_path, monkeypatch):
    """A file system or OS without direct I/O (macOS, Windows): the buffered path gives the same file."""
    monkeypatch.setattr(direct_io, "_O_DIRECT", 0)
    src = _source(tmp_path)
    out = tmp_path / "out.bin"
    want, w = _write_mixed(out, src)
    assert out.read_bytes() == want and not w.direct


def test_direct_write_refused_midway_falls_back_to_buffered(tmp_path, monkeypatch):
    """Some file systems accept O_DIRECT at open and refuse the writes (EINVAL): no byte is lost."""
    real, calls = os.write, []
    monkeypatch.setattr(direct_io, "_open", lambda path: (os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), True))

    def refusing(fd, data):
        calls.append(len(data))
        if len(calls) == 2:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data)

    monkeypatch.setattr(os, "write", refusing)
    src = _source(tmp_path)
    out = tmp_path / "out.bin"
    want, w = _write_mixed(out, src)
    assert out.read_bytes() == want and len(calls) > 2 and not w.direct


def test_errors_surface_and_a_short_source_is_an_error(tmp_path):
    src = _source(tmp_path, 1000)
    w = DirectWriter(tmp_path / "out.bin", buffer_bytes=BUF)
    with open(src, "rb") as fh, pytest.raises(OSError, match="ended 24 bytes early"):
        w.copy_from(fh.fileno(), 0, 1024)
    w.close(discard=True)
    with pytest.raises(ValueError):
        DirectWriter(tmp_path / "x.bin", buffer_bytes=1000)


@pytest.mark.parametrize("direct", [False, True])
def test_safetensors_writer_copies_file_spans_byte_for_byte(tmp_path, direct):
    """Untouched tensors of a base go out as FileSpans: read into the output, never changed."""
    src = tmp_path / "src.safetensors"
    save_file({"a": torch.randn(300, 7), "b": torch.randn(3).half(), "c": torch.zeros(0)}, str(src))
    h = read_header(src)
    out = tmp_path / "out.safetensors"
    with open(src, "rb") as fh, SafetensorsWriter(out, {k: (t.torch_dtype, t.shape) for k, t in h.tensors.items()},
                                                  direct=direct) as w:
        for key, info in h.tensors.items():
            start = h.data_start + info.begin
            w.write_raw(key, [FileSpan(fh.fileno(), start, info.nbytes // 2),
                              FileSpan(fh.fileno(), start + info.nbytes // 2, info.nbytes - info.nbytes // 2)])
    want, got = load_file(str(src)), load_file(str(out))
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_a_full_disk_at_the_last_write_leaves_no_output(tmp_path, monkeypatch):
    """A small file is written entirely when the writer closes: an error there must still remove it."""
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"previous output")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(DiskFullError, match="no space left"):  # the user's one line, not a bare OSError
        with SafetensorsWriter(out, {"x": (torch.float32, (1000,))}, direct=True) as w:
            w.write("x", torch.ones(1000))
    assert out.read_bytes() == b"previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]
