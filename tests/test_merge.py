"""merge: every dtype and fp8 layout against fp32 ground truth we compute, and every bad input.

Ground truth: the base's weights (fp8 dequantized as ComfyUI does, ``weight * scale``) plus
``strength * alpha / rank * up @ down`` in fp64, then rounded once to the output dtype.
"""

from __future__ import annotations

import errno
import json
import os
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from circle_rotate.cli.main import main
from circle_rotate.kernel import wan_arch
from circle_rotate.kernel.errors import DiskFullError, InputOverwriteError, UserError
from circle_rotate.kernel.safetensors_io import SafetensorsWriter
from circle_rotate.selfcheck.synthetic.lora import random_lora_modules, write_random_lora
from circle_rotate.selfcheck.synthetic.tiny_wan import write_tiny_wan
from circle_rotate.tools.merge.fp8 import FP8_MAX
from circle_rotate.tools.merge.run import merge_loras

CFG = wan_arch.tiny_config()
TARGETS = [m + ".weight" for m in wan_arch.lora_target_modules(CFG)]


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    d = tmp_path_factory.mktemp("merge_lora")
    return write_random_lora(d / "lora.safetensors", CFG, rank=4, alpha=1.0, seed=7, up_std=0.05)


def truth(base_path, loras, prefix=""):
    """fp64 merged weights of the target modules, and |W| + sum |delta| (what fp32 rounding scales with)."""
    sd = load_file(str(base_path))
    out, mag = {}, {}
    for key in TARGETS:
        w = sd[prefix + key].double()
        scale_key = prefix + key[: -len(".weight")] + ".scale_weight"
        if scale_key in sd:
            w = w * sd[scale_key].double()
        m = w.abs()
        for path, strength in loras:
            lsd = load_file(str(path))
            stem = wan_arch.musubi_lora_name(key[: -len(".weight")])
            if stem + ".alpha" not in lsd:
                continue
            down, up = lsd[stem + ".lora_down.weight"].double(), lsd[stem + ".lora_up.weight"].double()
            delta = strength * float(lsd[stem + ".alpha"]) / down.shape[0] * (up @ down)
            w, m = w + delta, m + (strength * float(lsd[stem + ".alpha"]) / down.shape[0] * (up.abs() @ down.abs())).abs()
        out[key], mag[key] = w, m
    return out, mag


def assert_close_to(got: torch.Tensor, want, key: str):
    """One rounding of the output dtype, plus the fp32 arithmetic on the way (a few fp32 ulps of the terms)."""
    want64, mag = want[0][key], want[1][key]
    eps = {torch.float16: 2**-10, torch.bfloat16: 2**-7, torch.float32: 2**-23}[got.dtype]
    tiny = {torch.float16: 2**-24, torch.bfloat16: 2**-126, torch.float32: 2**-126}[got.dtype]
    assert torch.all((got.double() - want64).abs() <= want64.abs() * eps + mag * 2**-21 + tiny), key


def assert_fp8_scaled_close(q, scale, want64, key):
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
    assert float(scale) == pytest.approx(float(want64.abs().max()) / FP8_MAX, rel=1e-6), key
    assert torch.all((q.double() * float(scale) - want64).abs() <= want64.abs() * 2**-4 + float(scale) * 2**-9), key


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_plain_dtypes_with_two_loras(tmp_path, lora, dtype):
    base = write_tiny_wan(tmp_path / "base.safetensors", dtype=dtype, seed=1)
    second = write_random_lora(tmp_path / "b.safetensors", CFG, rank=2, alpha=2.0, seed=8, dtype=torch.float32)
    out = tmp_path / "out.safetensors"
    report = merge_loras(base, [(lora, 0.8), (second, -0.5)], out)
    want = truth(base, [(lora, 0.8), (second, -0.5)])
    got, orig = load_file(str(out)), load_file(str(base))
    assert set(got) == set(orig) and report.merged == len(TARGETS) and report.copied == len(orig) - len(TARGETS)
    for key in TARGETS:
        assert_close_to(got[key], want, key)
    for key in set(orig) - set(TARGETS):
        assert torch.equal(got[key], orig[key]), key


