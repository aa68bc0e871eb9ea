"""The delta sketch a merged expert keeps of each LoRA: one delta, one sketch, whatever the file looks like."""

from __future__ import annotations

import pytest
import torch

from circle_rotate.kernel.wan_arch import dit_shapes, tiny_config
from circle_rotate.selfcheck.synthetic.lora import random_lora_modules, write_random_lora
from circle_rotate.tools.lora.files import LoraModule, module_scales, read_lora_index, write_lora
from circle_rotate.tools.merge.delta_sketch import PROBES, SAME, _signs, delta_sketch, same_delta


def _sketch(path):
    index = read_lora_index(path)
    return delta_sketch(index, module_scales(index))


def _splitmix_signs(domain: str, name: str, n: int):
    """The probes' definition in plain integers: SplitMix64 of ``i * golden + seed``, seed from blake2b."""
    import hashlib

    mask = (1 << 64) - 1
    seed = int.from_bytes(hashlib.blake2b(f"{domain}:{name}".encode(), digest_size=8).digest(), "little")
    out = []
    for i in range(n * PROBES):
        z = (i * 0x9E3779B97F4A7C15 + seed) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(1.0 - 2.0 * ((z ^ (z >> 31)) >> 63))
    return [out[r * PROBES:(r + 1) * PROBES] for r in range(n)]


def test_probes_are_pinned():
    """Records in merged experts are compared with sketches taken later, maybe by another version or machine:
    the probes are exact integer arithmetic and must never change under the same field name (a new scheme
    takes a new one)."""
    x = _signs("in", "blocks.0.self_attn.q", 3)
    assert x.dtype == torch.float64 and x.shape == (3, PROBES)
    assert x.tolist() == _splitmix_signs("in", "blocks.0.self_attn.q", 3)
    assert x[0, :8].tolist() == [1.0, -1.0, -1.0, -1.0, -1.0, 1.0, 1.0, -1.0]
    assert not torch.equal(_signs("out", "blocks.0.self_attn.q", 3), x)  # each side and module draws its own


def test_the_sketch_is_the_delta_projected(tmp_path):
    """The streamed sketch equals r^T (scale * up @ down) x summed over modules, formed densely."""
    cfg = tiny_config()
    modules = random_lora_modules(cfg, rank=4, alpha=3.0, seed=5, dtype=torch.float32)
    path = write_lora(tmp_path / "l.safetensors", modules, fmt="musubi")
    want = torch.zeros(PROBES, dtype=torch.float64)
    for name, mod in modules.items():
        delta = 3.0 / 4 * mod.up.double() @ mod.down.double()
        want += ((_signs("out", name, delta.shape[0]) * (delta @ _signs("in", name, delta.shape[1]))).sum(0))
    assert torch.allclose(torch.tensor(_sketch(path), dtype=torch.float64), want, rtol=1e-5)


def test_layouts_alpha_spellings_and_dtypes_give_one_sketch(tmp_path):
    """The converted copies merge would otherwise take for new LoRAs: renamed (comfy), alpha folded (diffusers,
    rounded in bf16 when alpha/rank is no power of two), cast to fp16; and a strength folded into alpha."""
    cfg = tiny_config()
    modules = random_lora_modules(cfg, rank=4, alpha=3.0, seed=1)  # bf16, scale 3/4
    base = _sketch(write_lora(tmp_path / "musubi.safetensors", modules, fmt="musubi"))
    copies = {fmt: write_lora(tmp_path / f"{fmt}.safetensors", modules, fmt=fmt) for fmt in ("comfy", "diffusers")}
    half = {n: LoraModule(n, m.down.half(), m.up.half(), m.alpha) for n, m in modules.items()}
    copies["fp16"] = write_lora(tmp_path / "fp16.safetensors", half, fmt="musubi")
    stronger = {n: LoraModule(n, m.down, m.up, m.alpha * 2.5) for n, m in modules.items()}
    copies["alpha x2.5"] = write_lora(tmp_path / "stronger.safetensors", stronger, fmt="musubi")
    assert _sketch(copies["comfy"]) == base  # the same bytes under other names: the same numbers
    for what, path in copies.items():
        assert same_delta(base, _sketch(path)), what


def test_other_deltas_are_told_apart(tmp_path):
    """Another training; the same LoRA with a difference (or one module) more; the same with one module changed."""
    cfg = tiny_config()
    modules = random_lora_modules(cfg, rank=4, seed=1, dtype=torch.float32)
    base = _sketch(write_lora(tmp_path / "a.safetensors", modules, fmt="musubi"))
    assert not same_delta(base, _sketch(write_random_lora(tmp_path / "b.safetensors", cfg, rank=4, seed=2)))
    shapes = dit_shapes(cfg)
    diffs = {"blocks.0.norm3.weight": torch.full(tuple(shapes["blocks.0.norm3.weight"]), 0.5)}
    assert not same_delta(base, _sketch(write_lora(tmp_path / "c.safetensors", modules, fmt="musubi", diffs=diffs)))
    name = next(iter(modules))
    changed = dict(modules)
    changed[name] = LoraModule(name, -modules[name].down, modules[name].up, modules[name].alpha)
    assert not same_delta(base, _sketch(write_lora(tmp_path / "d.safetensors", changed, fmt="musubi")))


def test_loha_and_lokr_modules_are_sketched_through_their_delta(tmp_path):
    """A LoHa/LoKr module is expanded in row chunks (its product does not factor): the sketch is its delta's."""
    from safetensors.torch import save_file

    from circle_rotate.tools.lora.lycoris import add_rows, factors

    out_f, in_f = dit_shapes(tiny_config())["blocks.0.ffn.0.weight"]
    g = torch.Generator().manual_seed(0)
    parts = {"hada_w1_a": torch.randn(out_f, 2, generator=g), "hada_w1_b": torch.randn(2, in_f, generator=g),
             "hada_w2_a": torch.randn(out_f, 2, generator=g), "hada_w2_b": torch.randn(2, in_f, generator=g)}
    path = tmp_path / "loha.safetensors"
    save_file({**{f"lora_unet_blocks_0_ffn_0.{k}": v for k, v in parts.items()},
               "lora_unet_blocks_0_ffn_0.alpha": torch.tensor(1.0)}, str(path))
    delta = add_rows(torch.zeros(out_f, in_f), "loha", factors("loha", parts), 0, out_f, 0.5).double()  # alpha/dim 1/2
    name = "blocks.0.ffn.0"
    want = (_signs("out", name, out_f) * (delta @ _signs("in", name, in_f))).sum(0)
    assert torch.allclose(torch.tensor(_sketch(path), dtype=torch.float64), want, rtol=1e-5)


@pytest.mark.parametrize("a, b, same", [([1.0] * PROBES, [2.0] * PROBES, True), ([1.0] * PROBES, [-1.0] * PROBES, True),
                                        ([0.0] * PROBES, [0.0] * PROBES, False), ([1.0] * PROBES, None, False),
                                        ([1.0] * PROBES, [1.0] * (PROBES - 1), False), ([1.0] * PROBES, "x", False),
                                        ([1.0] * PROBES, [1.0] * (PROBES - 1) + [1.0 + 8 * SAME], False)])
def test_same_delta_compares_directions(a, b, same):
    assert same_delta(a, b) is same
