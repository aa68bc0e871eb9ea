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


# Wan's names -> Diffusers' WanTransformer3DModel names, as diffusers' scripts/convert_wan_to_diffusers.py
# renames them (norm2 and norm3 trade places; a longer Wan name is tried before its prefix).
_TO_DIFFUSERS = (("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
                 ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
                 ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
                 ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
                 ("time_projection.1", "condition_embedder.time_proj"), ("head.modulation", "scale_shift_table"),
                 ("head.head", "proj_out"), ("modulation", "scale_shift_table"), ("ffn.0", "ffn.net.0.proj"),
                 ("ffn.2", "ffn.net.2"), ("norm2", "norm__swap"), ("norm3", "norm2"), ("norm__swap", "norm3"),
                 ("self_attn.o", "attn1.to_out.0"), ("cross_attn.o", "attn2.to_out.0"),
                 ("self_attn.norm_", "attn1.norm_"), ("cross_attn.norm_", "attn2.norm_"),
                 *((f"{a}.{x}", f"{b}.to_{x}") for a, b in (("self_attn", "attn1"), ("cross_attn", "attn2")) for x in "qkv"),
                 # Wan2.1 I2V's image layers
                 ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
                 ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
                 ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
                 ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
                 ("attn2.to_k_img", "attn2.add_k_proj"), ("attn2.to_v_img", "attn2.add_v_proj"),
                 ("attn2.norm_k_img", "attn2.norm_added_k"))


def diffusers_layout(src: Path, dst: Path) -> Path:
    """``src`` (a Wan DiT in Wan's names) with Diffusers' key names, as in ``Wan-AI/Wan2.2-I2V-A14B-Diffusers``."""
    from safetensors.torch import load_file, save_file

    out = {}
    for key, tensor in load_file(str(src)).items():
        for wan, diffusers in _TO_DIFFUSERS:
            key = key.replace(wan, diffusers)
        out[key] = tensor
    save_file(out, str(dst))
    return dst
