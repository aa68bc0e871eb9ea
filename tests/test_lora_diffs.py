"""Whole-tensor differences (``.diff``, ``.diff_b``, ``.diff_m``) in Wan LoRAs: read, merged, converted, combined.

The lightx2v LoRAs (the study's 4-step workflow) carry them beside their pairs: every norm
weight, every bias and the modulation. The test files here are written key by key with the
spellings those files use, not by our writer, and every merged tensor is checked against
``base + strength * diff`` computed here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from circle_rotate.cli.main import main
from circle_rotate.kernel import wan_arch
from circle_rotate.kernel.errors import NonFiniteError, UserError
from circle_rotate.selfcheck.synthetic.lora import random_diffs, random_lora_modules
from circle_rotate.tools.lora.combine import combine_loras
from circle_rotate.tools.lora.convert import convert_lora
from circle_rotate.tools.lora.diffs import DiffKey, comfy_applies, diff_key, parse_diff_key
from circle_rotate.tools.lora.inspect import inspect_file
from circle_rotate.tools.lora.resize import resize_lora
from circle_rotate.tools.merge.run import merge_loras
from comfy_lora_rules import comfy_applied, comfy_key_map, comfy_load

CFG = wan_arch.tiny_config()
PAIRS = ("blocks.0.self_attn.q", "blocks.1.ffn.2")


def lightx2v_style(path: Path, *, seed: int = 0, diffs: Dict[str, torch.Tensor] = None, rank: int = 4) -> Path:
    """A comfy-layout LoRA spelled as the lightx2v files are: pairs with alpha, ``.diff`` for norm
    weights, ``.diff_b`` for biases, ``blocks.N.diff_m`` / ``head.diff_m`` for the modulation."""
    diffs = random_diffs(CFG, seed=seed) if diffs is None else diffs
    tensors = {}
    for name, mod in random_lora_modules(CFG, rank=rank, alpha=2.0, seed=seed, modules=PAIRS).items():
        stem = "diffusion_model." + name
        tensors.update({stem + ".lora_down.weight": mod.down, stem + ".lora_up.weight": mod.up,
                        stem + ".alpha": torch.tensor(2.0)})
    for param, diff in diffs.items():
        if param.endswith("modulation"):
            key = param[: -len(".modulation")] + ".diff_m"
        elif param.endswith(".bias"):
            key = param[: -len(".bias")] + ".diff_b"
        else:
            key = param[: -len(".weight")] + ".diff"
        tensors["diffusion_model." + key] = diff
    save_file(tensors, str(path))
    return path


def expected_merge(base: Dict[str, torch.Tensor], lora: Path, strength: float) -> Dict[str, torch.Tensor]:
    """``base`` with the LoRA applied in fp32, computed here from the file's own tensors."""
    sd = load_file(str(lora))
    out = {k: v.float().clone() for k, v in base.items()}
    for key, t in sd.items():
        stem = key[len("diffusion_model."):]
        if key.endswith(".lora_up.weight"):
            module = stem[: -len(".lora_up.weight")]
            down = sd[key.replace("lora_up", "lora_down")].float()
            out[module + ".weight"] += strength * sd[f"diffusion_model.{module}.alpha"].item() / down.shape[0] * (t.float() @ down)
        elif key.endswith(".diff_m"):
            out[stem[: -len(".diff_m")] + ".modulation"] += strength * t.float()
        elif key.endswith(".diff_b"):
            out[stem[: -len(".diff_b")] + ".bias"] += strength * t.float()
        elif key.endswith(".diff"):
            out[stem[: -len(".diff")] + ".weight"] += strength * t.float()
    return out


@pytest.mark.parametrize("key,expected", [
    ("diffusion_model.blocks.7.cross_attn.norm_k.diff", DiffKey("blocks.7.cross_attn.norm_k.weight", "comfy", ".diff")),
    ("diffusion_model.blocks.7.cross_attn.norm_k_img.diff", DiffKey("blocks.7.cross_attn.norm_k_img.weight", "comfy", ".diff")),
    ("diffusion_model.blocks.7.self_attn.q.diff_b", DiffKey("blocks.7.self_attn.q.bias", "comfy", ".diff_b")),
    ("diffusion_model.blocks.7.diff_m", DiffKey("blocks.7.modulation", "comfy", ".diff_m")),
    ("diffusion_model.head.diff_m", DiffKey("head.modulation", "comfy", ".diff_m")),
    ("diffusion_model.blocks.7.modulation.diff", DiffKey("blocks.7.modulation", "comfy", ".diff")),
    ("diffusion_model.head.head.diff_b", DiffKey("head.head.bias", "comfy", ".diff_b")),
    ("diffusion_model.patch_embedding.diff_b", DiffKey("patch_embedding.bias", "comfy", ".diff_b")),
    ("lora_unet_blocks_7_norm3.diff", DiffKey("blocks.7.norm3.weight", "musubi", ".diff")),
    ("lora_unet_blocks_7_cross_attn_norm_k_img.diff", DiffKey("blocks.7.cross_attn.norm_k_img.weight", "musubi", ".diff")),
    ("lora_unet_time_projection_1.diff_b", DiffKey("time_projection.1.bias", "musubi", ".diff_b")),
])
def test_difference_spellings(key, expected):
    assert parse_diff_key(key) == expected


