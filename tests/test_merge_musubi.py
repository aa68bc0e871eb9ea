"""Our streaming merge and conversions against musubi-tuner's own code (the CI acceptance check).

The base is a tiny Wan2.2 I2V model built by musubi's ``WanModel``; the LoRA is created by
musubi's ``networks.lora_wan.create_arch_network`` (with nonzero ``lora_up`` so the delta is
not zero) and saved by musubi's ``save_weights``. The reference merge is musubi's
``create_arch_network_from_weights(...).merge_to(...)`` on an fp32 copy of the base, which
computes ``W + multiplier * (up @ down) * scale`` in fp32, like ours.

Tolerances follow from the dtypes: both sides compute the same fp32 sum with the same inputs,
in a different order of the two scalar multiplications (a few fp32 ulps apart), so after the
cast to fp16/bf16/fp8 they agree to within one unit in the last place of the output dtype
(a double-rounding tie can land either side). fp8_scaled is checked against the fp32
reference to within e4m3's rounding: half a step (2^-4 relative) plus the subnormal floor.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from circle_rotate.kernel import wan_arch
from circle_rotate.tools.lora.convert import convert_lora
from circle_rotate.tools.merge.fp8 import FP8_MAX
from circle_rotate.tools.merge.run import merge_loras
from float_bits import max_ulps
from model_files import musubi_wan

STRENGTH = 0.75
RANK, ALPHA = 4, 2.0  # scale alpha / rank = 0.5, so a dropped alpha would be visible




@pytest.fixture(scope="module")
def musubi_files(musubi, tmp_path_factory):
    """A musubi-built fp16 base (+ prefixed and fp8 copies) and a musubi-saved bf16 LoRA."""
    from musubi_tuner.networks import lora_wan

    d = tmp_path_factory.mktemp("musubi_merge")
    cfg = wan_arch.tiny_config()
    torch.manual_seed(0)
    model = musubi_wan(cfg)
    with torch.no_grad():  # musubi zero-initialises some layers; give every weight a value
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.02)
    sd16 = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(sd16, str(d / "base_fp16.safetensors"))
    save_file({wan_arch.COMFY_PREFIX + k: v for k, v in sd16.items()}, str(d / "base_prefixed.safetensors"))
    fp8 = {k: (v.to(torch.float8_e4m3fn) if wan_arch.is_fp8_target(k) else v) for k, v in sd16.items()}
    save_file(fp8, str(d / "base_fp8.safetensors"))

    net = lora_wan.create_arch_network(1.0, RANK, ALPHA, None, [], model)
    net.apply_to(None, model, apply_text_encoder=False, apply_unet=True)  # registers the modules, as training does
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for lora in net.unet_loras:
            lora.lora_up.weight.copy_(torch.randn(lora.lora_up.weight.shape, generator=gen) * 0.05)
    net.save_weights(str(d / "lora.safetensors"), torch.bfloat16, {"ss_network_dim": str(RANK), "ss_output_name": "t"})
    return d, cfg


def _musubi_merge(cfg, base_path, lora_path, strength) -> dict:
    """musubi's own merge (``LoRANetwork.merge_to``) of the LoRA into an fp32 copy of the base."""
    from musubi_tuner.networks import lora_wan

    model = musubi_wan(cfg)
    model.load_state_dict({k: v.float() for k, v in load_file(str(base_path)).items()})
    weights = load_file(str(lora_path))
    net = lora_wan.create_arch_network_from_weights(strength, weights, unet=model, for_inference=True)
    net.merge_to(None, model, weights, device=torch.device("cpu"))
    return {k: v.detach() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def reference(musubi_files):
    d, cfg = musubi_files
    return _musubi_merge(cfg, d / "base_fp16.safetensors", d / "lora.safetensors", STRENGTH)


@pytest.mark.parametrize("dtype,torch_dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16),
                                               ("fp8_e4m3fn", torch.float8_e4m3fn)])
