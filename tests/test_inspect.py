"""inspect: numbers checked against LoRAs and checkpoints we built, expert evidence, CLI output."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from circle_rotate.cli.main import main
from circle_rotate.kernel import wan_arch
from circle_rotate.selfcheck.synthetic.lora import random_lora_modules, write_random_lora
from circle_rotate.selfcheck.synthetic.tiny_wan import write_tiny_wan
from circle_rotate.tools.lora.files import read_lora_index
from circle_rotate.tools.lora.inspect import LoraReport, ModelReport, inspect_file, lora_expert

CFG = wan_arch.tiny_config()


def test_lora_report_matches_what_we_wrote(tmp_path):
    modules = [m for m in wan_arch.lora_target_modules(CFG) if m != "blocks.1.ffn.2"]
    meta = {"ss_network_dim": "8", "ss_network_alpha": "2", "ss_sd_model_name": "wan2.2_i2v_low_noise_14B_fp16.safetensors"}
    path = write_random_lora(tmp_path / "lora.safetensors", CFG, rank=8, alpha=2.0, modules=modules, metadata=meta, seed=4)
    r = inspect_file(path)
    assert isinstance(r, LoraReport)
    assert (r.format, r.modules, r.ranks, r.alphas, r.scales, r.dtypes) == ("musubi", 19, {8: 19}, {"2": 19}, {"0.25": 19}, ["bf16"])
    assert (r.targets_covered, r.targets_total, r.missing_targets, r.extra_modules) == (19, 20, ["blocks.1.ffn.2"], [])
    tensors = load_file(str(path))
    assert r.params == sum(v.numel() for k, v in tensors.items() if not k.endswith(".alpha"))
    norms = {}
    for m in modules:
        stem = wan_arch.musubi_lora_name(m)
        delta = 0.25 * tensors[stem + ".lora_up.weight"].float() @ tensors[stem + ".lora_down.weight"].float()
        norms[m] = float(torch.linalg.norm(delta))
    assert r.delta_norm["max"] == pytest.approx(max(norms.values()), rel=1e-4)
    assert r.delta_norm["min"] == pytest.approx(min(norms.values()), rel=1e-4)
    assert r.largest_deltas[0][0] == max(norms, key=norms.get)
    assert (r.expert, r.expert_evidence) == ("low", "metadata")
    assert r.training == meta and r.comfyui_loads_all_keys and r.unknown_keys == []


def test_full_size_target_model_is_named_from_shapes(tmp_path):
    # the real 5120-wide modules (two of them, rank 1) are enough to tell A14B
    big = wan_arch.I2V_A14B.with_layers(1)
    path = write_random_lora(tmp_path / "x.safetensors", big, rank=1, modules=["blocks.0.self_attn.q", "blocks.0.ffn.0"])
    r = inspect_file(path)
    assert r.target_model == "wan2.2-a14b" and r.targets_total == 400 and r.targets_covered == 2


@pytest.mark.parametrize("name,meta,expected", [
    ("circle_rotate_h.safetensors", {}, ("high", "filename")),
    ("circle_rotate_l.safetensors", {}, ("low", "filename")),
    ("my_high_noise_lora.safetensors", {}, ("high", "filename")),
    ("lora.safetensors", {"modelspec.timestep_range": "900,1000"}, ("high", "metadata (timestep range)")),
    ("lora.safetensors", {"modelspec.timestep_range": "0,900"}, ("low", "metadata (timestep range)")),
    ("circle_rotate_h.safetensors", {"circle_rotate.expert": "low"}, ("low", "metadata")),  # metadata wins
    ("lora.safetensors", {}, (None, None)),
    ("highlights.safetensors", {}, (None, None)),
])
def test_lora_expert_evidence(tmp_path, name, meta, expected):
    path = write_random_lora(tmp_path / name, CFG, rank=2, metadata=meta or None)
    assert lora_expert(read_lora_index(path)) == expected


def test_other_layouts_and_foreign_keys_are_reported(tmp_path):
    mods = random_lora_modules(CFG, rank=2, alpha=2.0)
    sd = {}
    for m, mod in mods.items():
        sd[f"transformer.{m}.lora_A.weight"] = mod.down  # Wan names under transformer.
        sd[f"transformer.{m}.lora_B.weight"] = mod.up
    sd["lora_unet_double_blocks_0_img_mod_lin.lora_down.weight"] = torch.zeros(2, 4)
    save_file(sd, str(tmp_path / "d.safetensors"))
    r = inspect_file(tmp_path / "d.safetensors")
    assert r.format == "diffusers" and r.scales == {"1": 20} and r.alphas == {"missing": 20}
    assert not r.comfyui_loads_all_keys and r.unknown_keys == ["lora_unet_double_blocks_0_img_mod_lin.lora_down.weight"]


def test_model_report_for_a_prefixed_fp8_scaled_expert(tmp_path):
    path = write_tiny_wan(tmp_path / "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", dtype="fp8_scaled",
                          key_prefix=wan_arch.COMFY_PREFIX)
    r = inspect_file(path)
    assert isinstance(r, ModelReport)
    assert (r.family, r.task, r.expert, r.expert_evidence, r.dtype, r.fp8_layout, r.key_prefix, r.num_layers) == (
        "wan2.2-a14b", "i2v", "high", "filename", "fp8_scaled", "scaled_fp8 (legacy)", wan_arch.COMFY_PREFIX, 2)


def test_inspect_cli_text_and_json(tmp_path, capsys):
    path = write_random_lora(tmp_path / "circle_rotate_h.safetensors", CFG, rank=4)
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "musubi layout" in text and "20/20" in text and "high (filename)" in text and "loads every key" in text
    assert main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ranks"] == {"4": 20}
    assert main(["inspect", str(tmp_path / "missing.safetensors")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_a_lora_of_top_level_modules_only_guesses_no_model(tmp_path, capsys):
    from circle_rotate.tools.lora.files import write_lora

    mods = {m: mod for m, mod in random_lora_modules(wan_arch.tiny_config(), rank=2).items() if m.startswith("blocks.0")}
    # a module per top-level layer a LoRA may carry, shaped as a Wan head and time projection are
    top = {"head.head": mods["blocks.0.self_attn.q"], "time_projection.1": mods["blocks.0.self_attn.k"]}
    write_lora(tmp_path / "top.safetensors", top, fmt="musubi")
    assert main(["inspect", str(tmp_path / "top.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "unknown (top-level modules only)" in out and "0/0" not in out


def test_a_lora_for_another_model_is_an_error_not_an_empty_report(tmp_path, capsys):
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2, 8),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(8, 2)}, str(tmp_path / "flux.safetensors"))
    assert main(["inspect", str(tmp_path / "flux.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "no tensor names a Wan DiT LoRA module" in err and "lora_unet_double_blocks_0_img_attn_qkv" in err


def _new_comfy_layouts(legacy: dict) -> dict:
    """The legacy scaled-fp8 tensors in newer ComfyUI's two fp8 layouts: per-layer ``.comfy_quant``
    tensors, or the same layers listed in the header's ``_quantization_metadata``."""
    conf = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)
    tensors, layers = {}, {}
    for k, v in legacy.items():
        if k.endswith(".scale_weight"):
            layer = k[: -len(".scale_weight")]
            tensors[layer + ".weight_scale"], tensors[layer + ".input_scale"] = v, torch.ones(())
            tensors[layer + ".comfy_quant"], layers[layer] = conf.clone(), {"format": "float8_e4m3fn"}
        elif k != "scaled_fp8" and not k.endswith(".scale_input"):
            tensors[k] = v
    meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}
    return {"tensors": (tensors, None),
            "metadata": ({k: v for k, v in tensors.items() if not k.endswith((".comfy_quant", ".input_scale"))}, meta)}


def test_parameters_count_weights_and_biases_not_fp8_side_tensors(tmp_path):
    """Scales, input scales, the ``scaled_fp8`` marker and ``.comfy_quant`` JSON bytes are no parameters:
    every fp8 layout of one model reports the parameters of its fp32 form."""
    fp32 = write_tiny_wan(tmp_path / "fp32.safetensors", dtype="fp32", seed=3)
    want = sum(v.numel() for v in load_file(str(fp32)).values())
    legacy = write_tiny_wan(tmp_path / "legacy.safetensors", dtype="fp8_scaled", seed=3)
    assert {k for k in load_file(str(legacy)) if not k.endswith((".weight", ".bias"))} > {"scaled_fp8"}
    paths = {"legacy": legacy}
    for name, (tensors, meta) in _new_comfy_layouts(load_file(str(legacy))).items():
        paths[name] = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(paths[name]), metadata=meta)
    got = {name: inspect_file(path) for name, path in {"fp32": fp32, **paths}.items()}
    assert {name: r.params for name, r in got.items()} == {name: want for name in got}
    assert got["tensors"].fp8_layout == got["metadata"].fp8_layout == "comfy_quant"