@pytest.mark.parametrize("key", [
    "diffusion_model.blocks.0.ffn.1.diff_b",  # ffn.1 is the GELU: no parameter
    "diffusion_model.blocks.0.norm1.diff",  # Wan's norm1/norm2 have no affine weight
    "diffusion_model.blocks.0.self_attn.q.lora_up.weight",  # a pair, not a difference
    "blocks.0.norm3.diff",  # no layout prefix
    "lora_unet_double_blocks_0_img_norm.diff",  # another model
])
def test_not_differences_of_wan_parameters(key):
    assert parse_diff_key(key) is None


def test_every_wan_parameter_round_trips_through_its_names():
    names = wan_arch.dit_shapes(dataclasses.replace(wan_arch.I2V_A14B, model_version="2.1", num_layers=2))
    for param in names:
        assert parse_diff_key(diff_key(param, "comfy")).param == param
        if param.endswith((".weight", ".bias")):
            assert parse_diff_key(diff_key(param, "musubi")).param == param
        else:  # ComfyUI gives lora_unet_ names to .weight parameters only
            with pytest.raises(ValueError):
                diff_key(param, "musubi")
        with pytest.raises(ValueError):
            diff_key(param, "diffusers")


@pytest.mark.parametrize("dtype,strength", [("fp32", 0.5), ("fp16", 1.0)])
def test_merge_adds_every_difference(tmp_path, tiny_wan_dir, dtype, strength):
    base_path = tiny_wan_dir / f"wan2.2_i2v_high_noise_14B_{dtype}.safetensors"
    lora = lightx2v_style(tmp_path / "lightx2v.safetensors")
    report = merge_loras(base_path, [(lora, strength)], tmp_path / "merged.safetensors")
    base, merged = load_file(str(base_path)), load_file(report.out)
    expected = expected_merge(base, lora, strength)
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    diffs = random_diffs(CFG)
    assert report.loras[0]["modules"] == len(PAIRS) and report.loras[0]["diffs"] == len(diffs) == 42
    assert changed == set(diffs) | {m + ".weight" for m in PAIRS}  # biases, norms, modulations, and the pairs
    for key in changed:  # the fp32 sum, rounded once to the output dtype
        assert torch.equal(merged[key], expected[key].to(merged[key].dtype)), key


def test_comfyui_applies_every_difference_once_converted(tmp_path):
    lora = lightx2v_style(tmp_path / "lightx2v.safetensors")
    key_map = comfy_key_map(wan_arch.dit_shapes(CFG))
    with safe_open(str(lora), framework="pt") as f:
        keys = set(f.keys())
    loaded, _ = comfy_load(keys, key_map)
    skipped = keys - loaded
    assert skipped and all(k.endswith(".diff_m") for k in skipped)  # ComfyUI: "lora key not loaded"
    assert {k for k in keys if parse_diff_key(k) and not comfy_applies(k)} == skipped
    assert not inspect_file(lora).comfyui_loads_all_keys and inspect_file(lora).comfyui_skips == sorted(skipped)

    out = convert_lora(lora, tmp_path / "comfy.safetensors", to="comfy")
    assert out.diffs == 42 and out.comfy_skips == 3
    converted = load_file(out.out)
    loaded, patched = comfy_load(converted, key_map)
    assert set(converted) - loaded == skipped  # the modulation's stay .diff_m: ComfyUI names them as not loaded
    merged_params = set(random_diffs(CFG)) | {m + ".weight" for m in PAIRS}
    modulations = {p for p in merged_params if p.endswith(".modulation")}
    assert len(modulations) == 3
    # what our merge changes, less the modulations ComfyUI applies under no name
    assert comfy_applied(patched) == {"diffusion_model." + p for p in merged_params - modulations}
    assert torch.equal(converted["diffusion_model.blocks.1.diff_m"], load_file(str(lora))["diffusion_model.blocks.1.diff_m"])
    report = inspect_file(out.out)
    kinds = {"bias": sum(p.endswith(".bias") for p in merged_params), "modulation": 3}
    kinds["weight"] = len(random_diffs(CFG)) - kinds["bias"] - kinds["modulation"]
    assert not report.comfyui_loads_all_keys and report.diffs == kinds and len(report.comfyui_skips) == 3