def test_merge_matches_musubi_merge_to(musubi_files, reference, tmp_path, dtype, torch_dtype):
    d, cfg = musubi_files
    out = tmp_path / f"merged_{dtype}.safetensors"
    report = merge_loras(d / "base_fp16.safetensors", [(d / "lora.safetensors", STRENGTH)], out, dtype=dtype)
    assert report.merged == 10 * cfg.num_layers and report.loras[0]["modules"] == 10 * cfg.num_layers
    ours = load_file(str(out))
    assert set(ours) == set(reference)  # no key dropped
    base = load_file(str(d / "base_fp16.safetensors"))
    for key, ref in reference.items():
        touched = any(key == m + ".weight" for m in wan_arch.lora_target_modules(cfg))
        if dtype == "fp8_e4m3fn" and not wan_arch.is_fp8_target(key):
            assert torch.equal(ours[key], base[key]), key  # the rest stays as the base stores it
            continue
        assert ours[key].dtype == torch_dtype, key
        want = ref.clamp(-FP8_MAX, FP8_MAX).to(torch_dtype) if dtype == "fp8_e4m3fn" else ref.to(torch_dtype)
        assert max_ulps(ours[key], want) <= 1, key
        if touched:
            assert not torch.equal(ours[key].float(), base[key].float().to(torch_dtype).float()), f"{key} unchanged"


def test_untouched_tensors_are_byte_copies(musubi_files, tmp_path):
    d, _ = musubi_files
    out = tmp_path / "merged.safetensors"
    merge_loras(d / "base_fp16.safetensors", [(d / "lora.safetensors", 1.0)], out)
    ours, base = load_file(str(out)), load_file(str(d / "base_fp16.safetensors"))
    untouched = [k for k in base if not k.endswith(("q.weight", "k.weight", "v.weight", "o.weight", "ffn.0.weight", "ffn.2.weight"))
                 or not k.startswith("blocks.")]
    assert len(untouched) > 20
    for key in untouched:
        assert ours[key].view(torch.uint8).equal(base[key].view(torch.uint8)), key


