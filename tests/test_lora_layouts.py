"""Trainer layouts beyond our own, read back to deltas we built, and ComfyUI's verdict key by key.

Each file is written key by key as its trainer saves it (not by our writer): DiffSynth-Studio with
PEFT's adapter name kept (``blocks.0.self_attn.q.lora_A.default.weight``), PEFT DoRA magnitudes,
sd-scripts text-encoder keys beside a DiT LoRA, Wan Fun's ``lora_unet__`` names. Deltas are checked
against ``scale * up @ down`` computed here in float64; ComfyUI's verdict against the rules in
``comfy_lora_rules`` (read from ComfyUI 0.3.64).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from circle_rotate.cli.main import main
from circle_rotate.kernel import wan_arch
from circle_rotate.kernel.errors import UserError
from circle_rotate.selfcheck.synthetic.lora import random_lora_modules
from circle_rotate.selfcheck.synthetic.tiny_wan import write_tiny_wan
from circle_rotate.tools.lora.combine import combine_loras
from circle_rotate.tools.lora.convert import convert_lora
from circle_rotate.tools.lora.inspect import comfy_not_loaded, inspect_file
from circle_rotate.tools.lora.files import read_lora_index
from circle_rotate.tools.lora.resize import resize_lora
from circle_rotate.tools.merge.run import merge_loras
from comfy_lora_rules import WAN_FUN_MARKER, comfy_key_map, comfy_load

CFG = wan_arch.tiny_config()
MODS = random_lora_modules(CFG, rank=4, alpha=4.0, dtype=torch.float32, seed=3)
DIT_KEYS = list(wan_arch.dit_shapes(CFG))


def truth(scale: float) -> Dict[str, torch.Tensor]:
    """module -> scale * up @ down in float64: the delta every loader should apply."""
    return {m: scale * (mod.up.double() @ mod.down.double()) for m, mod in MODS.items()}


def peft_file(path: Path, *, prefix: str = "", adapter: str = "default", alpha: float = 0.0, extra=None) -> Path:
    """A LoRA as a PEFT model's state dict saves it: ``<prefix><module>.lora_A.<adapter>.weight``."""
    sd = {}
    for m, mod in MODS.items():
        sd[f"{prefix}{m}.lora_A.{adapter}.weight"] = mod.down
        sd[f"{prefix}{m}.lora_B.{adapter}.weight"] = mod.up
        if alpha:
            sd[f"{prefix}{m}.alpha"] = torch.tensor(alpha)
    sd.update(extra or {})
    save_file(sd, str(path))
    return path


def merged_deltas(tmp_path: Path, lora: Path) -> Dict[str, torch.Tensor]:
    base = write_tiny_wan(tmp_path / "base.safetensors", config=CFG, dtype="fp32", rest_dtype="fp32", expert="high")
    out = merge_loras(base, [(lora, 1.0)], tmp_path / "merged.safetensors", force=True).out
    b, m = load_file(str(base)), load_file(str(out))
    return {k[: -len(".weight")]: m[k].double() - b[k].double() for k in b if not torch.equal(b[k], m[k])}


def file_deltas(path: Path) -> Dict[str, torch.Tensor]:
    """module -> alpha / rank * up @ down, read straight from a comfy-layout file (alpha absent: 1)."""
    t = load_file(str(path))
    out = {}
    for k in t:
        if k.endswith(".lora_A.weight"):
            stem = k[: -len(".lora_A.weight")]
            down, up = t[k].double(), t[stem + ".lora_B.weight"].double()
            alpha = float(t[stem + ".alpha"]) if stem + ".alpha" in t else down.shape[0]
            out[stem[len("diffusion_model."):]] = alpha / down.shape[0] * up @ down
    return out


