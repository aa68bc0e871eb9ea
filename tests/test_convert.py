"""convert, resize and combine: LoRA files in, LoRA files out, checked against deltas we build."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from circle_rotate.cli.main import main
from circle_rotate.kernel import wan_arch
from circle_rotate.kernel.errors import InputOverwriteError, UserError
from circle_rotate.selfcheck.synthetic.lora import random_lora_modules, write_random_lora
from circle_rotate.tools.lora.combine import combine_loras
from circle_rotate.tools.lora.convert import convert_lora
from circle_rotate.tools.lora.files import module_scales, read_lora_index, resolved_modules
from circle_rotate.tools.lora.inspect import inspect_file
from circle_rotate.tools.lora.resize import resize_lora, svd_truncate
from circle_rotate.selfcheck.synthetic.tiny_wan import write_tiny_wan

CFG = wan_arch.tiny_config()


def deltas(path, *, strength=1.0, alpha_if_missing=None):
    """module -> strength * alpha / rank * up @ down (fp32), from any layout."""
    index = read_lora_index(path)
    scales = module_scales(index, alpha_if_missing=alpha_if_missing)
    return {m: strength * scales[m] * (mod.up.float() @ mod.down.float()) for m, mod in resolved_modules(index, scales).items()}


@pytest.fixture()
def musubi_lora(tiny_loras):
    return tiny_loras["high"]


@pytest.mark.parametrize("to", ["comfy", "diffusers"])
def test_musubi_to_x_and_back_keeps_every_delta_exactly(tmp_path, musubi_lora, to):
    mid = convert_lora(musubi_lora, tmp_path / f"mid_{to}.safetensors", to=to)
    back = convert_lora(mid.out, tmp_path / "back.safetensors", to="musubi")
    want, got_mid, got_back = deltas(musubi_lora), deltas(mid.out), deltas(back.out)
    assert set(want) == set(got_mid) == set(got_back) == set(wan_arch.lora_target_modules(CFG))
    for m in want:  # power-of-two scale: folding is exact, so are the products
        assert torch.equal(want[m], got_mid[m]) and torch.equal(want[m], got_back[m]), m
    assert mid.alpha == ("copied" if to == "comfy" else "folded into the weights (exactly: each scale is a power of two)")
    with safe_open(mid.out, framework="pt") as f:
        assert f.metadata()["ss_network_dim"] == "4"  # metadata kept
        if to == "diffusers":
            assert not any(k.endswith(".alpha") for k in f.keys())
            assert "transformer.blocks.0.attn1.to_q.lora_A.weight" in f.keys()


def test_fold_of_a_non_power_of_two_scale_stays_within_one_rounding(tmp_path):
    src = write_random_lora(tmp_path / "a.safetensors", CFG, rank=3, alpha=1.0, dtype=torch.float32)
    out = convert_lora(src, tmp_path / "d.safetensors", to="diffusers").out
    want, got = deltas(src), deltas(out)
    for m in want:
        assert torch.allclose(got[m], want[m], rtol=1e-6, atol=1e-9), m


def test_a_rounded_fold_says_so_and_an_fp8_lora_folds_without_a_traceback(tmp_path):
    src = write_random_lora(tmp_path / "a.safetensors", CFG, rank=3, alpha=1.0, dtype=torch.bfloat16)
    assert convert_lora(src, tmp_path / "d.safetensors", to="diffusers").alpha == \
        "folded into the weights (rounded to bfloat16: the scale is not a power of two)"
    fp8 = tmp_path / "fp8.safetensors"
    # (x16: in fp8's normal range, as an fp8 LoRA's weights would be)
    save_file({k: (16 * v.float()).to(torch.float8_e4m3fn) if v.dim() else v for k, v in load_file(str(src)).items()},
              str(fp8))
    out = convert_lora(fp8, tmp_path / "d8.safetensors", to="diffusers").out
    want, got = deltas(fp8), deltas(out)
    for m in want:  # one more fp8 rounding (3 mantissa bits) of each factor
        assert float(torch.linalg.norm(got[m] - want[m]) / torch.linalg.norm(want[m])) < 0.1, m


# Layouts other trainers save, re-spelt from ComfyUI's by their own rules: Wan's names with no prefix
# (DiffSynth-Studio), Diffusers' names under "diffusion_model." (finetrainers), sd-scripts parts under
# "lycoris_" (SimpleTuner). The first two carry no alpha (scale 1).
_RESPELL = {
    "diffsynth": lambda key: None if key.endswith(".alpha") else key[len("diffusion_model."):],
    "finetrainers": lambda key: None if key.endswith(".alpha") else key,  # applied to the diffusers file's keys
    "lycoris": lambda key: "lycoris_" + key[len("diffusion_model."):].rsplit(".lora_", 1)[0].rsplit(".alpha", 1)[0]
    .replace(".", "_") + {"A": ".lora_down.weight", "B": ".lora_up.weight"}.get(key.rsplit(".lora_", 1)[-1][:1], ".alpha"),
}


@pytest.mark.parametrize("layout", sorted(_RESPELL))
def test_other_trainers_layouts_read_as_the_same_lora_and_convert_to_keys_comfyui_loads(tmp_path, layout, capsys):
    from comfy_lora_rules import comfy_key_map, comfy_load

    alpha = 3.0 if layout == "lycoris" else 4.0  # scale 1 where the layout stores no alpha
    comfy = write_random_lora(tmp_path / "c.safetensors", CFG, fmt="comfy", rank=4, alpha=alpha, dtype=torch.float32)
    base = comfy
    if layout == "finetrainers":
        base = convert_lora(comfy, tmp_path / "d.safetensors", to="diffusers").out
    renamed = {}
    for key, value in load_file(str(base)).items():
        new = _RESPELL[layout](key)
        if new is not None:
            renamed[new.replace("transformer.", "diffusion_model.", 1)] = value
    src = tmp_path / f"{layout}.safetensors"
    save_file(renamed, str(src))
    index = read_lora_index(src)
    assert index.fmt == layout and not index.unknown_keys
    want, got = deltas(comfy), deltas(src)
    assert set(got) == set(want) == set(wan_arch.lora_target_modules(CFG))
    for m in want:
        assert torch.allclose(got[m], want[m], rtol=1e-6, atol=1e-9), m

    dit_keys = list(wan_arch.dit_shapes(CFG))
    assert comfy_load(renamed, comfy_key_map(dit_keys))[0] == set()  # ComfyUI maps none of them for Wan
    assert main(["inspect", str(src)]) == 0
    assert "would not load every key: circle-rotate convert IN -o OUT --format comfy" in capsys.readouterr().out
    out = convert_lora(src, tmp_path / "out.safetensors", to="comfy").out
    with safe_open(out, framework="pt") as f:
        keys = set(f.keys())
    assert comfy_load(keys, comfy_key_map(dit_keys))[0] == keys
    for m, delta in deltas(out).items():
        assert torch.allclose(delta, want[m], rtol=1e-6, atol=1e-9), m


def test_a_model_given_as_the_lora_is_named_as_such(tmp_path):
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(8, 8), "blocks.0.self_attn.q.bias": torch.zeros(8)},
              str(tmp_path / "expert.safetensors"))
    with pytest.raises(UserError, match="a Wan model's weights, not a LoRA") as err:
        convert_lora(tmp_path / "expert.safetensors", tmp_path / "y.safetensors", to="comfy")
    assert "pass the model as the EXPERT" in err.value.fix


def test_missing_alpha_in_a_musubi_file_is_an_error_unless_told(tmp_path, musubi_lora):
    sd = {k: v for k, v in load_file(str(musubi_lora)).items() if not k.endswith(".alpha")}
    save_file(sd, str(tmp_path / "noalpha.safetensors"))
    with pytest.raises(UserError, match=r"missing alpha: 'lora_unet_blocks_0_self_attn_q.alpha'.*--alpha-if-missing"):
        convert_lora(tmp_path / "noalpha.safetensors", tmp_path / "x.safetensors", to="comfy")
    assert not (tmp_path / "x.safetensors").exists()
    rep = convert_lora(tmp_path / "noalpha.safetensors", tmp_path / "x.safetensors", to="comfy", alpha_if_missing="rank")
    assert rep.alpha.startswith("written")
    assert all(float(v) == 4.0 for k, v in load_file(rep.out).items() if k.endswith(".alpha"))


def test_comfy_file_without_alpha_means_scale_one_as_in_comfyui(tmp_path):
    mods = random_lora_modules(CFG, rank=2, alpha=2.0)  # alpha == rank -> scale 1
    sd = {}
    for m, mod in mods.items():
        sd[f"diffusion_model.{m}.lora_A.weight"] = mod.down
        sd[f"diffusion_model.{m}.lora_B.weight"] = mod.up
    save_file(sd, str(tmp_path / "plain.safetensors"))
    got = deltas(tmp_path / "plain.safetensors")
    assert all(torch.equal(got[m], mods[m].up.float() @ mods[m].down.float()) for m in mods)


def test_convert_refuses_bad_inputs(tmp_path, musubi_lora):
    with pytest.raises(InputOverwriteError):
        convert_lora(musubi_lora, musubi_lora, to="comfy")
    (tmp_path / "exists.safetensors").write_bytes(b"keep me")
    with pytest.raises(UserError, match="--force"):
        convert_lora(musubi_lora, tmp_path / "exists.safetensors", to="comfy")
    assert (tmp_path / "exists.safetensors").read_bytes() == b"keep me"
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2, 8),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(8, 2)}, str(tmp_path / "flux.safetensors"))
    with pytest.raises(UserError, match="a LoRA for another model, or a key layout not read here"):
        convert_lora(tmp_path / "flux.safetensors", tmp_path / "y.safetensors", to="comfy")
    data = musubi_lora.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(UserError, match="truncated"):
        convert_lora(tmp_path / "cut.safetensors", tmp_path / "z.safetensors", to="comfy")


def test_convert_cli(tmp_path, musubi_lora, capsys):
    out = tmp_path / "c.safetensors"
    assert main(["convert", str(musubi_lora), "-o", str(out), "--format", "comfy", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["to_format"] == "comfy" and report["modules"] == 20
    assert main(["convert", str(musubi_lora), "-o", str(out), "--format", "comfy"]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err


def test_svd_truncate_is_the_best_low_rank_approximation():
    gen = torch.Generator().manual_seed(0)
    up, down = torch.randn(40, 6, generator=gen), torch.randn(6, 30, generator=gen)
    up_k, down_k, err = svd_truncate(up, down, 3)
    full = up.double() @ down.double()
    s = torch.linalg.svdvals(full)
    best = full - (torch.linalg.svd(full).U[:, :3] * s[:3]) @ torch.linalg.svd(full).Vh[:3]
    assert err == pytest.approx(float(torch.linalg.norm(best) / torch.linalg.norm(full)), rel=1e-9)
    assert float(torch.linalg.norm(full - up_k @ down_k) / torch.linalg.norm(full)) == pytest.approx(err, rel=1e-9)
    _, _, zero = svd_truncate(up, down, 6)
    assert zero < 1e-12


def test_resize_reports_the_true_error_and_keeps_the_scale(tmp_path):
    # rank 6 built from a rank-2 signal plus small noise: rank 2 keeps almost all of it
    mods = random_lora_modules(CFG, rank=6, alpha=3.0, dtype=torch.float32)
    sd = {}
    for m, mod in mods.items():
        up = mod.up.clone()
        up[:, 2:] *= 1e-3
        sd[f"lora_unet_{m.replace('.', '_')}.lora_down.weight"] = mod.down
        sd[f"lora_unet_{m.replace('.', '_')}.lora_up.weight"] = up
        sd[f"lora_unet_{m.replace('.', '_')}.alpha"] = torch.tensor(3.0)
    save_file(sd, str(tmp_path / "r6.safetensors"))
    rep = resize_lora(tmp_path / "r6.safetensors", tmp_path / "r2.safetensors", rank=2)
    assert rep.resized == 20 and rep.rank == 2
    want, got = deltas(tmp_path / "r6.safetensors"), deltas(tmp_path / "r2.safetensors")
    for m in want:
        true_err = float(torch.linalg.norm(want[m] - got[m]) / torch.linalg.norm(want[m]))
        assert rep.per_module[m] == pytest.approx(true_err, rel=1e-3, abs=1e-6), m
        assert rep.per_module[m] < 0.01
    index = read_lora_index(tmp_path / "r2.safetensors")
    assert {i.rank for i in index.modules.values()} == {2} and {i.alpha for i in index.modules.values()} == {1.0}
    assert index.metadata["ss_network_dim"] == "2"
    # the rank the file holds: none reduced keeps 6; ranks 6 and 2 side by side are sd-scripts' "Dynamic"
    resize_lora(tmp_path / "r6.safetensors", tmp_path / "r8.safetensors", rank=8)
    assert read_lora_index(tmp_path / "r8.safetensors").metadata["ss_network_dim"] == "6"
    mixed = {**load_file(str(tmp_path / "r6.safetensors")),
             **{k: v for k, v in load_file(str(tmp_path / "r2.safetensors")).items() if "blocks_0_" in k}}
    save_file(mixed, str(tmp_path / "r62.safetensors"))
    resize_lora(tmp_path / "r62.safetensors", tmp_path / "r4.safetensors", rank=4)
    assert read_lora_index(tmp_path / "r4.safetensors").metadata["ss_network_dim"] == "Dynamic"
    with pytest.raises(UserError, match="--rank"):
        resize_lora(tmp_path / "r6.safetensors", tmp_path / "r0.safetensors", rank=0)


def test_combine_is_the_strength_weighted_sum(tmp_path):
    a = write_random_lora(tmp_path / "a_h.safetensors", CFG, rank=4, alpha=1.0, seed=1)
    b = write_random_lora(tmp_path / "b.safetensors", CFG, rank=2, alpha=2.0, seed=2, fmt="comfy",
                          modules=wan_arch.lora_target_modules(CFG)[:7])
    rep = combine_loras([(a, 0.7), (b, -1.5)], tmp_path / "ab.safetensors")
    assert rep.modules == 20 and rep.ranks == {4: 13, 6: 7}
    # 0.7 / 4 is no power of two: one fp32 rounding of the factors, which the report measures
    assert not rep.exact and 0 < rep.max_rel_error < 1e-7
    da, db, got = deltas(a, strength=0.7), deltas(b, strength=-1.5), deltas(tmp_path / "ab.safetensors")
    for m in got:
        want = da[m] + db.get(m, 0)
        assert torch.allclose(got[m], want, rtol=1e-6, atol=1e-7), m
    rep16 = combine_loras([(a, 0.7), (b, 1.0)], tmp_path / "ab16.safetensors", dtype="bf16")
    assert not rep16.exact and 1e-4 < rep16.max_rel_error < 1e-2  # bf16: 8 bits
    assert combine_loras([(a, 0.5), (b, -2.0)], tmp_path / "p2.safetensors").exact  # powers of two: no rounding


def test_combine_refuses_modules_of_different_shapes(tmp_path):
    a = write_random_lora(tmp_path / "a.safetensors", CFG, rank=2)
    big = wan_arch.tiny_config(dim=128, ffn_dim=256)
    b = write_random_lora(tmp_path / "b.safetensors", big, rank=2)
    with pytest.raises(UserError, match="different shapes"):
        combine_loras([(a, 1.0), (b, 1.0)], tmp_path / "ab.safetensors")
    assert not (tmp_path / "ab.safetensors").exists()


def test_resize_and_combine_cli(tmp_path, capsys):
    a = write_random_lora(tmp_path / "a.safetensors", CFG, rank=4)
    b = write_random_lora(tmp_path / "b.safetensors", CFG, rank=4, seed=9)
    assert main(["combine", "--lora", f"{a}:0.5", "--lora", str(b), "--out", str(tmp_path / "ab.safetensors")]) == 0
    assert "exact" in capsys.readouterr().out
    assert main(["resize", str(tmp_path / "ab.safetensors"), str(tmp_path / "ab4.safetensors"), "--rank", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["resized"] == 20 and 0 < report["rel_error"]["max"] < 1


def test_combine_refuses_the_two_experts_loras(tiny_loras, tmp_path, capsys):
    out = tmp_path / "both.safetensors"
    assert main(["combine", "--lora", str(tiny_loras["high"]), "--lora", str(tiny_loras["low"]), "-o", str(out)]) == 2
    assert "'circle_rotate_l.safetensors' is a low-noise LoRA (by its filename) and an earlier one is for the other " \
           "expert" in capsys.readouterr().err and not out.exists()
    assert main(["-q", "combine", "--lora", str(tiny_loras["high"]), "--lora", str(tiny_loras["low"]), "-o", str(out),
                 "--ignore-expert-evidence"]) == 0


def test_an_alpha_of_several_values_is_a_broken_lora(tmp_path):
    src = write_random_lora(tmp_path / "a.safetensors", CFG, rank=4, alpha=1.0)
    tensors = load_file(str(src))
    key = next(k for k in tensors if k.endswith(".alpha"))
    tensors[key] = torch.tensor([1.0, 2.0])
    save_file(tensors, str(tmp_path / "vector.safetensors"))
    with pytest.raises(UserError, match=f"'{key}' holds 2 values; an alpha is one number"):
        read_lora_index(tmp_path / "vector.safetensors")


def test_an_alpha_of_0_keeps_its_trained_scale_for_comfyui(tmp_path, capsys):
    """musubi reads alpha 0 as alpha = rank (scale 1); ComfyUI's loader takes 0 / rank: no change at all."""
    src = write_random_lora(tmp_path / "a.safetensors", CFG, rank=4, alpha=1.0, fmt="comfy")
    tensors = {k: (torch.tensor(0.0) if k.endswith(".alpha") else v) for k, v in load_file(str(src)).items()}
    save_file(tensors, str(tmp_path / "zero.safetensors"))
    assert main(["inspect", str(tmp_path / "zero.safetensors")]) == 0
    assert "takes its 20 alpha(s) of 0 as no change" in capsys.readouterr().out
    report = convert_lora(tmp_path / "zero.safetensors", tmp_path / "fixed.safetensors", to="comfy")
    assert "20 alpha(s) of 0 written as the rank" in report.alpha
    with safe_open(report.out, framework="pt") as f:
        assert {float(f.get_tensor(k)) for k in f.keys() if k.endswith(".alpha")} == {4.0}
    for m, delta in deltas(report.out).items():  # the same deltas musubi trained
        assert torch.equal(delta, deltas(tmp_path / "zero.safetensors", alpha_if_missing="rank")[m])


