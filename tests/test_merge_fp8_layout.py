"""fp8_scaled outputs have the exact tensor layout of ComfyUI's own fp8_scaled Wan2.2 experts.

The layout is test data (``tests/data/comfy_wan22_fp8_scaled_layout.json``), written from ComfyUI
0.3.64's loader source, not derived from our code: every key a merged file must have, with its
dtype and shape, and nothing else. Checked for merges from fp16 and from fp8_scaled bases, with
and without ComfyUI's key prefix, and for a base of ours from before every Linear was scaled.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from circle_rotate.kernel import wan_arch
from circle_rotate.kernel.safetensors_io import read_header
from circle_rotate.selfcheck.synthetic.lora import write_random_lora
from circle_rotate.selfcheck.synthetic.tiny_wan import quantize_fp8_scaled, write_tiny_wan
from circle_rotate.tools.merge.fp8 import FP8_MAX
from circle_rotate.tools.merge.run import merge_loras

SPEC = json.loads((Path(__file__).parent / "data" / "comfy_wan22_fp8_scaled_layout.json").read_text())
CFG = wan_arch.tiny_config()
#: The six Linears outside the blocks that an earlier fp8_scaled output left in fp16 (issue 14).
OUTSIDE = ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2", "time_projection.1", "head.head")


def expected_layout(num_layers: int, prefix: str = "", *, input_scales: bool = True):
    """key -> (allowed safetensors dtypes, shape or None) of a ComfyUI fp8_scaled expert, from the spec."""
    def expand(name):
        return [name.replace("{i}", str(i)) for i in range(num_layers)] if "{i}" in name else [name]

    unq = set(SPEC["unquantized"])
    want = {prefix + SPEC["marker"]["key"]: ({SPEC["marker"]["dtype"]}, tuple(SPEC["marker"]["shape"]))}
    for layer in (x for name in SPEC["linear_layers"] for x in expand(name)):
        for part, rule in SPEC["per_linear"].items():
            if part == "scale_input" and not input_scales:
                continue
            dtypes = unq if rule["dtype"] == "unquantized" else {rule["dtype"]}
            want[f"{prefix}{layer}.{part}"] = (dtypes, tuple(rule["shape"]) if "shape" in rule else None)
    for name in (x for name in SPEC["other_tensors"] for x in expand(name)):
        want[prefix + name] = (unq, None)
    return want


def assert_comfy_layout(path: Path, prefix: str = "", *, input_scales: bool = True):
    header = read_header(path)
    want = expected_layout(CFG.num_layers, prefix, input_scales=input_scales)
    assert set(header.keys()) == set(want), sorted(set(header.keys()) ^ set(want))
    for key, (dtypes, shape) in want.items():
        info = header.tensors[key]
        assert info.dtype in dtypes, (key, info.dtype)
        assert shape is None or tuple(info.shape) == shape, (key, info.shape)


def dequantized(sd, prefix=""):
    """Every Linear weight of a scaled file as ComfyUI computes it (fp8 * scale_weight), fp64."""
    out = {}
    for key, value in sd.items():
        if key.endswith(".scale_weight"):
            w = key[: -len(".scale_weight")] + ".weight"
            out[w[len(prefix):]] = sd[w].double() * float(value)
    return out


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    return write_random_lora(tmp_path_factory.mktemp("layout") / "lora.safetensors", CFG, rank=4, seed=11, up_std=0.05)


@pytest.mark.parametrize("prefix", ["", wan_arch.COMFY_PREFIX])
def test_fp16_base_to_fp8_scaled_has_comfyuis_layout(tmp_path, lora, prefix):
    base = write_tiny_wan(tmp_path / "base.safetensors", dtype="fp16", seed=1, key_prefix=prefix)
    out = tmp_path / "out.safetensors"
    merge_loras(base, [(lora, 1.0)], out, dtype="fp8_scaled")
    assert_comfy_layout(out, prefix)
    got, orig = load_file(str(out)), load_file(str(base))
    deq = dequantized(got, prefix)
    for layer in OUTSIDE:  # untouched by the LoRA, but scaled: fp8 * scale within one e4m3 rounding
        w = orig[prefix + layer + ".weight"].double()
        assert float(got[prefix + layer + ".scale_weight"]) == pytest.approx(float(w.abs().max()) / FP8_MAX, rel=1e-6)
        assert torch.all((deq[layer + ".weight"] - w).abs() <= w.abs() * 2**-4 + float(w.abs().max()) / FP8_MAX * 2**-9)
    assert all(float(v) == 1.0 for k, v in got.items() if k.endswith(".scale_input"))


def test_fp8_scaled_base_keeps_the_layout_and_untouched_layers_byte_for_byte(tmp_path, lora):
    base = write_tiny_wan(tmp_path / "base.safetensors", dtype="fp8_scaled", seed=2)
    assert_comfy_layout(base)  # our synthetic stand-in for ComfyUI's file has the spec's layout too
    out = tmp_path / "out.safetensors"
    merge_loras(base, [(lora, 1.0)], out)
    assert_comfy_layout(out)
    got, orig = load_file(str(out)), load_file(str(base))
    for layer in OUTSIDE:
        for part in (".weight", ".scale_weight", ".scale_input"):
            assert torch.equal(got[layer + part].reshape(-1).view(torch.uint8), orig[layer + part].reshape(-1).view(torch.uint8))


def test_an_earlier_incomplete_fp8_scaled_file_is_completed(tmp_path, lora):
    """Our earlier outputs: six Linears in fp16 without scales, no scale_input anywhere."""
    full = load_file(str(write_tiny_wan(tmp_path / "full.safetensors", dtype="fp8_scaled", seed=3)))
    fp16 = load_file(str(write_tiny_wan(tmp_path / "fp16.safetensors", dtype="fp16", seed=3)))
    old = {k: v for k, v in full.items() if not k.endswith(".scale_input")}
    for layer in OUTSIDE:
        del old[layer + ".scale_weight"]
        old[layer + ".weight"] = fp16[layer + ".weight"]
    save_file(old, str(tmp_path / "old.safetensors"))
    out = tmp_path / "out.safetensors"
    merge_loras(tmp_path / "old.safetensors", [(lora, 1.0)], out)
    assert_comfy_layout(out)
    deq = dequantized(load_file(str(out)))
    for layer in OUTSIDE:
        w = fp16[layer + ".weight"].double()
        assert torch.all((deq[layer + ".weight"] - w).abs() <= w.abs() * 2**-4 + float(w.abs().max()) / FP8_MAX * 2**-9)


def test_a_two_element_marker_means_no_input_scales(tmp_path, lora):
    """ComfyUI reads a 2-element marker as 'no fp8 matmul': its Linears then have no scale_input,
    so writing one would be logged as unexpected."""
    sd = load_file(str(write_tiny_wan(tmp_path / "full.safetensors", dtype="fp16", seed=4)))
    sd["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    for key in [k for k in sd if wan_arch.is_linear_weight(k)]:
        sd[key], sd[key[:-7] + ".scale_weight"] = quantize_fp8_scaled(sd[key])
    save_file(sd, str(tmp_path / "base.safetensors"))
    out = tmp_path / "out.safetensors"
    merge_loras(tmp_path / "base.safetensors", [(lora, 1.0)], out)
    want = expected_layout(CFG.num_layers, input_scales=False)
    want["scaled_fp8"] = ({"F8_E4M3"}, (2,))
    header = read_header(out)
    assert set(header.keys()) == set(want)
    assert tuple(header.tensors["scaled_fp8"].shape) == (2,)