def test_fp8_scaled_base_with_prefix_is_dequantized_merged_and_requantized(tmp_path, lora):
    p = wan_arch.COMFY_PREFIX
    base = write_tiny_wan(tmp_path / "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors", dtype="fp8_scaled", seed=2, key_prefix=p)
    # only block 0: block 1 stays as the base stored it
    part = write_random_lora(tmp_path / "half.safetensors", CFG, rank=4, seed=3,
                             modules=[m for m in wan_arch.lora_target_modules(CFG) if m.startswith("blocks.0.")])
    out = tmp_path / "out.safetensors"
    merge_loras(base, [(part, 1.0)], out)
    got, orig = load_file(str(out)), load_file(str(base))
    assert set(got) == set(orig) and got[p + "scaled_fp8"].dtype == torch.float8_e4m3fn
    want = truth(base, [], prefix=p)[0]
    delta = truth(base, [(part, 1.0)], prefix=p)[0]
    for key in TARGETS:
        k, s = p + key, p + key[: -len(".weight")] + ".scale_weight"
        if key.startswith("blocks.0."):
            assert_fp8_scaled_close(got[k], got[s], delta[key], key)
        else:  # untouched fp8 weights and their scales: byte for byte
            assert torch.equal(got[k].view(torch.uint8), orig[k].view(torch.uint8)) and torch.equal(got[s], orig[s])
            assert torch.allclose(got[k].double() * got[s].double(), want[key])
    record = json.loads(load_meta(out)["circle_rotate.merged_loras"])
    assert len(record[0].pop("delta_sketch_v1")) == 16  # what finds it again under another name (test_merge_provenance)
    assert record == [{"file": "half.safetensors", "bytes": (tmp_path / "half.safetensors").stat().st_size,
                       "strength": 1.0, "dtype": "same"}]
    assert load_meta(out)["circle_rotate.expert"] == "low"


def load_meta(path):
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


@pytest.mark.parametrize("dtype", ["fp16", "fp8_e4m3fn", "fp8_scaled"])
def test_fp8_scaled_base_to_other_dtypes(tmp_path, lora, dtype):
    base = write_tiny_wan(tmp_path / "base.safetensors", dtype="fp8_scaled", seed=4)
    out = tmp_path / "out.safetensors"
    report = merge_loras(base, [(lora, 1.0)], out, dtype=dtype)
    want = truth(base, [(lora, 1.0)])
    got = load_file(str(out))
    exact = want[0]
    if dtype == "fp8_scaled":
        for key in TARGETS:
            assert_fp8_scaled_close(got[key], got[key[:-7] + ".scale_weight"], exact[key], key)
        return
    assert not any(k.endswith(".scale_weight") for k in got) and "scaled_fp8" not in got
    linears = [k for k in got if wan_arch.is_linear_weight(k)]
    assert len(report.dropped) == 2 * len(linears) + 1  # both scales of every Linear and the marker, listed
    for key in TARGETS:
        if dtype == "fp16":
            assert_close_to(got[key], want, key)
        else:  # plain fp8: one e4m3 rounding, no scale
            assert got[key].dtype == torch.float8_e4m3fn
            assert torch.all((got[key].double() - exact[key]).abs() <= exact[key].abs() * 2**-4 + 2**-10), key


def test_fp16_base_to_fp8_scaled_adds_comfyui_marker_and_scales(tmp_path, lora):
    base = write_tiny_wan(tmp_path / "base.safetensors", dtype="bf16", seed=5, key_prefix=wan_arch.COMFY_PREFIX)
    out = tmp_path / "out.safetensors"
    merge_loras(base, [(lora, 1.0)], out, dtype="fp8_scaled")
    with safe_open(str(out), framework="pt") as f:
        keys = set(f.keys())
        marker = f.get_tensor(wan_arch.COMFY_PREFIX + "scaled_fp8")
        norm = f.get_tensor(wan_arch.COMFY_PREFIX + "blocks.0.norm3.weight")
    assert marker.dtype == torch.float8_e4m3fn and marker.numel() == 0
    assert "scaled_fp8" not in keys  # ComfyUI drops un-prefixed keys of a prefixed model
    assert norm.dtype == torch.bfloat16  # not an fp8 target: kept as stored
    fp8_targets = [k for k in wan_arch.dit_shapes(CFG) if wan_arch.is_linear_weight(k)]
    assert {wan_arch.COMFY_PREFIX + k[:-7] + s for k in fp8_targets for s in (".scale_weight", ".scale_input")} <= keys