def assert_deltas(got: Dict[str, torch.Tensor], want: Dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for m in want:  # fp32 maths on fp32 factors: a few ulps of the delta
        assert torch.allclose(got[m], want[m], rtol=1e-5, atol=1e-7), m


@pytest.mark.parametrize("prefix,adapter,alpha", [("", "default", 0.0), ("pipe.dit.", "default", 0.0),
                                                  ("", "orbit", 2.0)])
def test_diffsynth_with_the_peft_adapter_name_converts_and_merges_to_the_exact_delta(tmp_path, capsys, prefix, adapter,
                                                                                      alpha):
    src = peft_file(tmp_path / "ds.safetensors", prefix=prefix, adapter=adapter, alpha=alpha)
    scale = alpha / 4 if alpha else 1.0  # DiffSynth writes no alpha: scale 1, as its loader applies it
    r = inspect_file(src)
    assert (r.kind, r.format, r.modules, r.scales, r.unknown_keys) == ("lora", "diffsynth", 20, {f"{scale:g}": 20}, [])
    assert not r.comfyui_loads_all_keys  # no "diffusion_model." prefix: ComfyUI maps none of them
    assert main(["inspect", str(src)]) == 0
    assert "would not load every key: circle-rotate convert IN -o OUT --format comfy" in capsys.readouterr().out

    out = convert_lora(src, tmp_path / "c.safetensors", to="comfy").out
    with safe_open(out, framework="pt") as f:
        keys = set(f.keys())
    assert comfy_load(keys, comfy_key_map(DIT_KEYS))[0] == keys
    assert_deltas(file_deltas(out), truth(scale))
    assert_deltas(merged_deltas(tmp_path, src), truth(scale))


@pytest.mark.parametrize("name,build", [
    # Wan Fun names, with and without the one key ComfyUI's detector looks for (comfy/lora_convert.py:39)
    ("wanfun_all", lambda: {f"lora_unet__{m.replace('.', '_')}.{p}": t for m, mod in MODS.items()
                            for p, t in (("lora_down.weight", mod.down), ("lora_up.weight", mod.up))}),
    ("wanfun_no_marker", lambda: {f"lora_unet__{m.replace('.', '_')}.{p}": t for m, mod in MODS.items()
                                  if m != "blocks.0.cross_attn.k"
                                  for p, t in (("lora_down.weight", mod.down), ("lora_up.weight", mod.up))}),
    # musubi keys for block 0, ComfyUI's for block 1: it maps each key by itself, so all load
    ("mixed", lambda: {(f"lora_unet_{m.replace('.', '_')}.lora_{p}.weight" if m.startswith("blocks.0.") else
                        f"diffusion_model.{m}.lora_{'A' if p == 'down' else 'B'}.weight"): t
                       for m, mod in MODS.items() for p, t in (("down", mod.down), ("up", mod.up))}),
    # PEFT's adapter name under "diffusion_model.": ComfyUI reads "default" only
    ("default_adapter", lambda: {f"diffusion_model.{m}.lora_{p}.default.weight": t for m, mod in MODS.items()
                                 for p, t in (("A", mod.down), ("B", mod.up))}),
    ("other_adapter", lambda: {f"diffusion_model.{m}.lora_{p}.orbit.weight": t for m, mod in MODS.items()
                               for p, t in (("A", mod.down), ("B", mod.up))}),
])
def test_inspects_comfyui_verdict_is_comfyuis_own_key_by_key(tmp_path, name, build):
    tensors = build()
    assert (WAN_FUN_MARKER in tensors) == (name == "wanfun_all")
    save_file(tensors, str(tmp_path / f"{name}.safetensors"))
    index = read_lora_index(tmp_path / f"{name}.safetensors")
    loaded, _ = comfy_load(tensors, comfy_key_map(DIT_KEYS))
    assert comfy_not_loaded(index) == sorted(set(tensors) - loaded)
    report = inspect_file(index.path)
    assert report.comfyui_loads_all_keys == (name in ("wanfun_all", "mixed", "default_adapter"))
    assert report.comfyui_not_loaded == sorted(set(tensors) - loaded)


def test_a_wan_fun_lora_without_the_detected_key_is_said_not_to_load_and_convert_fixes_it(tmp_path, capsys):
    tensors = {f"lora_unet__{m.replace('.', '_')}.{p}": t for m, mod in MODS.items() if ".self_attn." in m
               for p, t in (("lora_down.weight", mod.down), ("lora_up.weight", mod.up), ("alpha", torch.tensor(4.0)))}
    src = tmp_path / "fun.safetensors"
    save_file(tensors, str(src))
    assert main(["inspect", str(src)]) == 0
    assert "would not load every key: circle-rotate convert IN -o OUT --format comfy" in capsys.readouterr().out
    out = convert_lora(src, tmp_path / "c.safetensors", to="comfy").out
    keys = set(load_file(str(out)))
    assert comfy_load(keys, comfy_key_map(DIT_KEYS))[0] == keys
    assert_deltas(file_deltas(out), {m: d for m, d in truth(1.0).items() if ".self_attn." in m})
    assert inspect_file(out).comfyui_loads_all_keys


def peft_dora(path: Path) -> Path:
    """PEFT DoRA, as get_peft_model_state_dict saves it: a magnitude per output row beside each pair."""
    extra = {f"diffusion_model.{m}.lora_magnitude_vector": mod.up.norm(dim=1) for m, mod in MODS.items()}
    sd = {}
    for m, mod in MODS.items():
        sd[f"diffusion_model.{m}.lora_A.weight"], sd[f"diffusion_model.{m}.lora_B.weight"] = mod.down, mod.up
    save_file({**sd, **extra}, str(path))
    return path


def test_a_peft_dora_is_a_dora_and_every_rewriting_command_refuses_it_by_name(tmp_path, capsys):
    lora = peft_dora(tmp_path / "dora.safetensors")
    r = inspect_file(lora)
    assert r.dora == 20 and r.unknown_keys == [] and not r.comfyui_loads_all_keys
    # ComfyUI reads no lora_magnitude_vector: those 20 keys are "lora key not loaded"
    assert r.comfyui_not_loaded == sorted(k for k in load_file(str(lora)) if k.endswith("lora_magnitude_vector"))
    base = write_tiny_wan(tmp_path / "base.safetensors", config=CFG, expert="high")
    out = tmp_path / "out.safetensors"
    for run in (lambda: merge_loras(base, [(lora, 1.0)], out), lambda: convert_lora(lora, out, to="musubi"),
                lambda: combine_loras([(lora, 1.0), (lora, 0.5)], out), lambda: resize_lora(lora, out, rank=2)):
        with pytest.raises(UserError, match="a DoRA LoRA: 20 module.s. carry a learned magnitude .e.g. "
                                            "'diffusion_model.blocks.0.self_attn.q.lora_magnitude_vector'"):
            run()
        assert not out.exists()
    assert main(["inspect", str(lora)]) == 0
    said = capsys.readouterr().out
    assert "PEFT's magnitude (lora_magnitude_vector) on 20 modules: ComfyUI does not load it" in said
    assert "would not load every key (20 'lora key not loaded', first 'diffusion_model.blocks.0.cross_attn.k." \
           "lora_magnitude_vector'): load it with the PEFT/Diffusers pipeline it was trained for" in said
    assert "convert IN" not in said


def test_text_encoder_keys_are_left_out_by_every_command_with_a_note(tmp_path, caplog, capsys):
    te = {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(4, 64),
          "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.randn(64, 4),
          "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(1.0),
          "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight": torch.randn(4, 64)}
    sd = {}
    for m, mod in MODS.items():
        stem = "lora_unet_" + m.replace(".", "_")
        sd.update({stem + ".lora_down.weight": mod.down, stem + ".lora_up.weight": mod.up, stem + ".alpha": torch.tensor(4.0)})
    src = tmp_path / "te.safetensors"
    save_file({**sd, **te}, str(src))
    r = inspect_file(src)
    assert r.text_encoder_keys == sorted(te) and r.unknown_keys == [] and r.comfyui_not_loaded == sorted(te)
    with caplog.at_level(logging.WARNING):
        out = convert_lora(src, tmp_path / "c.safetensors", to="comfy").out
        assert_deltas(merged_deltas(tmp_path, src), truth(1.0))
    notes = [rec.getMessage() for rec in caplog.records if "text-encoder" in rec.getMessage()]
    assert len(notes) == 2 and all("leaving out 4 text-encoder tensor(s)" in n and "not for the Wan DiT" in n
                                   for n in notes)
    assert_deltas(file_deltas(out), truth(1.0))
    assert not any(k.startswith(("lora_te", "text_encoder")) for k in load_file(str(out)))
    assert main(["inspect", str(src)]) == 0
    assert "4 tensor(s) (first 'lora_te_text_model_encoder_layers_0_mlp_fc1.alpha'): not for the DiT" \
        in capsys.readouterr().out


def test_an_empty_file_is_an_error_not_a_model(tmp_path, capsys):
    save_file({}, str(tmp_path / "empty.safetensors"))
    assert main(["inspect", str(tmp_path / "empty.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "empty.safetensors: holds no tensors" in err and "kind" not in err


def test_training_records_that_disagree_with_the_tensors_are_said(tmp_path, capsys):
    sd = {}
    for m, mod in MODS.items():
        stem = "lora_unet_" + m.replace(".", "_")
        sd.update({stem + ".lora_down.weight": mod.down, stem + ".lora_up.weight": mod.up, stem + ".alpha": torch.tensor(1.0)})
    save_file(sd, str(tmp_path / "lies.safetensors"), metadata={"ss_network_dim": "32", "ss_network_alpha": "16"})
    save_file(sd, str(tmp_path / "true.safetensors"), metadata={"ss_network_dim": "4", "ss_network_alpha": "1.0"})
    assert inspect_file(tmp_path / "true.safetensors").metadata_mismatch == []
    r = inspect_file(tmp_path / "lies.safetensors")
    assert r.metadata_mismatch == ["ss_network_dim says 32, the tensors hold 4", "ss_network_alpha says 16, the tensors hold 1"]
    assert main(["inspect", str(tmp_path / "lies.safetensors")]) == 0
    assert "ss_network_dim says 32, the tensors hold 4; ss_network_alpha says 16, the tensors hold 1: the tensors are " \
           "what loaders use" in capsys.readouterr().out


@pytest.mark.parametrize("parts", [(".lora_A.weight", ".lora_B.weight"), (".lora_A.default.weight", ".lora_B.default.weight")])
def test_musubi_names_with_peft_parts_read_as_comfyui_loads_them(tmp_path, parts):
    """lora_unet_<module> + lora_A/lora_B (+ .alpha): ComfyUI tries every pair name under each key it maps."""
    sd = {}
    for m, mod in MODS.items():
        stem = "lora_unet_" + m.replace(".", "_")
        sd.update({stem + parts[0]: mod.down, stem + parts[1]: mod.up, stem + ".alpha": torch.tensor(4.0)})
    src = tmp_path / "mp.safetensors"
    save_file(sd, str(src))
    r = inspect_file(src)
    assert (r.format, r.modules, r.unknown_keys, r.comfyui_not_loaded) == ("musubi", 20, [], [])
    assert comfy_load(set(sd), comfy_key_map(DIT_KEYS))[0] == set(sd)  # ComfyUI's rule: all of them
    assert_deltas(merged_deltas(tmp_path, src), truth(1.0))