def test_an_alpha_of_0_is_refused_where_the_scale_must_be_chosen_unless_told(tmp_path, capsys):
    """ComfyUI applies 0 / rank (comfy/weight_adapter/lora.py:175), musubi-tuner the rank: merge, resize,
    combine and a folding convert ask which; --alpha-if-missing decides, as for a missing alpha."""
    src = write_random_lora(tmp_path / "a.safetensors", CFG, rank=4, alpha=1.0, dtype=torch.float32)
    tensors = {k: (torch.tensor(0.0) if k.endswith(".alpha") else v) for k, v in load_file(str(src)).items()}
    save_file(tensors, str(tmp_path / "zero.safetensors"))
    zero = tmp_path / "zero.safetensors"
    base = write_tiny_wan(tmp_path / "base.safetensors", config=CFG, dtype="fp32", rest_dtype="fp32")
    assert inspect_file(zero).scales == {"unknown": 20}
    assert main(["merge", str(base), "--lora", str(zero), "-o", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "an alpha of 0: 'lora_unet_blocks_0_self_attn_q.alpha' (and 19 more module(s)) is 0" in err
    assert "ComfyUI applies 0 / rank (no change at all)" in err and "--alpha-if-missing rank" in err
    for run in (lambda: resize_lora(zero, tmp_path / "r.safetensors", rank=2),
                lambda: combine_loras([(zero, 1.0), (src, 1.0)], tmp_path / "c.safetensors"),
                lambda: convert_lora(zero, tmp_path / "d.safetensors", to="diffusers")):
        with pytest.raises(UserError, match="an alpha of 0"):
            run()
    for told, scale in (("rank", 1.0), ("2", 0.5)):
        out = tmp_path / f"m_{told}.safetensors"
        assert main(["-q", "merge", str(base), "--lora", str(zero), "-o", str(out), "--alpha-if-missing", told]) == 0
        b, m = load_file(str(base)), load_file(str(out))
        for module in ("blocks.0.self_attn.q", "blocks.1.ffn.2"):
            name, key = wan_arch.musubi_lora_name(module), module + ".weight"
            want = scale * tensors[name + ".lora_up.weight"].double() @ tensors[name + ".lora_down.weight"].double()
            assert torch.allclose(m[key].double() - b[key].double(), want, rtol=1e-5, atol=1e-7), key


@pytest.mark.parametrize("told, scale", [("rank", 1.0), (2.0, 0.5)])
def test_resizing_an_alpha_of_0_keeps_the_scale_it_was_told(tmp_path, told, scale):
    """resize --alpha-if-missing on an alpha-0 LoRA: the resized file holds that scale as its alpha,
    which ComfyUI, musubi and merge all read alike (it wrote the 0 back: no change in ComfyUI)."""
    src = write_random_lora(tmp_path / "a.safetensors", CFG, rank=4, alpha=1.0, dtype=torch.float32)
    tensors = {k: (torch.tensor(0.0) if k.endswith(".alpha") else v) for k, v in load_file(str(src)).items()}
    zero = tmp_path / "zero.safetensors"
    save_file(tensors, str(zero))
    out = tmp_path / "r.safetensors"
    resize_lora(zero, out, rank=4, alpha_if_missing=told)  # the same rank: only the alphas speak
    with safe_open(str(out), framework="pt") as f:
        assert {float(f.get_tensor(k)) for k in f.keys() if k.endswith(".alpha")} == {4.0 * scale}
    for m, delta in deltas(out).items():
        assert torch.allclose(delta, scale * deltas(zero, alpha_if_missing="rank")[m], rtol=1e-6, atol=1e-9), m


def _deltas64(path, *, strength=1.0):
    """module -> strength * alpha / rank * up @ down in float64 (the exact delta a file holds)."""
    index = read_lora_index(path)
    scales = module_scales(index)
    return {m: strength * scales[m] * (mod.up.double().reshape(mod.up.shape[0], -1)
                                       @ mod.down.double().reshape(mod.rank, -1))
            for m, mod in resolved_modules(index, scales).items()}


def test_resize_to_a_rank_above_a_modules_min_out_in_keeps_that_module_at_it(tmp_path, capsys):
    """Wan2.2's head.head has 64 rows (out_dim 16 x patch 1x2x2): a rank-96 module there has a delta of rank
    at most 64, so --rank 80 keeps it at 64, exactly, where the rest goes to 80 (before: a traceback)."""
    cfg = wan_arch.tiny_config(dim=128, ffn_dim=256)
    src = write_random_lora(tmp_path / "r96.safetensors", cfg, rank=96, alpha=16.0, dtype=torch.float32,
                            modules=["blocks.0.self_attn.q", "head.head"], metadata={"ss_network_dim": "96",
                                                                                    "ss_network_alpha": "16"})
    rep = resize_lora(src, tmp_path / "r80.safetensors", rank=80)
    assert rep.resized == 2 and rep.ranks == {64: 1, 80: 1}
    index = read_lora_index(rep.out)
    assert {m: (i.rank, pytest.approx(i.alpha, rel=1e-7)) for m, i in index.modules.items()} == \
        {"blocks.0.self_attn.q": (80, 16.0 * 80 / 96), "head.head": (64, 16.0 * 64 / 96)}  # the scale kept (fp32 alpha)
    assert index.metadata["ss_network_dim"] == "Dynamic" and index.metadata["ss_network_alpha"] == "Dynamic"
    want, got = _deltas64(src), _deltas64(rep.out)
    for m in want:
        true_err = float(torch.linalg.norm(want[m] - got[m]) / torch.linalg.norm(want[m]))
        assert rep.per_module[m] == pytest.approx(true_err, rel=1e-3, abs=1e-6), m
    assert rep.per_module["head.head"] < 1e-6 < rep.per_module["blocks.0.self_attn.q"]
    assert inspect_file(rep.out).metadata_mismatch == []
    assert main(["resize", str(src), "-o", str(tmp_path / "cli.safetensors"), "--rank", "80"]) == 0
    assert "ranks written: 64 x1, 80 x1" in capsys.readouterr().out


def test_converted_files_keep_no_stale_alpha_record(tmp_path):
    """ss_network_alpha follows the alpha written: none in the diffusers layout (it folds alpha into the weights),
    so musubi -> diffusers -> musubi carries no record that the alpha = rank written back contradicts."""
    src = write_random_lora(tmp_path / "a.safetensors", CFG, rank=8, alpha=4.0, dtype=torch.float32,
                            metadata={"ss_network_dim": "8", "ss_network_alpha": "4.0", "ss_output_name": "a"})
    mid = convert_lora(src, tmp_path / "mid.safetensors", to="diffusers").out
    back = convert_lora(mid, tmp_path / "back.safetensors", to="musubi").out
    with safe_open(mid, framework="pt") as f:
        assert "ss_network_alpha" not in f.metadata() and f.metadata()["ss_output_name"] == "a"
    assert {i.alpha for i in read_lora_index(back).modules.values()} == {8.0}
    assert inspect_file(back).metadata_mismatch == []  # (before: "ss_network_alpha says 4, the tensors hold 8")
    for m, d in _deltas64(src).items():  # scale 1/2: folded exactly
        assert torch.equal(_deltas64(back)[m], d), m
    # an alpha of 0 written as the rank for ComfyUI: the record says the rank too
    zero = tmp_path / "zero.safetensors"
    save_file({k: (torch.tensor(0.0) if k.endswith(".alpha") else v) for k, v in load_file(str(src)).items()},
              str(zero), metadata={"ss_network_dim": "8", "ss_network_alpha": "0"})
    comfy = convert_lora(zero, tmp_path / "zero_comfy.safetensors", to="comfy").out
    assert read_lora_index(comfy).metadata["ss_network_alpha"] == "8"
    assert inspect_file(comfy).metadata_mismatch == []


def test_combine_in_fp16_keeps_small_strengths_of_musubi_default_loras(tmp_path, capsys):
    """musubi's default alpha 1 at rank 32 is scale 1/32, and trained ``up`` weights are ~2e-3: all of
    strength * 1/32 on ``up`` put the fp16 blocks into subnormals (3.5e-3 relative error at 0.1 + 0.05, where
    the inputs' own fp16 rounding is ~3e-4). Split between up and down, the error stays at fp16's own."""
    a = write_random_lora(tmp_path / "a.safetensors", CFG, rank=32, alpha=1.0, dtype=torch.float16, seed=5, up_std=2e-3)
    b = write_random_lora(tmp_path / "b.safetensors", CFG, rank=32, alpha=1.0, dtype=torch.bfloat16, seed=4,
                          up_std=2e-3)
    rep = combine_loras([(a, 0.1), (b, 0.05)], tmp_path / "ab.safetensors", dtype="fp16")
    da, db, got = _deltas64(a, strength=0.1), _deltas64(b, strength=0.05), _deltas64(tmp_path / "ab.safetensors")
    errors = {m: float(torch.linalg.norm(got[m] - da[m] - db[m]) / torch.linalg.norm(da[m] + db[m])) for m in got}
    worst = max(errors.values())
    assert worst < 6e-4, worst
    assert not rep.exact and rep.max_rel_error == pytest.approx(worst, rel=1e-3)  # measured, not estimated
    assert main(["combine", "--lora", f"{a}:0.1", "--lora", f"{b}:0.05", "-o", str(tmp_path / "c.safetensors"),
                 "--dtype", "fp16"]) == 0
    assert f"rounded to fp16 (max relative error {worst:.1e})" in capsys.readouterr().out