def test_comfy_quant_base_is_read_and_kept_in_its_layout(tmp_path, lora):
    """The newer ComfyUI layout: ``.weight_scale`` and a per-layer ``.comfy_quant`` JSON tensor."""
    legacy = load_file(str(write_tiny_wan(tmp_path / "legacy.safetensors", dtype="fp8_scaled", seed=6)))
    sd = {}
    conf = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)
    for k, v in legacy.items():
        if k == "scaled_fp8":
            continue
        if k.endswith(".scale_input"):
            sd[k[: -len(".scale_input")] + ".input_scale"] = v
        elif k.endswith(".scale_weight"):
            sd[k[: -len(".scale_weight")] + ".weight_scale"] = v
            sd[k[: -len(".scale_weight")] + ".comfy_quant"] = conf.clone()
        else:
            sd[k] = v
    save_file(sd, str(tmp_path / "cq.safetensors"))
    out = tmp_path / "out.safetensors"
    merge_loras(tmp_path / "cq.safetensors", [(lora, 1.0)], out)
    got = load_file(str(out))
    assert set(got) == set(sd)
    want = truth(tmp_path / "legacy.safetensors", [(lora, 1.0)])[0]
    for key in TARGETS:
        assert_fp8_scaled_close(got[key], got[key[:-7] + ".weight_scale"], want[key], key)
        assert torch.equal(got[key[:-7] + ".comfy_quant"], conf)


def test_lora_for_another_model_shape_mismatch_and_missing_modules(tmp_path, lora):
    base = write_tiny_wan(tmp_path / "base.safetensors", seed=1)
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2, 8),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(8, 2),
               "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(1.0)}, str(tmp_path / "flux.safetensors"))
    with pytest.raises(UserError, match="flux.safetensors.*a LoRA for another model"):
        merge_loras(base, [(tmp_path / "flux.safetensors", 1.0)], tmp_path / "o.safetensors")
    wide = write_random_lora(tmp_path / "wide.safetensors", wan_arch.tiny_config(dim=128, ffn_dim=256), rank=2)
    with pytest.raises(UserError, match=r"shape mismatch: 'lora_unet_blocks_0_self_attn_q.lora_up.weight'.*\[128, 128\].*\[64, 64\]"):
        merge_loras(base, [(wide, 1.0)], tmp_path / "o.safetensors")
    deep = write_random_lora(tmp_path / "deep.safetensors", wan_arch.tiny_config(num_layers=3), rank=2)
    with pytest.raises(UserError, match=r"10 LoRA module\(s\) have no weight in the base.*blocks_2"):
        merge_loras(base, [(deep, 1.0)], tmp_path / "o.safetensors")
    with pytest.raises(UserError, match="not a Wan DiT checkpoint.*swapped"):
        merge_loras(lora, [(base, 1.0)], tmp_path / "o.safetensors")
    assert not list(tmp_path.glob("o*")) and not list(tmp_path.glob(".o*"))


def test_truncated_inputs_missing_alpha_and_output_paths(tmp_path, lora):
    base = write_tiny_wan(tmp_path / "base.safetensors", seed=1)
    data = base.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-1000])
    with pytest.raises(UserError, match="cut.safetensors: truncated"):
        merge_loras(tmp_path / "cut.safetensors", [(lora, 1.0)], tmp_path / "o.safetensors")
    sd = {k: v for k, v in load_file(str(lora)).items() if not k.endswith(".alpha")}
    save_file(sd, str(tmp_path / "noalpha.safetensors"))
    with pytest.raises(UserError, match="missing alpha: 'lora_unet_blocks_0_self_attn_q.alpha'"):
        merge_loras(base, [(tmp_path / "noalpha.safetensors", 1.0)], tmp_path / "o.safetensors")
    merge_loras(base, [(tmp_path / "noalpha.safetensors", 1.0)], tmp_path / "o.safetensors", alpha_if_missing=1.0)
    want, got = truth(base, [(lora, 1.0)]), load_file(str(tmp_path / "o.safetensors"))
    for key in TARGETS:  # alpha 1, as the file had before its alphas were stripped
        assert_close_to(got[key], want, key)
    with pytest.raises(InputOverwriteError):
        merge_loras(base, [(lora, 1.0)], base, force=True)
    with pytest.raises(InputOverwriteError):
        merge_loras(base, [(lora, 1.0)], lora, force=True)
    with pytest.raises(UserError, match="already exists.*--force"):
        merge_loras(base, [(lora, 1.0)], tmp_path / "o.safetensors")
    assert base.read_bytes() == data


