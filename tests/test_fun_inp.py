"""Wan2.2 Fun-InP experts: recognised like the I2V ones, merged keeping what ComfyUI detects them by,
and `merge-pair --workflow` writing a WanFunInpaintToVideo workflow beside the merged files."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from circle_rotate.cli.main import main
from circle_rotate.kernel import wan_arch
from circle_rotate.kernel.checkpoint_identity import identify_checkpoint
from circle_rotate.kernel.safetensors_io import read_header
from circle_rotate.selfcheck.synthetic.lora import write_random_lora
from circle_rotate.selfcheck.synthetic.tiny_wan import write_tiny_wan
from test_comfy_workflow import samplers, validate_api, validate_ui

CFG = wan_arch.tiny_config()
HIGH, LOW = "wan2.2_fun_inpaint_high_noise_14B_fp8_scaled.safetensors", "wan2.2_fun_inpaint_low_noise_14B_fp8_scaled.safetensors"


def test_fun_inp_names_and_metadata_are_recognised(tmp_path):
    for name, variant, expert in [(HIGH, "fun-inp", "high"), (LOW, "fun-inp", "low"),
                                  ("wan2.2_i2v_high_noise_14B_fp16.safetensors", "i2v", "high"),
                                  ("Wan2.2-Fun-A14B-InP_low_noise.safetensors", "fun-inp", "low")]:
        ident = identify_checkpoint(read_header(write_tiny_wan(tmp_path / name, dtype="fp8_scaled")))
        assert (ident.family, ident.task, ident.variant, ident.expert) == ("wan2.2-a14b", "i2v", variant, expert), name
    plain = write_tiny_wan(tmp_path / "expert.safetensors", metadata={"circle_rotate.variant": "fun-inp"})
    assert identify_checkpoint(read_header(plain)).variant == "fun-inp"
    t2v = write_tiny_wan(tmp_path / "wan2.2_fun_inpaint_t2v.safetensors", config=wan_arch.tiny_config(i2v=False))
    assert identify_checkpoint(read_header(t2v)).variant is None


def test_merge_pair_keeps_fun_inp_and_writes_its_workflow(tmp_path, capsys):
    for name, seed in ((HIGH, 1), (LOW, 2)):
        write_tiny_wan(tmp_path / name, dtype="fp8_scaled", seed=seed)
    write_random_lora(tmp_path / "circle_rotate_h.safetensors", CFG, seed=3)
    write_random_lora(tmp_path / "circle_rotate_l.safetensors", CFG, seed=4)
    out = tmp_path / "merged"
    assert main(["merge-pair", "--high", str(tmp_path / HIGH), str(tmp_path / "circle_rotate_h.safetensors"),
                 "--low", str(tmp_path / LOW), str(tmp_path / "circle_rotate_l.safetensors"), "--out", str(out),
                 "--workflow", "--lightx2v", "--cfg", "1.6", "--end-image", "end.png", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["circle_rotate_workflow.json", "circle_rotate_workflow_api.json",
                     "wan2.2_fun_inpaint_high_noise_circle_rotate_h_fp8_scaled.safetensors",
                     "wan2.2_fun_inpaint_low_noise_circle_rotate_l_fp8_scaled.safetensors"]
    for merged, base in ((names[2], HIGH), (names[3], LOW)):
        header, orig = read_header(out / merged), read_header(tmp_path / base)
        # ComfyUI tells I2V from Fun-InP by nothing in the file: same keys, in_dim 36, no img_emb
        assert {k: tuple(v.shape) for k, v in header.tensors.items()} == {k: tuple(v.shape) for k, v in orig.tensors.items()}
        assert header.metadata["circle_rotate.variant"] == "fun-inp"
        assert identify_checkpoint(header).variant == "fun-inp"
    api = json.loads((out / "circle_rotate_workflow_api.json").read_text())
    validate_api(api)
    validate_ui(json.loads((out / "circle_rotate_workflow.json").read_text()))
    models = [n["inputs"]["unet_name"] for n in api.values() if n["class_type"] == "UNETLoader"]
    assert models == [names[2], names[3]] and report["workflow"].endswith("circle_rotate_workflow.json")
    assert any(n["class_type"] == "WanFunInpaintToVideo" for n in api.values())
    loras = [n["inputs"]["lora_name"] for n in api.values() if n["class_type"] == "LoraLoaderModelOnly"]
    assert all(x.startswith("wan2.2_i2v_lightx2v_4steps") for x in loras) and len(loras) == 2  # merged: no orbit LoRA
    high, low = samplers(api)
    assert (high["steps"], high["end_at_step"], low["start_at_step"], high["cfg"]) == (4, 2, 2, 1.6)
    assert torch.equal(load_file(str(out / names[2]))["blocks.0.norm3.weight"],
                       load_file(str(tmp_path / HIGH))["blocks.0.norm3.weight"])


def test_merge_pair_workflow_values_are_checked_before_merging(tmp_path, capsys):
    for name, seed in ((HIGH, 1), (LOW, 2)):
        write_tiny_wan(tmp_path / name, dtype="fp16", seed=seed)
    write_random_lora(tmp_path / "circle_rotate_h.safetensors", CFG, seed=3)
    write_random_lora(tmp_path / "circle_rotate_l.safetensors", CFG, seed=4)
    assert main(["merge-pair", "--high", str(tmp_path / HIGH), str(tmp_path / "circle_rotate_h.safetensors"),
                 "--low", str(tmp_path / LOW), str(tmp_path / "circle_rotate_l.safetensors"), "--out", str(tmp_path / "m"),
                 "--workflow", "--frames", "80"]) == 2
    assert "frames 80" in capsys.readouterr().err and not (tmp_path / "m").exists()