def test_fp8_scaled_output_matches_musubi_within_e4m3_rounding(musubi_files, reference, tmp_path):
    d, cfg = musubi_files
    out = tmp_path / "merged_fp8_scaled.safetensors"
    merge_loras(d / "base_fp16.safetensors", [(d / "lora.safetensors", STRENGTH)], out, dtype="fp8_scaled")
    with safe_open(str(out), framework="pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("scaled_fp8").dtype == torch.float8_e4m3fn  # ComfyUI's model-level marker
        for module in wan_arch.lora_target_modules(cfg):
            q, scale = f.get_tensor(module + ".weight"), f.get_tensor(module + ".scale_weight")
            ref = reference[module + ".weight"]
            assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32 and scale.dim() == 0
            assert float(scale) == pytest.approx(float(ref.abs().max()) / FP8_MAX, rel=1e-6)
            err = (q.float() * scale - ref).abs()
            assert torch.all(err <= ref.abs() * 2**-4 + float(scale) * 2**-9), module
    scales = {k[: -len(".weight")] + s for k in reference if wan_arch.is_linear_weight(k) for s in (".scale_weight", ".scale_input")}
    assert keys - {"scaled_fp8"} - scales == set(reference)


def test_fp8_base_matches_musubis_own_fp8_merge(musubi_files, tmp_path):
    """musubi merges into an fp8 base in ``utils/lora_utils.load_safetensors_with_lora_and_fp8``
    (via fp16, then back to fp8); ours goes through fp32. One fp8 ulp apart at most."""
    from musubi_tuner.utils.lora_utils import load_safetensors_with_lora_and_fp8

    d, _ = musubi_files
    theirs = load_safetensors_with_lora_and_fp8(str(d / "base_fp8.safetensors"), [load_file(str(d / "lora.safetensors"))],
                                                [STRENGTH], False, torch.device("cpu"))
    out = tmp_path / "merged_fp8.safetensors"
    merge_loras(d / "base_fp8.safetensors", [(d / "lora.safetensors", STRENGTH)], out)
    ours = load_file(str(out))
    assert set(ours) == set(theirs)
    changed = 0
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype, key
        assert max_ulps(ours[key], value) <= 1, key
        changed += value.dtype == torch.float8_e4m3fn and not torch.equal(ours[key].float(), load_file(str(d / "base_fp8.safetensors"))[key].float())
    assert changed > 0


def test_prefixed_base_gets_the_same_merge(musubi_files, tmp_path):
    """musubi's ``load_wan_model`` silently skips LoRAs on ``model.diffusion_model.`` bases; we do not."""
    d, _ = musubi_files
    plain, prefixed = tmp_path / "plain.safetensors", tmp_path / "prefixed.safetensors"
    merge_loras(d / "base_fp16.safetensors", [(d / "lora.safetensors", STRENGTH)], plain)
    report = merge_loras(d / "base_prefixed.safetensors", [(d / "lora.safetensors", STRENGTH)], prefixed)
    assert report.merged > 0
    a, b = load_file(str(plain)), load_file(str(prefixed))
    assert set(b) == {wan_arch.COMFY_PREFIX + k for k in a}
    assert all(torch.equal(a[k], b[wan_arch.COMFY_PREFIX + k]) for k in a)


def test_round_trip_musubi_comfy_musubi_is_exact(musubi_files, tmp_path):
    d, _ = musubi_files
    src = d / "lora.safetensors"
    comfy = convert_lora(src, tmp_path / "comfy.safetensors", to="comfy")
    back = convert_lora(comfy.out, tmp_path / "back.safetensors", to="musubi")
    orig, again = load_file(str(src)), load_file(back.out)
    assert set(orig) == set(again)
    assert all(orig[k].dtype == again[k].dtype and torch.equal(orig[k], again[k]) for k in orig)
    with safe_open(str(src), framework="pt") as f1, safe_open(back.out, framework="pt") as f2:
        assert f1.metadata() == f2.metadata()


def test_musubi_convert_lora_reads_our_comfy_file_back_to_the_original(musubi_files, tmp_path):
    """musubi's own ``convert_lora.convert_from_diffusers`` (its "default" target) turns our
    ComfyUI-layout file into exactly the LoRA musubi saved."""
    from musubi_tuner.convert_lora import convert_from_diffusers

    d, _ = musubi_files
    comfy = convert_lora(d / "lora.safetensors", tmp_path / "comfy.safetensors", to="comfy")
    theirs = convert_from_diffusers("lora_unet_", load_file(comfy.out))
    orig = load_file(str(d / "lora.safetensors"))
    assert set(theirs) == set(orig)
    assert all(torch.equal(theirs[k], orig[k]) for k in orig)


def test_musubi_convert_lora_other_target_merges_like_ours(musubi_files, tmp_path):
    """musubi's ``convert_to_diffusers`` ("other", alpha folded by sqrt) gives our ComfyUI key names
    without alpha; merged, it must give the same weights up to bf16 rounding of the folded factors."""
    from musubi_tuner.convert_lora import convert_to_diffusers

    d, cfg = musubi_files
    theirs = convert_to_diffusers("lora_unet_", None, load_file(str(d / "lora.safetensors")))
    save_file(theirs, str(tmp_path / "theirs_other.safetensors"))
    ours = convert_lora(d / "lora.safetensors", tmp_path / "ours_comfy.safetensors", to="comfy")
    assert set(theirs) == {k for k in load_file(ours.out) if not k.endswith(".alpha")}
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    merge_loras(d / "base_fp16.safetensors", [(tmp_path / "theirs_other.safetensors", 1.0)], a, dtype="fp32")
    merge_loras(d / "base_fp16.safetensors", [(ours.out, 1.0)], b, dtype="fp32")
    base, ma, mb = load_file(str(d / "base_fp16.safetensors")), load_file(str(a)), load_file(str(b))
    for module in wan_arch.lora_target_modules(cfg):
        key = module + ".weight"
        da, db = ma[key] - base[key].float(), mb[key] - base[key].float()
        assert torch.linalg.norm(da - db) <= 2**-7 * torch.linalg.norm(db), key  # two bf16 roundings of sqrt-scaled factors