def test_pickles_are_refused_without_being_unpickled(tmp_path, lora):
    marker = tmp_path / "unpickled"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "model.ckpt").write_bytes(pickle.dumps(Evil()))
    (tmp_path / "lora.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UserError, match="pickles and are never unpickled"):
        merge_loras(tmp_path / "model.ckpt", [(lora, 1.0)], tmp_path / "o.safetensors")
    base = write_tiny_wan(tmp_path / "base.safetensors")
    with pytest.raises(UserError, match="pickles and are never unpickled"):
        merge_loras(base, [(tmp_path / "lora.pt", 1.0)], tmp_path / "o.safetensors")
    assert not marker.exists()


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_interrupted_write_leaves_no_partial_file_and_keeps_the_old_output(tmp_path, lora, monkeypatch, failure):
    base = write_tiny_wan(tmp_path / "base.safetensors", seed=1)
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"previous output")
    real = SafetensorsWriter.write_raw
    calls = []

    def failing(self, name, chunks):
        calls.append(name)
        if len(calls) == 30:  # mid-way through the model, after many tensors were written
            raise KeyboardInterrupt() if failure is KeyboardInterrupt else OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, chunks)

    monkeypatch.setattr(SafetensorsWriter, "write_raw", failing)
    with pytest.raises(KeyboardInterrupt if failure is KeyboardInterrupt else DiskFullError):  # ENOSPC said as one line
        merge_loras(base, [(lora, 1.0)], out, force=True)
    assert out.read_bytes() == b"previous output"
    assert sorted(os.listdir(tmp_path)) == ["base.safetensors", "out.safetensors"]  # no temporary file left


def test_merge_cli_strength_suffix_and_json(tmp_path, lora, capsys):
    base = write_tiny_wan(tmp_path / "base.safetensors", seed=1)
    out = tmp_path / "m.safetensors"
    assert main(["merge", str(base), "--lora", f"{lora}:0.5", "-o", str(out), "--dtype", "bf16", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["loras"][0]["strength"] == 0.5 and report["dtype"] == "bf16" and report["merged"] == len(TARGETS)
    want, got = truth(base, [(lora, 0.5)]), load_file(str(out))
    for key in TARGETS:
        assert_close_to(got[key], want, key)
    assert main(["merge", str(base), "--lora", str(tmp_path / "nope.safetensors"), "-o", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.safetensors: file not found" in err


def test_high_and_low_lora_modules_as_fp32_lora(tmp_path):
    """A LoRA stored in fp32 (our combine output) merges like any other."""
    base = write_tiny_wan(tmp_path / "base.safetensors", seed=1)
    mods = random_lora_modules(CFG, rank=3, alpha=3.0, dtype=torch.float32)
    sd = {}
    for m, mod in mods.items():
        stem = wan_arch.musubi_lora_name(m)
        sd.update({stem + ".lora_down.weight": mod.down, stem + ".lora_up.weight": mod.up, stem + ".alpha": torch.tensor(3.0)})
    save_file(sd, str(tmp_path / "f32.safetensors"))
    merge_loras(base, [(tmp_path / "f32.safetensors", 1.0)], tmp_path / "o.safetensors")
    want, got = truth(base, [(tmp_path / "f32.safetensors", 1.0)]), load_file(str(tmp_path / "o.safetensors"))
    for key in TARGETS:
        assert_close_to(got[key], want, key)