def test_a_modulation_renamed_to_load_in_comfyui_is_still_not_applied(tmp_path):
    """``.modulation.diff`` (as this tool once wrote it) loads without a warning, and ComfyUI's
    patcher never applies it: inspect says so, and converting writes it back as ``.diff_m``."""
    lora = lightx2v_style(tmp_path / "lightx2v.safetensors")
    renamed = {k.replace(".diff_m", ".modulation.diff"): v for k, v in load_file(str(lora)).items()}
    save_file(renamed, str(tmp_path / "renamed.safetensors"))
    loaded, patched = comfy_load(renamed, comfy_key_map(wan_arch.dit_shapes(CFG)))
    assert loaded == set(renamed) and patched - comfy_applied(patched)  # silent in ComfyUI, and lost
    report = inspect_file(tmp_path / "renamed.safetensors")
    assert not report.comfyui_loads_all_keys
    assert report.comfyui_skips == sorted(k for k in renamed if k.endswith(".modulation.diff"))
    back = load_file(convert_lora(tmp_path / "renamed.safetensors", tmp_path / "back.safetensors", to="comfy").out)
    assert {k for k in back if parse_diff_key(k)} == {k for k in load_file(str(lora)) if parse_diff_key(k)}


def test_musubi_layout_holds_weight_and_bias_differences_only(tmp_path):
    lora = lightx2v_style(tmp_path / "lightx2v.safetensors")
    with pytest.raises(UserError, match=r"diffusion_model\.blocks\.0\.diff_m.*--format comfy"):
        convert_lora(lora, tmp_path / "m.safetensors", to="musubi")
    with pytest.raises(UserError, match="diffusers layout"):
        convert_lora(lora, tmp_path / "d.safetensors", to="diffusers")
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "d.safetensors").exists()

    no_modulation = {p: d for p, d in random_diffs(CFG, seed=1).items() if not p.endswith("modulation")}
    src = lightx2v_style(tmp_path / "nomod.safetensors", seed=1, diffs=no_modulation)
    musubi = convert_lora(src, tmp_path / "musubi.safetensors", to="musubi").out
    keys = set(load_file(musubi))
    assert comfy_load(keys, comfy_key_map(wan_arch.dit_shapes(CFG)))[0] == keys
    back = load_file(convert_lora(musubi, tmp_path / "back.safetensors", to="comfy").out)
    sd = {k.replace(".lora_down.", ".lora_A.").replace(".lora_up.", ".lora_B."): v for k, v in load_file(str(src)).items()}
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], v) for k, v in sd.items())  # bytes copied both ways


