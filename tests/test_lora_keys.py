"""LoRA key layouts, checked against the ComfyUI loader's key rules (``comfy_lora_rules``).

ComfyUI (upstream Comfy-Org/ComfyUI, read at a125cd84, Oct 2025; GPL-3.0, so re-stated here from
what the code does, not copied):

- ``comfy/sd.py`` ``load_lora_for_models`` builds ``key_map = comfy.lora.model_lora_keys_unet(model)``,
  runs ``comfy.lora_convert.convert_lora`` (Wan Fun ``lora_unet__`` -> ``lora_unet_``, only when the file
  holds ``lora_unet__blocks_0_cross_attn_k.lora_down.weight``: ``comfy/lora_convert.py:39``), then
  ``comfy.lora.load_lora(lora, key_map)``, which logs "lora key not loaded" for every LoRA
  tensor it did not consume.
- ``comfy/lora.py`` ``model_lora_keys_unet``: for each key ``k`` of the model's state dict (the DiT's
  parameters under ``diffusion_model.``) ending in ``.weight``, map ``"lora_unet_" + k[16:-7]``
  with dots replaced by underscores, and ``k[:-7]`` itself, to ``k``; other keys map to
  themselves. Wan (``model_base.WAN21``/``WAN22``) adds no branch of its own, and
  ``comfy.utils.unet_to_diffusers`` returns nothing for a config without ``num_res_blocks``.
- ``comfy/lora.py`` ``load_lora`` with ``comfy/weight_adapter/lora.py`` ``LoRAAdapter.load``: for each
  map entry ``x``, consume ``x.alpha`` and ``x.dora_scale`` if present, then the first pair found of
  ``x.lora_up.weight``/``x.lora_down.weight`` (+ ``x.lora_mid.weight``), ``x_lora.up.weight``/
  ``x_lora.down.weight``, ``x.lora_B.weight``/``x.lora_A.weight``, ``x.lora.up.weight``/
  ``x.lora.down.weight``, ``x.lora_B``/``x.lora_A``, ``x.lora_linear_layer.up.weight``/``.down.weight``,
  ``x.lora_B.default.weight``/``x.lora_A.default.weight``; also ``x.w_norm``, ``x.b_norm``,
  ``x.diff``, ``x.diff_b``, ``x.set_weight``.
"""

from __future__ import annotations

import pytest
from safetensors import safe_open

from circle_rotate.kernel import wan_arch
from circle_rotate.selfcheck.synthetic.lora import write_random_lora
from circle_rotate.tools.lora.convert import convert_lora
from circle_rotate.tools.lora.keys import FORMATS, LoraKey, lora_key, parse_lora_key
from comfy_lora_rules import comfy_key_map, comfy_load

A14B_KEYS = list(wan_arch.dit_shapes(wan_arch.I2V_A14B))
A14B_MODULES = wan_arch.lora_target_modules(wan_arch.I2V_A14B)


@pytest.mark.parametrize("fmt", ["comfy", "musubi"])
def test_every_key_of_a_full_a14b_lora_is_loaded_by_comfyui(fmt):
    keys = [lora_key(m, part, fmt) for m in A14B_MODULES for part in ("down", "up", "alpha")]
    loaded, patched = comfy_load(keys, comfy_key_map(A14B_KEYS))
    assert set(keys) - loaded == set()  # zero "lora key not loaded"
    assert patched == {"diffusion_model." + m + ".weight" for m in A14B_MODULES}
    assert len(patched) == 400


def test_diffusers_layout_is_not_loaded_by_comfyui_for_wan():
    """Why ``convert --to comfy`` exists: ComfyUI maps no ``transformer.*`` names for Wan."""
    keys = [lora_key(m, part, "diffusers") for m in A14B_MODULES[:10] for part in ("down", "up")]
    loaded, _ = comfy_load(keys, comfy_key_map(A14B_KEYS))
    assert loaded == set()


