"""ComfyUI's load-time stochastic rounding, reimplemented: properties checked against numbers we construct.

(Bit-identity with ComfyUI 0.3.64 itself was checked outside the suite, which has no ComfyUI:
see README section 3.)
"""

from __future__ import annotations

import torch

from circle_rotate.tools.merge.fp8_rounding import comfy_loadtime_lora, comfy_seed, stochastic_round_fp8

FP8 = torch.float8_e4m3fn


def test_seed_is_the_crc32_of_the_name():
    assert comfy_seed("123456789") == 0xCBF43926  # the CRC-32 check value


def test_rounds_to_a_neighbour_with_the_probability_of_its_distance():
    # 1.3 lies between the e4m3 values 1.25 and 1.375: rounds up with probability 0.4
    x = torch.full((512, 512), 1.3)
    got = stochastic_round_fp8(x, seed=1).float()
    assert set(got.unique().tolist()) == {1.25, 1.375}
    up = float((got == 1.375).float().mean())
    assert abs(up - 0.4) < 0.01  # 262144 draws: 5 standard deviations is 0.005
    assert abs(float(got.mean()) - 1.3) < 0.002  # unbiased (to fp16's rounding of 1.3)
    assert torch.equal(stochastic_round_fp8(x, seed=1).view(torch.uint8), got.to(FP8).view(torch.uint8))  # seeded


def test_exact_values_zero_subnormals_and_saturation():
    x = torch.tensor([[0.0, -0.0, 1.0, -2.5, 448.0, 1000.0, -1000.0, 2.0**-9, 3 * 2.0**-9]])
    got = stochastic_round_fp8(x, seed=0).float()
    assert got.tolist() == [[0.0, 0.0, 1.0, -2.5, 448.0, 448.0, -448.0, 2.0**-9, 3 * 2.0**-9]]


def test_loadtime_lora_keeps_the_stored_scale_and_is_noisier_than_nearest():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(256, 256, generator=gen) / 16
    scale = w.abs().max() / 448
    q = (w / scale).to(FP8)
    delta = (torch.randn(256, 8, generator=gen) * 0.01) @ (torch.randn(8, 256, generator=gen) / 16)
    truth = q.float() * scale + delta
    sr = comfy_loadtime_lora(q, scale, delta, name="diffusion_model.blocks.0.ffn.0.weight").float() * scale
    rtn = (truth / scale).clamp(-448, 448).to(FP8).float() * scale
    e_sr, e_rtn = float((sr - truth).pow(2).mean().sqrt()), float((rtn - truth).pow(2).mean().sqrt())
    assert 1.2 < e_sr / e_rtn < 1.8  # theory: sqrt(2) for fractions spread evenly
