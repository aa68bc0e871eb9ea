"""HDR phone footage, made here: an orbit in 10-bit HEVC tagged with an HDR transfer."""

from __future__ import annotations

from pathlib import Path

import av

from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, render_frames


def write_hevc(path: Path, spec: TurntableSpec, transfer: str) -> None:
    """``spec`` rendered to 10-bit HEVC tagged with ``transfer``, as phones record HDR
    (``arib-std-b67`` is HLG, the iPhone's default; ``smpte2084`` is PQ, HDR10's; ``bt709`` SDR)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx265", rate=round(spec.fps))
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p10le"
        stream.options = {"x265-params": f"log-level=error:colorprim=bt2020:transfer={transfer}:colormatrix=bt2020nc"}
        for f in render_frames(spec):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f.image, format="rgb24")))
        container.mux(stream.encode())
