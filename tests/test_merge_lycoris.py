"""LoHa and LoKr (musubi-tuner's ``networks.loha`` / ``networks.lokr``) merged, converted and inspected.

musubi-tuner trains them for Wan but its ``merge_lora.py`` merges plain LoRA only; its model
loader applies them with ``merge_weights_to_tensor``. The files here are made and saved by
musubi's own networks on musubi's own tiny ``WanModel``, and the reference merge is musubi's
``merge_weights_to_tensor`` on fp32 copies of the base weights and of the LoRA's tensors
(``W + multiplier * scale * delta`` in fp32, as ours): after the cast to fp16 the two agree to
one unit in the last place.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from circle_rotate.kernel import wan_arch
from circle_rotate.kernel.errors import UserError
from circle_rotate.tools.lora.combine import combine_loras
from circle_rotate.tools.lora.convert import convert_lora
from circle_rotate.tools.lora.inspect import inspect_file
from circle_rotate.tools.lora.lycoris import add_rows, parse_product_key
from circle_rotate.tools.lora.resize import resize_lora
from circle_rotate.tools.merge.run import merge_loras
from comfy_lora_rules import comfy_key_map, comfy_load
from float_bits import max_ulps
from model_files import musubi_wan

STRENGTH = 0.75
ALPHA = 2.0
#: (network, rank): LoKr at rank 2 stores w2 decomposed (alpha / rank scales it), at rank 8 whole
#: (scale 1): musubi decomposes when rank < max(factor) / 2, and the tiny dim 64 factors as 8 x 8.
NETWORKS = [("loha", 4), ("lokr", 2), ("lokr", 8)]


@pytest.fixture(scope="module")
def base(musubi, tmp_path_factory):
    """A musubi-built tiny Wan2.2 I2V expert in fp16, every weight nonzero."""
    d = tmp_path_factory.mktemp("lycoris_base")
    torch.manual_seed(0)
    model = musubi_wan(wan_arch.tiny_config())
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.02)
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()},
              str(d / "wan2.2_i2v_low_noise_14B_fp16.safetensors"))
    return d / "wan2.2_i2v_low_noise_14B_fp16.safetensors"


def musubi_network_file(network: str, rank: int, path):
    """A LoHa or LoKr made by musubi's network module on its WanModel, its zero-initialised factor
    given values (a fresh network's delta is zero, which would test nothing), saved by musubi."""
    import importlib

    module = importlib.import_module(f"musubi_tuner.networks.{network}")
    model = musubi_wan(wan_arch.tiny_config())
    net = module.create_arch_network(1.0, rank, ALPHA, None, [], model)
    net.apply_to(None, model, apply_text_encoder=False, apply_unet=True)
    gen = torch.Generator().manual_seed(rank)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    net.save_weights(str(path), torch.bfloat16, {"ss_network_module": f"networks.{network}"})
    return path


def musubi_merge(network: str, base_path, lora_path, strength: float) -> dict:
    """musubi's own ``merge_weights_to_tensor`` on fp32 copies of every base weight, the LoRA's tensors in fp32."""
    import importlib

    merge = importlib.import_module(f"musubi_tuner.networks.{network}").merge_weights_to_tensor
    # in fp32, as its LoHaInfModule/LoKrInfModule.merge_to (and our merge) compute; given the stored
    # bf16 tensors, merge_weights_to_tensor would round the delta to bf16 before adding it
    lora = {k: v.float() for k, v in load_file(str(lora_path)).items()}
    out = {}
    for key, weight in load_file(str(base_path)).items():
        name = "lora_unet_" + key.rsplit(".", 1)[0].replace(".", "_")
        out[key] = merge(weight.float(), name, lora, set(lora), strength, torch.device("cpu")) if key.endswith(".weight") else weight.float()
    return out


@pytest.mark.parametrize("network,rank", NETWORKS)
def test_merge_matches_musubi(base, tmp_path, network, rank):
    lora = musubi_network_file(network, rank, tmp_path / f"{network}.safetensors")
    report = merge_loras(base, [(lora, STRENGTH)], tmp_path / "merged.safetensors")
    reference = musubi_merge(network, base, lora, STRENGTH)
    ours, stored = load_file(report.out), load_file(str(base))
    targets = {m + ".weight" for m in wan_arch.lora_target_modules(wan_arch.tiny_config())}
    assert report.loras[0]["modules"] == len(targets) == report.merged
    for key, ref in reference.items():
        if key in targets:
            assert not torch.equal(ours[key], stored[key]), key
            assert max_ulps(ours[key], ref.to(torch.float16)) <= 1, key
        else:
            assert torch.equal(ours[key], stored[key]), key


@pytest.mark.parametrize("network,rank", NETWORKS)
def test_row_ranges_build_the_whole_delta(musubi, tmp_path, network, rank):
    """Row ranges that split the Kronecker blocks anywhere add up to musubi's own delta."""
    import importlib

    from circle_rotate.tools.lora.files import load_product, read_lora_index
    from circle_rotate.tools.lora.lycoris import factors

    lora = musubi_network_file(network, rank, tmp_path / "n.safetensors")
    index = read_lora_index(lora)
    module = importlib.import_module(f"musubi_tuner.networks.{network}")
    sd = {k: v.float() for k, v in load_file(str(lora)).items()}
    for name, info in index.products.items():
        f = factors(info.kind, load_product(index, name))
        rows = info.delta_shape[0]
        pieces = [add_rows(torch.zeros(min(r0 + 7, rows) - r0, info.delta_shape[1]), info.kind, f, r0, min(r0 + 7, rows),
                           info.scale) for r0 in range(0, rows, 7)]
        zero = torch.zeros(info.delta_shape)
        want = module.merge_weights_to_tensor(zero, "lora_unet_" + name.replace(".", "_"), sd, set(sd), 1.0,
                                              torch.device("cpu"))
        assert torch.allclose(torch.cat(pieces), want, rtol=1e-5, atol=1e-7), name


def test_convert_renames_and_comfyui_loads_every_key(base, tmp_path):
    cfg = wan_arch.tiny_config()
    for network, rank in NETWORKS:
        lora = musubi_network_file(network, rank, tmp_path / f"{network}{rank}.safetensors")
        comfy = convert_lora(lora, tmp_path / f"{network}{rank}_comfy.safetensors", to="comfy")
        assert comfy.products == len(wan_arch.lora_target_modules(cfg)) and comfy.modules == 0
        keys_map = comfy_key_map(wan_arch.dit_shapes(cfg))
        for path in (lora, comfy.out):
            keys = set(load_file(str(path)))
            loaded, patched = comfy_load(keys, keys_map)
            assert loaded == keys and patched == {"diffusion_model." + m + ".weight" for m in wan_arch.lora_target_modules(cfg)}
            assert inspect_file(path).comfyui_loads_all_keys
        assert {parse_product_key(k).part for k in load_file(comfy.out) if parse_product_key(k)} == \
               {parse_product_key(k).part for k in load_file(str(lora)) if parse_product_key(k)}
        one = load_file(merge_loras(base, [(lora, 0.5)], tmp_path / "a.safetensors", force=True).out)
        two = load_file(merge_loras(base, [(comfy.out, 0.5)], tmp_path / "b.safetensors", force=True).out)
        assert all(torch.equal(one[k], two[k]) for k in one)  # the same bytes, renamed
        back = load_file(convert_lora(comfy.out, tmp_path / "back.safetensors", to="musubi", force=True).out)
        original = load_file(str(lora))
        assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in back)


