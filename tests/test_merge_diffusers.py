"""A Diffusers-format expert (``Wan-AI/Wan2.2-I2V-A14B-Diffusers``: ``transformer/`` high-noise,
``transformer_2/`` low-noise, sharded) merges and converts into Wan's own layout, the one ComfyUI and
musubi-tuner load. The Diffusers files are made here with the renames of diffusers' own converter
(``tests/model_files.diffusers_layout``, a table independent of the library's), so a wrong name on
either side shows."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from circle_rotate.cli.main import main
from circle_rotate.kernel import wan_arch
from circle_rotate.kernel.errors import UserError
from circle_rotate.selfcheck.synthetic.lora import write_random_lora
from circle_rotate.selfcheck.synthetic.tiny_wan import write_release_shards, write_tiny_wan
from circle_rotate.tools.lora.inspect import inspect_file
from circle_rotate.tools.merge.run import merge_loras
from model_files import diffusers_layout, musubi_wan

CFG = wan_arch.tiny_config()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The same tiny expert in Wan's layout and as the Diffusers release's sharded transformer_2/ folder."""
    d = tmp_path_factory.mktemp("diffusers")
    wan = write_tiny_wan(d / "wan.safetensors", dtype="fp32", rest_dtype="fp32", seed=4)
    single = diffusers_layout(wan, d / "diffusers.safetensors")
    folder = write_release_shards(single, d / "Wan2.2-I2V-A14B-Diffusers" / "transformer_2", shards=3).parent
    lora = write_random_lora(d / "circle_rotate_l.safetensors", CFG, rank=4, alpha=2.0, seed=6)
    return {"wan": wan, "single": single, "folder": folder, "lora": lora}


def tensors(path):
    return load_file(str(path))


@pytest.mark.parametrize("dtype", ["same", "bf16", "fp8_scaled"])
def test_a_diffusers_folder_merges_to_what_the_wan_layout_merges_to(release, tmp_path, dtype):
    from_wan = merge_loras(release["wan"], [(release["lora"], 0.7)], tmp_path / "a.safetensors", dtype=dtype)
    from_diffusers = merge_loras(release["folder"], [(release["lora"], 0.7)], tmp_path / "b.safetensors", dtype=dtype)
    assert from_diffusers.merged == from_wan.merged == len(wan_arch.lora_target_modules(CFG))
    a, b = tensors(tmp_path / "a.safetensors"), tensors(tmp_path / "b.safetensors")
    assert set(a) == set(b) and all(a[k].equal(b[k]) for k in a)  # every name and every bit
    assert from_diffusers.expert == "low"  # transformer_2/ runs below the boundary in WanImageToVideoPipeline


def test_without_a_lora_it_is_converted_into_a_file_musubi_loads(musubi, release, tmp_path, capsys):
    out = tmp_path / "wan2.2_i2v_low_noise_14B_bf16.safetensors"
    assert main(["merge", str(release["single"]), "-o", str(out), "--dtype", "same"]) == 0  # a rename is work to do
    capsys.readouterr()
    got, want = tensors(out), tensors(release["wan"])
    assert set(got) == set(want) and all(got[k].equal(want[k]) for k in want)
    model = musubi_wan(CFG)
    missing, unexpected = model.load_state_dict(got, strict=False)
    assert not missing and not unexpected  # musubi-tuner's own WanModel takes every tensor by name


def test_inspect_still_names_the_layout(release, capsys):
    assert inspect_file(release["folder"]).layout == "diffusers"
    assert main(["inspect", str(release["folder"])]) == 0
    out = capsys.readouterr().out
    assert "Diffusers layout" in out and "low (filename)" in out
    assert main(["inspect", str(release["wan"])]) == 0
    assert "Diffusers" not in capsys.readouterr().out


def test_a_tensor_with_no_wan_name_is_refused_naming_it(release, tmp_path):
    sd = tensors(release["single"])
    sd["blocks.0.attn1.to_qkv.weight"] = torch.zeros(3 * CFG.dim, CFG.dim)  # a fused export, not diffusers' converter
    save_file(sd, str(tmp_path / "fused.safetensors"))
    with pytest.raises(UserError, match=r"'blocks\.0\.attn1\.to_qkv\.weight' has no counterpart in Wan's layout"):
        merge_loras(tmp_path / "fused.safetensors", [(release["lora"], 1.0)], tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()



def wan21_i2v(path):
    """A tiny Wan2.1 I2V DiT: the Wan2.2 one plus the CLIP image layers (projection, k_img/v_img/norm_k_img)."""
    sd = tensors(write_tiny_wan(path, dtype="fp32", rest_dtype="fp32", seed=2))
    gen = torch.Generator().manual_seed(0)
    dim, clip = CFG.dim, 32
    extra = {"img_emb.proj.0.weight": (clip,), "img_emb.proj.0.bias": (clip,), "img_emb.proj.1.weight": (clip, clip),
             "img_emb.proj.1.bias": (clip,), "img_emb.proj.3.weight": (dim, clip), "img_emb.proj.3.bias": (dim,),
             "img_emb.proj.4.weight": (dim,), "img_emb.proj.4.bias": (dim,)}
    for i in range(CFG.num_layers):
        extra.update({f"blocks.{i}.cross_attn.{n}_img.{p}": (dim, dim) if p == "weight" else (dim,)
                      for n in "kv" for p in ("weight", "bias")})
        extra[f"blocks.{i}.cross_attn.norm_k_img.weight"] = (dim,)
    sd.update({k: torch.randn(shape, generator=gen) for k, shape in extra.items()})
    save_file(sd, str(path))
    return path


def test_wan21_image_layers_map_back_and_a_single_transformer_is_no_expert(tmp_path):
    # Wan2.1's Diffusers releases have one transformer/ and no experts; its image layers tell it apart
    wan = wan21_i2v(tmp_path / "wan21.safetensors")
    folder = tmp_path / "Wan2.1-I2V-14B-480P-Diffusers" / "transformer"
    folder.mkdir(parents=True)
    diffusers_layout(wan, folder / "diffusion_pytorch_model.safetensors")
    assert any("add_k_proj" in k for k in tensors(folder / "diffusion_pytorch_model.safetensors"))
    report = inspect_file(folder)
    assert report.family == "wan2.1-14b" and report.expert is None and report.layout == "diffusers"
    out = tmp_path / "wan21_back.safetensors"
    assert merge_loras(folder, [], out, dtype="same").expert is None
    got, want = tensors(out), tensors(wan)
    assert set(got) == set(want) and all(got[k].equal(want[k]) for k in want)