@pytest.mark.parametrize("src_fmt", FORMATS)
def test_converted_file_keys_all_map_to_real_wan22_parameters(tmp_path, src_fmt):
    cfg = wan_arch.tiny_config()
    src = write_random_lora(tmp_path / f"src_{src_fmt}.safetensors", cfg, fmt=src_fmt, rank=3)
    out = convert_lora(src, tmp_path / "comfy.safetensors", to="comfy").out
    with safe_open(out, framework="pt") as f:
        keys = list(f.keys())
    loaded, patched = comfy_load(keys, comfy_key_map(wan_arch.dit_shapes(cfg)))
    assert set(keys) == loaded
    assert patched == {"diffusion_model." + m + ".weight" for m in wan_arch.lora_target_modules(cfg)}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_wan_module_round_trips_through_every_layout(fmt):
    modules = list(wan_arch.lora_target_modules(wan_arch.WanDiTConfig(model_version="2.1"))) + [
        "patch_embedding", "text_embedding.0", "time_embedding.2", "time_projection.1", "head.head", "img_emb.proj.3"]
    parts = ("down", "up") if fmt == "diffusers" else ("down", "up", "alpha")
    for module in modules:
        for part in parts:
            assert parse_lora_key(lora_key(module, part, fmt)) == LoraKey(module, part, fmt)


@pytest.mark.parametrize("key,expected", [
    ("lora_unet_blocks_39_cross_attn_k_img.lora_down.weight", LoraKey("blocks.39.cross_attn.k_img", "down", "musubi")),
    ("lora_unet_blocks_0_ffn_2.alpha", LoraKey("blocks.0.ffn.2", "alpha", "musubi")),
    ("lora_unet__blocks_0_cross_attn_k.lora_up.weight", LoraKey("blocks.0.cross_attn.k", "up", "musubi")),  # Wan Fun
    ("lora_unet_time_projection_1.lora_up.weight", LoraKey("time_projection.1", "up", "musubi")),
    ("diffusion_model.blocks.3.self_attn.o.lora_A.weight", LoraKey("blocks.3.self_attn.o", "down", "comfy")),
    ("diffusion_model.blocks.3.self_attn.o.lora_down.weight", LoraKey("blocks.3.self_attn.o", "down", "comfy")),
    ("diffusion_model.blocks.3.ffn.0.alpha", LoraKey("blocks.3.ffn.0", "alpha", "comfy")),
    # diffusers' own Wan names, as its _convert_non_diffusers_wan_lora_to_diffusers writes them
    ("transformer.blocks.2.attn1.to_out.0.lora_B.weight", LoraKey("blocks.2.self_attn.o", "up", "diffusers")),
    ("transformer.blocks.2.attn2.add_k_proj.lora_A.weight", LoraKey("blocks.2.cross_attn.k_img", "down", "diffusers")),
    ("transformer.blocks.2.ffn.net.0.proj.lora_A.weight", LoraKey("blocks.2.ffn.0", "down", "diffusers")),
    ("transformer.condition_embedder.time_proj.lora_B.weight", LoraKey("time_projection.1", "up", "diffusers")),
    ("base_model.model.blocks.1.attn2.to_q.lora_A.weight", LoraKey("blocks.1.cross_attn.q", "down", "diffusers")),
    ("transformer.blocks.1.self_attn.q.lora_A.weight", LoraKey("blocks.1.self_attn.q", "down", "diffusers")),
])
def test_known_key_spellings(key, expected):
    assert parse_lora_key(key) == expected


@pytest.mark.parametrize("key", [
    "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",  # FLUX / HunyuanVideo
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight",  # SD
    "lora_unet_blocks_0_self_attn_norm_q.lora_up.weight",  # not a Linear musubi wraps
    "diffusion_model.blocks.0.self_attn.q.diff",  # full-weight diff, not LoRA
    "lora_unet_blocks_0_self_attn_q.hada_w1_a",  # LoHa
    "blocks.0.self_attn.q.weight",  # a model weight
])
def test_non_wan_lora_keys_are_not_understood(key):
    assert parse_lora_key(key) is None


def test_lora_key_refuses_what_a_layout_cannot_store():
    with pytest.raises(ValueError):
        lora_key("blocks.0.self_attn.q", "alpha", "diffusers")
    with pytest.raises(ValueError):
        lora_key("blocks.0.norm3", "down", "comfy")