def test_differences_that_do_not_fit_are_refused(tmp_path, tiny_wan_dir):
    base = tiny_wan_dir / "wan2.2_i2v_low_noise_14B_fp16.safetensors"
    wan21 = lightx2v_style(tmp_path / "wan21.safetensors", diffs={"blocks.0.cross_attn.norm_k_img.weight": torch.zeros(CFG.dim)})
    with pytest.raises(UserError, match=r"'diffusion_model\.blocks\.0\.cross_attn\.norm_k_img\.diff' \(no 'blocks\.0\.cross_attn\.norm_k_img\.weight' in the base\)"):
        merge_loras(base, [(wan21, 1.0)], tmp_path / "out.safetensors")
    wide = lightx2v_style(tmp_path / "wide.safetensors", diffs={"blocks.1.norm3.weight": torch.zeros(2 * CFG.dim)})
    with pytest.raises(UserError, match=r"shape mismatch: 'diffusion_model\.blocks\.1\.norm3\.diff' is \[128\] but 'blocks\.1\.norm3\.weight' is \[64\]"):
        merge_loras(base, [(wide, 1.0)], tmp_path / "out.safetensors")
    nan = lightx2v_style(tmp_path / "nan.safetensors", diffs={"blocks.1.norm3.bias": torch.full((CFG.dim,), float("nan"))})
    with pytest.raises(NonFiniteError, match=r"diffusion_model\.blocks\.1\.norm3\.diff_b"):
        merge_loras(base, [(nan, 1.0)], tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("extra,message", [
    ({"diffusion_model.blocks.0.self_attn.q.diff": torch.zeros(64, 64)}, "a LoRA module both change 'blocks.0.self_attn.q.weight'"),
    ({"diffusion_model.blocks.0.modulation.diff": torch.zeros(1, 6, 64)}, "difference of 'blocks.0.modulation' is stored twice"),
])
def test_ambiguous_differences_are_refused(tmp_path, extra, message):
    path = lightx2v_style(tmp_path / "a.safetensors")
    save_file({**load_file(str(path)), **extra}, str(path))
    with pytest.raises(UserError, match=message):
        inspect_file(path)


def test_combine_sums_differences_and_resize_keeps_them(tmp_path, tiny_wan_dir):
    a = lightx2v_style(tmp_path / "a.safetensors", seed=2)
    b = lightx2v_style(tmp_path / "b.safetensors", seed=3)
    both = combine_loras([(a, 0.5), (b, 0.25)], tmp_path / "ab.safetensors", to="comfy")
    assert both.diffs == 42 and both.exact
    sum_ab, sd_a, sd_b = load_file(both.out), load_file(str(a)), load_file(str(b))
    norm = "diffusion_model.blocks.1.norm3.diff"
    assert torch.equal(sum_ab[norm], 0.5 * sd_a[norm].float() + 0.25 * sd_b[norm].float())
    assert torch.equal(sum_ab["diffusion_model.head.diff_m"],
                       0.5 * sd_a["diffusion_model.head.diff_m"].float() + 0.25 * sd_b["diffusion_model.head.diff_m"].float())
    base = tiny_wan_dir / "wan2.2_i2v_high_noise_14B_fp32.safetensors"
    one = load_file(merge_loras(base, [(both.out, 1.0)], tmp_path / "one.safetensors").out)
    two = load_file(merge_loras(base, [(a, 0.5), (b, 0.25)], tmp_path / "two.safetensors").out)
    for key in one:
        assert torch.allclose(one[key], two[key], rtol=0, atol=1e-6), key

    small = load_file(resize_lora(a, tmp_path / "small.safetensors", rank=2).out)
    kept = {parse_diff_key(k).param: v for k, v in small.items() if parse_diff_key(k)}
    assert kept.keys() == random_diffs(CFG).keys()
    assert all(torch.equal(kept[parse_diff_key(k).param], v) for k, v in sd_a.items() if parse_diff_key(k))
    assert small["diffusion_model.blocks.0.self_attn.q.lora_A.weight"].shape[0] == 2


@pytest.mark.parametrize("fmt", ["comfy", "musubi"])
def test_a_wan21_lora_merges_into_wan22_only_with_skip_absent(tmp_path, tiny_wan_dir, capsys, fmt):
    """A Wan2.1 I2V LoRA (the first lightx2v release) names image layers Wan2.2 has not; ComfyUI
    skips them with "lora key not loaded", and --skip-absent does the same, listing them."""
    wan21 = dataclasses.replace(CFG, model_version="2.1")
    image = [p for p in wan_arch.dit_shapes(wan21) if "_img" in p and p.endswith((".bias", "norm_k_img.weight"))]
    no_modulation = {p: d for p, d in random_diffs(CFG, seed=4).items() if not p.endswith("modulation")}  # musubi has no name for it
    diffs = {**no_modulation, **random_diffs(wan21, seed=5, params=image)}
    comfy = lightx2v_style(tmp_path / "wan21.safetensors", seed=4, diffs=diffs)
    lora = comfy if fmt == "comfy" else Path(convert_lora(comfy, tmp_path / "wan21_musubi.safetensors", to="musubi").out)
    base = tiny_wan_dir / "wan2.2_i2v_high_noise_14B_fp32.safetensors"
    out = tmp_path / "merged.safetensors"
    assert main(["merge", str(base), "--lora", str(lora), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Wan2.1 I2V's image-embedding layers" in err and "fix: pass --skip-absent" in err and not out.exists()

    assert main(["merge", str(base), "--lora", f"{lora}:0.5", "-o", str(out), "--skip-absent", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    skipped = report["loras"][0]["skipped"]
    assert sorted(skipped) == sorted(diff_key(p, fmt) for p in image)
    image_keys = {diff_key(p, "comfy") for p in image}
    kept = {k: v for k, v in load_file(str(comfy)).items() if k not in image_keys}
    save_file(kept, str(tmp_path / "wan22_part.safetensors"))
    expected = expected_merge(load_file(str(base)), tmp_path / "wan22_part.safetensors", 0.5)
    merged = load_file(str(out))
    assert all(torch.equal(merged[k], expected[k]) for k in merged)
