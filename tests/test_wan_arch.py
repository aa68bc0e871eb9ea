"""The architecture facts and tiny checkpoints against musubi-tuner's own Wan model class."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from circle_rotate.kernel import wan_arch
from circle_rotate.kernel.checkpoint_identity import identify_checkpoint
from circle_rotate.kernel.safetensors_io import read_header
from circle_rotate.selfcheck.synthetic.tiny_wan import write_tiny_wan


def _musubi_model(musubi, cfg: wan_arch.WanDiTConfig, *, i2v: bool = True):
    from musubi_tuner.wan.modules.model import WanModel

    return WanModel(model_type="i2v" if i2v else "t2v", model_version=cfg.model_version, in_dim=cfg.in_dim, dim=cfg.dim,
                    ffn_dim=cfg.ffn_dim, freq_dim=cfg.freq_dim, text_dim=cfg.text_dim, out_dim=cfg.out_dim,
                    num_heads=cfg.num_heads, num_layers=cfg.num_layers)


@pytest.mark.parametrize("version,i2v", [("2.2", True), ("2.2", False), ("2.1", True)])
def test_shapes_match_musubi_wanmodel(musubi, version, i2v):
    cfg = wan_arch.WanDiTConfig(dim=64, ffn_dim=172, num_heads=4, num_layers=2, in_dim=36 if i2v else 16,
                                model_version=version)
    with torch.device("meta"):
        model = _musubi_model(musubi, cfg, i2v=i2v)
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert wan_arch.dit_shapes(cfg) == theirs
    assert list(wan_arch.dit_shapes(cfg)) == list(theirs)  # same order as WanModel.state_dict()


def test_real_a14b_config_matches_musubi_configs(musubi):
    from musubi_tuner.wan.configs import WAN_CONFIGS

    for task, ours in (("i2v-A14B", wan_arch.I2V_A14B), ("t2v-A14B", wan_arch.T2V_A14B)):
        c = WAN_CONFIGS[task]
        assert (c.dim, c.ffn_dim, c.num_heads, c.num_layers, c.in_dim, c.out_dim, c.freq_dim, tuple(c.patch_size)) == (
            ours.dim, ours.ffn_dim, ours.num_heads, ours.num_layers, ours.in_dim, ours.out_dim, ours.freq_dim, ours.patch_size)
        assert tuple(c.vae_stride) == wan_arch.VAE_STRIDE
    assert WAN_CONFIGS["i2v-A14B"].boundary * 1000 == pytest.approx(wan_arch.BOUNDARY_I2V)
    assert WAN_CONFIGS["t2v-A14B"].boundary * 1000 == pytest.approx(wan_arch.BOUNDARY_T2V)
    # 14B per expert: the published "0.7% LoRA parameters" rests on this count.
    n = sum(torch.Size(s).numel() for s in wan_arch.dit_shapes(wan_arch.I2V_A14B).values())
    assert 14.2e9 < n < 14.4e9


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_tiny_checkpoint_loads_strictly_into_musubi_wanmodel(musubi, tmp_path, dtype):
    cfg = wan_arch.tiny_config()
    path = write_tiny_wan(tmp_path / f"tiny_{dtype}.safetensors", config=cfg, dtype=dtype, seed=3)
    with safe_open(str(path), framework="pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    model = _musubi_model(musubi, cfg)
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.blocks[1].ffn[2].weight.to(sd["blocks.1.ffn.2.weight"].dtype), sd["blocks.1.ffn.2.weight"])


def test_lora_targets_match_musubi_lora_wan(musubi):
    from musubi_tuner.networks import lora_wan

    cfg = wan_arch.tiny_config()
    model = _musubi_model(musubi, cfg)
    net = lora_wan.create_arch_network(1.0, 4, 1.0, None, [], model)
    names = sorted(lora.lora_name for lora in net.unet_loras)
    assert names == sorted(wan_arch.musubi_lora_name(m) for m in wan_arch.lora_target_modules(cfg))
    assert len(names) == 10 * cfg.num_layers


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32", "fp8_e4m3fn", "fp8_scaled"])
def test_tiny_checkpoint_dtypes_and_identity(tiny_wan_dir, dtype):
    path = tiny_wan_dir / f"wan2.2_i2v_high_noise_14B_{dtype}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        q = f.get_tensor("blocks.0.self_attn.q.weight")
        norm = f.get_tensor("blocks.0.norm3.weight")
        if dtype == "fp8_scaled":
            assert f.get_tensor("scaled_fp8").dtype == torch.float8_e4m3fn
            scale = f.get_tensor("blocks.0.self_attn.q.scale_weight")
            assert scale.dtype == torch.float32 and scale.dim() == 0
    expected = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.get(dtype, torch.float8_e4m3fn)
    assert q.dtype == expected
    assert norm.dtype == (expected if dtype in ("fp16", "bf16", "fp32") else torch.float16)
    plain = {k for k in keys if k != "scaled_fp8" and not k.endswith((".scale_weight", ".scale_input"))}
    assert plain == set(wan_arch.dit_shapes(wan_arch.tiny_config()))
    ident = identify_checkpoint(read_header(path))
    assert (ident.family, ident.task, ident.expert, ident.expert_evidence, ident.dtype, ident.key_prefix) == (
        "wan2.2-a14b", "i2v", "high", "filename", dtype, "")
    assert ident.trainable_by_musubi == (dtype != "fp8_scaled")


def test_identity_from_metadata_prefix_and_t2v(tmp_path):
    t2v = write_tiny_wan(tmp_path / "expert.safetensors", config=wan_arch.tiny_config(i2v=False), expert="low",
                         key_prefix=wan_arch.COMFY_PREFIX)
    ident = identify_checkpoint(read_header(t2v))
    assert (ident.task, ident.expert, ident.expert_evidence, ident.key_prefix) == ("t2v", "low", "metadata", wan_arch.COMFY_PREFIX)
    anon = write_tiny_wan(tmp_path / "model.safetensors")
    assert identify_checkpoint(read_header(anon)).expert is None


def test_fp8_scaled_dequantizes_close_to_source(tmp_path):
    from circle_rotate.selfcheck.synthetic.tiny_wan import tiny_wan_tensors

    ref = dict(tiny_wan_tensors(wan_arch.tiny_config(), "fp32", seed=5))
    q = dict(tiny_wan_tensors(wan_arch.tiny_config(), "fp8_scaled", seed=5))
    w = ref["blocks.1.cross_attn.k.weight"]
    deq = q["blocks.1.cross_attn.k.weight"].float() * q["blocks.1.cross_attn.k.scale_weight"]
    # e4m3 has 3 mantissa bits: relative error per element at most 2^-4 (plus subnormals near 0).
    assert torch.all((deq - w).abs() <= w.abs() * 2**-4 + q["blocks.1.cross_attn.k.scale_weight"] * 2**-9)
