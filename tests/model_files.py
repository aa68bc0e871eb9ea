"""Model files the tests make: real-shaped Wan2.2 experts as sparse files, and musubi-built tiny Wan models."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from circle_rotate.kernel.wan_arch import I2V_A14B, dit_shapes


def sparse_expert(path: Path, *, dtype: str = "F16", prefix: str = "") -> Path:
    """A real-shaped Wan2.2 I2V-A14B expert: the true header, the 28 GB of data a sparse hole of zeros."""
    header, offset = {}, 0
    for name, shape in dit_shapes(I2V_A14B).items():
        n = 2
        for s in shape:
            n *= s
        header[prefix + name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)
    return path


def musubi_wan(cfg):
    """musubi-tuner's own ``WanModel`` (Wan2.2 I2V) with ``cfg``'s shapes (needs musubi-tuner)."""
    from musubi_tuner.wan.modules.model import WanModel

    return WanModel(model_type="i2v", model_version="2.2", in_dim=cfg.in_dim, dim=cfg.dim, ffn_dim=cfg.ffn_dim,
                    freq_dim=cfg.freq_dim, text_dim=cfg.text_dim, out_dim=cfg.out_dim, num_heads=cfg.num_heads,
                    num_layers=cfg.num_layers)