def test_what_lora_ranks_cannot_hold_is_refused(base, tmp_path):
    loha = musubi_network_file("loha", 4, tmp_path / "loha.safetensors")
    with pytest.raises(UserError, match=r"diffusers layout"):
        convert_lora(loha, tmp_path / "d.safetensors", to="diffusers")
    with pytest.raises(UserError, match=r"combine works on LoRA ranks; 'lora_unet_blocks_0_self_attn_q\.hada_w1_a' is a LoHa"):
        combine_loras([(loha, 1.0), (loha, 0.5)], tmp_path / "c.safetensors")
    with pytest.raises(UserError, match="resize works on LoRA ranks"):
        resize_lora(loha, tmp_path / "r.safetensors", rank=2)
    sd = load_file(str(loha))
    del sd["lora_unet_blocks_1_ffn_2.hada_w2_b"]
    save_file(sd, str(tmp_path / "cut.safetensors"))
    with pytest.raises(UserError, match=r"broken LoRA: LoHa module 'blocks\.1\.ffn\.2' has no hada_w2_b"):
        merge_loras(base, [(tmp_path / "cut.safetensors", 1.0)], tmp_path / "m.safetensors")
    assert not any((tmp_path / n).exists() for n in ("d.safetensors", "c.safetensors", "r.safetensors", "m.safetensors"))
    report = inspect_file(loha)
    assert report.products == {"LoHa": 20} and report.targets_covered == report.targets_total == 20
