"""How ``bench comfyui`` reads ComfyUI's fp8 detection and load-time LoRA, for ComfyUI 0.3.x and newer
(:mod:`circle_rotate.selfcheck.comfy_fp8`), without a ComfyUI checkout."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from circle_rotate.selfcheck.comfy_fp8 import fp8_detection, linear_formats, loadtime_fit
from circle_rotate.tools.merge.fp8_rounding import comfy_loadtime_lora, stochastic_round_fp8

LINEARS = {"blocks.0.self_attn.q": "float8_e4m3fn", "head.head": "float8_e4m3fn"}


def test_detection_of_comfyui_0_3_config():
    """0.3.x: ``scaled_fp8`` from the file's marker; its Linears carry no format."""
    config = SimpleNamespace(scaled_fp8=torch.float8_e4m3fn, unet_config={"in_dim": 36})
    assert fp8_detection(config, dict.fromkeys(LINEARS)) == (True, "scaled fp8 torch.float8_e4m3fn")
    assert not fp8_detection(SimpleNamespace(scaled_fp8=None), dict.fromkeys(LINEARS))[0]


def test_detection_of_newer_comfyui_config():
    """Newer: ``convert_old_quants`` consumed the marker, ``scaled_fp8`` is None and ``quant_config`` is set."""
    config = SimpleNamespace(scaled_fp8=None, quant_config={"mixed_ops": True})
    ok, words = fp8_detection(config, LINEARS)
    assert ok and words == "quant_config {'mixed_ops': True}, 2/2 Linears float8_e4m3fn"
    between = SimpleNamespace(layer_quant_config={"head.head": {"format": "float8_e4m3fn"}})  # releases in between
    assert fp8_detection(between, LINEARS)[0]


@pytest.mark.parametrize("formats, words", [
    ({"blocks.0.self_attn.q": "float8_e4m3fn", "head.head": None}, "1/2 Linears float8_e4m3fn (also None)"),
    ({"blocks.0.self_attn.q": "float8_e5m2", "head.head": "float8_e4m3fn"}, "1/2 Linears float8_e4m3fn (also float8_e5m2)"),
    ({}, "0/0 Linears float8_e4m3fn"),
])
def test_newer_config_fails_unless_every_linear_is_e4m3fn(formats, words):
    ok, got = fp8_detection(SimpleNamespace(scaled_fp8=None, quant_config={"mixed_ops": True}), formats)
    assert not ok and got.endswith(words)


def test_no_quant_config_is_not_detected():
    assert fp8_detection(SimpleNamespace(scaled_fp8=None, quant_config=None), LINEARS) == (
        False, "scaled fp8 None, no quant_config")


def test_linear_formats_reads_each_linear_by_class_name():
    class Linear(torch.nn.Module):  # ComfyUI's mixed-precision Linear is no torch.nn.Linear
        quant_format = "float8_e4m3fn"

    model = torch.nn.Module()
    model.q, model.plain, model.conv = Linear(), torch.nn.Linear(2, 2), torch.nn.Conv1d(1, 1, 1)
    assert linear_formats(model) == {"q": "float8_e4m3fn", "plain": None}


def _layer(seed: int):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(64, 96, generator=gen) * 0.02
    scale = w.abs().amax() / 448
    q = (w / scale).to(torch.float8_e4m3fn)
    delta = 0.002 * torch.randn(64, 4, generator=gen) @ torch.randn(4, 96, generator=gen)
    return q, scale, q.float() * scale, delta


def test_fit_passes_0_3_rounding_and_newer_recalculated_scale():
    """0.3.x rounds stochastically with the stored scale; newer recalculates it first: both fit."""
    old, new = [], []
    for i in range(4):
        q, scale, base, delta = _layer(i)
        old.append((comfy_loadtime_lora(q, scale, delta, name=f"l{i}").float() * scale, base, delta, scale))
        target = base + delta
        fresh = target.abs().amax() / 448
        new.append((stochastic_round_fp8(target / fresh, seed=i).float() * fresh, base, delta, scale))
    for layers in (old, new):
        fit = loadtime_fit(layers)
        assert fit.ok and fit.layers == 4 and fit.worst_step <= 1.0 and abs(fit.strength - 1) < 0.02, fit


@pytest.mark.parametrize("strength", [0.0, 2.0])
def test_fit_fails_a_lora_not_applied_or_doubled(strength):
    layers = []
    for i in range(4):
        q, scale, base, delta = _layer(i)
        theirs = stochastic_round_fp8((base + strength * delta) / scale, seed=i).float() * scale
        layers.append((theirs, base, delta, scale))
    fit = loadtime_fit(layers)
    assert not fit.ok and abs(fit.strength - strength) < 0.1


def test_fit_fails_an_element_off_by_more_than_one_step():
    q, scale, base, delta = _layer(0)
    theirs = base + delta
    theirs[0, 0] += 0.5 * (theirs[0, 0].abs() + scale)
    fit = loadtime_fit([(theirs, base, delta, scale)])
    assert not fit.ok and fit.worst_step > 1.05 and abs(fit.strength - 1) < 0.01
