"""Set the display rotation of MP4/MOV files we write (the ``tkhd`` matrix phones write).

Phones store portrait video as landscape pixels plus a rotation matrix in the track
header. FFmpeg 7's MP4 muxer no longer turns a ``rotate`` metadata tag into that matrix,
so the synthetic phone videos get the 36-byte matrix written directly. Only the video
track's matrix is touched; the media data is never rewritten. Reading is FFmpeg's
(:mod:`circle_rotate.kernel.display`).
"""

from __future__ import annotations

import math
import os
import struct
from typing import Iterator, List, Optional, Tuple, Union

PathLike = Union[str, os.PathLike]

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}
_ONE = 1 << 16  # 16.16 fixed point


def _boxes(buf: bytes, start: int, end: int) -> Iterator[Tuple[bytes, int, int, int]]:
    i = start
    while i + 8 <= end:
        size, typ = struct.unpack(">I4s", buf[i:i + 8])
        header = 8
        if size == 1:
            if i + 16 > end:
                return
            size = struct.unpack(">Q", buf[i + 8:i + 16])[0]
            header = 16
        elif size == 0:
            size = end - i
        if size < header or i + size > end:
            return
        yield typ, i, header, size
        i += size


def _video_tkhd_offsets(buf: bytes) -> List[int]:
    """Byte offsets of the matrix in each video track's ``tkhd`` (tracks with a ``vide`` handler)."""
    out = []
    for typ, i, h, s in _boxes(buf, 0, len(buf)):
        if typ != b"moov":
            continue
        for ttyp, ti, th, ts in _boxes(buf, i + h, i + s):
            if ttyp != b"trak":
                continue
            matrix_at: Optional[int] = None
            is_video = False
            for ctyp, ci, ch, cs in _boxes(buf, ti + th, ti + ts):
                if ctyp == b"tkhd":
                    version = buf[ci + ch]
                    fixed = (8 + 8 + 4 + 4 + 8) if version == 1 else (4 + 4 + 4 + 4 + 4)
                    matrix_at = ci + ch + 4 + fixed + 8 + 2 + 2 + 2 + 2
                elif ctyp == b"mdia":
                    for mtyp, mi, mh, _ms in _boxes(buf, ci + ch, ci + cs):
                        if mtyp == b"hdlr" and buf[mi + mh + 8:mi + mh + 12] == b"vide":
                            is_video = True
            if is_video and matrix_at is not None:
                out.append(matrix_at)
    return out


def set_rotation(path: PathLike, degrees: int) -> None:
    """Write a clockwise display rotation into every video track header of ``path`` (in place).

    Only for files this project has just written (e.g. the synthetic phone-style video);
    user sources are never modified.
    """
    if degrees % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, not {degrees}")
    rad = math.radians(degrees % 360)
    cos, sin = int(round(math.cos(rad))), int(round(math.sin(rad)))
    matrix = struct.pack(">9i", cos * _ONE, sin * _ONE, 0, -sin * _ONE, cos * _ONE, 0, 0, 0, 1 << 30)
    with open(path, "r+b") as fh:
        data = fh.read()
        offsets = _video_tkhd_offsets(data)
        if not offsets:
            raise ValueError(f"{path}: no MP4 video track header found")
        for off in offsets:
            fh.seek(off)
            fh.write(matrix)
