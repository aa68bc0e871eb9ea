"""Diffusers' ``lora_adapter_metadata``: the alpha of a diffusers-layout LoRA that has no alpha tensors.

diffusers >= 0.34 saves the adapter's PEFT ``LoraConfig`` as JSON in the safetensors header
(``save_lora_weights``: keys prefixed ``transformer.``; ``save_lora_adapter``: unprefixed) and, when it is
there, builds the adapter from it: scale ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``), per module
from ``alpha_pattern``/``rank_pattern`` (a regex matching the module name's end, PEFT's
``get_pattern_key``), ``LoraConfig``'s 8 where a value is not given. :func:`diffusers_applies` re-states
that rule (checked against diffusers 0.35.1 with peft 0.22 loading these files into a tiny
``WanTransformer3DModel``) and, without the entry, ``get_peft_kwargs``' inference (r the most common rank,
lora_alpha the first module's rank). The files here are built as diffusers writes them, deltas known.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from circle_rotate.cli.main import main
from circle_rotate.kernel import wan_arch
from circle_rotate.selfcheck.synthetic.lora import write_random_lora
from circle_rotate.selfcheck.synthetic.tiny_wan import write_tiny_wan
from circle_rotate.tools.lora.combine import combine_loras
from circle_rotate.tools.lora.convert import convert_lora
from circle_rotate.tools.lora.files import module_scales, read_lora_index, resolved_modules
from circle_rotate.tools.lora.inspect import inspect_file
from circle_rotate.tools.lora.keys import lora_key
from circle_rotate.tools.lora.resize import resize_lora

CFG = wan_arch.tiny_config()
MODULES = wan_arch.lora_target_modules(CFG)
META = "lora_adapter_metadata"
# The config as a trainer would set it: r 8, lora_alpha 4 (scale 0.5); one module at rank 4 (anchored, as
# diffusers itself writes patterns), both FFN outputs at alpha 16 (an unanchored name), one at alpha 1.
CONFIG = {"r": 8, "lora_alpha": 4, "rank_pattern": {"^blocks.0.attn1.to_q": 4},
          "alpha_pattern": {"ffn.net.2": 16, "^blocks.1.attn2.to_k": 1}, "use_rslora": False, "use_dora": False,
          "lora_bias": False, "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2"],
          "lora_dropout": 0.0, "init_lora_weights": True}
# (rank, scale) diffusers gives each module under CONFIG, by hand
SPECIAL = {"blocks.0.self_attn.q": (4, 4 / 4), "blocks.0.ffn.2": (8, 16 / 8), "blocks.1.ffn.2": (8, 16 / 8),
           "blocks.1.cross_attn.k": (8, 1 / 8)}


def peft_name(module: str) -> str:
    return lora_key(module, "down", "diffusers")[len("transformer."):-len(".lora_A.weight")]


def write_diffusers_lora(path, config=CONFIG, *, prefixed=True, dtype=torch.float32, seed=0):
    """A diffusers-layout LoRA with its config in the header, as ``save_lora_weights`` (prefixed) or
    ``save_lora_adapter`` writes it; returns module -> the delta diffusers applies (float64)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = wan_arch.dit_shapes(CFG)
    tensors, truth = {}, {}
    for m in MODULES:
        rank, scale = SPECIAL.get(m, (8, 4 / 8)) if config is CONFIG else (config["r"], None)
        if scale is None:
            scale = config["lora_alpha"] / (math.sqrt(rank) if config.get("use_rslora") else rank)
        out_f, in_f = shapes[m + ".weight"]
        down = (torch.randn(rank, in_f, generator=gen) / in_f ** 0.5).to(dtype)
        up = (torch.randn(out_f, rank, generator=gen) * 0.05).to(dtype)
        tensors[lora_key(m, "down", "diffusers")], tensors[lora_key(m, "up", "diffusers")] = down, up
        truth[m] = scale * up.double() @ down.double()
    entries = {("transformer." if prefixed else "") + k: v for k, v in config.items()}
    save_file(tensors, str(path), metadata={"format": "pt", META: json.dumps(entries, indent=2, sort_keys=True)})
    return truth


def _pattern(patterns, name):
    return next((v for k, v in (patterns or {}).items() if re.match(rf"(.*\.)?({k})$", name)), None)


def diffusers_applies(path):
    """module -> the delta diffusers would apply loading ``path`` (a diffusers-layout file; see the docstring).
    Fails where diffusers would: a config r that is not the tensors' rank."""
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(META)
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    modules = {m: (tensors[lora_key(m, "up", "diffusers")], tensors[lora_key(m, "down", "diffusers")])
               for m in MODULES if lora_key(m, "down", "diffusers") in tensors}
    ranks = {m: down.shape[0] for m, (up, down) in modules.items()}
    if raw is not None:
        config = {k[len("transformer."):]: v for k, v in json.loads(raw).items() if k.startswith("transformer.")}
    else:  # get_peft_kwargs
        first = next(iter(ranks.values()))
        common = Counter(ranks.values()).most_common(1)[0][0]
        config = {"r": common, "lora_alpha": first, "rank_pattern": {f"^{peft_name(m)}": r for m, r in ranks.items()
                                                                     if r != common}}
    out = {}
    for m, (up, down) in modules.items():
        name = peft_name(m)
        r = _pattern(config.get("rank_pattern"), name) or config.get("r", 8)
        alpha = _pattern(config.get("alpha_pattern"), name) or config.get("lora_alpha", 8)
        assert r == ranks[m], f"{m}: diffusers builds rank {r}, the tensors hold {ranks[m]}: it cannot load the file"
        out[m] = alpha / (math.sqrt(r) if config.get("use_rslora") else r) * up.double() @ down.double()
    return out


def ours(path, *, strength=1.0):
    """module -> strength * alpha / rank * up @ down, as every command here reads the file (float64)."""
    index = read_lora_index(path)
    scales = module_scales(index)
    return {m: strength * scales[m] * mod.up.double() @ mod.down.double()
            for m, mod in resolved_modules(index, scales).items()}


def assert_same(got, want, rtol=1e-6):
    assert set(got) == set(want)
    for m in want:
        assert float(torch.linalg.norm(got[m] - want[m]) / torch.linalg.norm(want[m])) < rtol, m


@pytest.mark.parametrize("prefixed", [True, False], ids=["save_lora_weights", "save_lora_adapter"])
def test_every_command_applies_the_delta_diffusers_reads_from_the_metadata(tmp_path, prefixed, capsys):
    src = tmp_path / "peft.safetensors"
    truth = write_diffusers_lora(src, prefixed=prefixed)
    if prefixed:
        assert_same(diffusers_applies(src), truth, rtol=1e-12)  # (the oracle agrees with the file as built)
    assert_same(ours(src), truth)  # (before: scale 1 for all, 2x what diffusers applies to most modules)

    report = inspect_file(src)
    assert report.scales == {"0.5": 16, "1": 1, "2": 2, "0.125": 1} and report.alpha_from_metadata == 20
    assert report.metadata_mismatch == []
    assert main(["inspect", str(src)]) == 0
    assert "(20 from lora_adapter_metadata, as Diffusers reads it)" in capsys.readouterr().out

    base = write_tiny_wan(tmp_path / "base.safetensors", config=CFG, dtype="fp32", rest_dtype="fp32")
    merged = tmp_path / "merged.safetensors"
    assert main(["-q", "merge", str(base), "--lora", str(src), "-o", str(merged)]) == 0
    b, w = load_file(str(base)), load_file(str(merged))
    assert_same({m: w[m + ".weight"].double() - b[m + ".weight"].double() for m in MODULES}, truth, rtol=1e-5)

    both = combine_loras([(src, 0.5), (src, 0.25)], tmp_path / "both.safetensors")
    assert_same(ours(both.out), {m: 0.75 * d for m, d in truth.items()})


@pytest.mark.parametrize("to", ["comfy", "musubi", "diffusers"])
def test_convert_writes_the_metadata_alpha_and_leaves_no_config_that_contradicts_it(tmp_path, to):
    src = tmp_path / "peft.safetensors"
    truth = write_diffusers_lora(src)
    out = convert_lora(src, tmp_path / f"out_{to}.safetensors", to=to).out
    assert_same(ours(out), truth)
    with safe_open(out, framework="pt") as f:
        metadata, alphas = f.metadata() or {}, {k: float(f.get_tensor(k)) for k in f.keys() if k.endswith(".alpha")}
    if to == "diffusers":  # folded: the config diffusers reads now says scale 1 for every module
        assert_same(diffusers_applies(out), truth)
        config = json.loads(metadata[META])
        assert config["transformer.r"] == config["transformer.lora_alpha"] == 8 and \
            config["transformer.rank_pattern"] == config["transformer.alpha_pattern"] == {"^blocks.0.attn1.to_q": 4}
        assert config["transformer.target_modules"] == CONFIG["target_modules"]  # the rest kept
    else:  # ComfyUI and musubi-tuner read the alpha tensors; diffusers would apply a config on top of them
        assert META not in metadata
        assert alphas[lora_key("blocks.1.self_attn.q", "alpha", to)] == 4.0
        assert alphas[lora_key("blocks.0.ffn.2", "alpha", to)] == 16.0
        assert alphas[lora_key("blocks.0.self_attn.q", "alpha", to)] == 4.0  # rank 4, scale 1


def test_resize_writes_a_config_for_the_ranks_it_keeps(tmp_path):
    src = tmp_path / "peft.safetensors"
    write_diffusers_lora(src)
    out = resize_lora(src, tmp_path / "r2.safetensors", rank=2).out
    assert {i.rank for i in read_lora_index(out).modules.values()} == {2}
    # diffusers builds rank-2 layers at the scale resize kept (before: the config's r 8 was copied as it was, so
    # diffusers built rank-8 layers the tensors do not fit, and its lora_alpha 4 scaled the folded weights again)
    assert_same(diffusers_applies(out), ours(out))
    assert inspect_file(out).metadata_mismatch == []
    comfy = resize_lora(src, tmp_path / "r2c.safetensors", rank=2, to="comfy").out
    with safe_open(comfy, framework="pt") as f:
        assert META not in (f.metadata() or {})
    assert_same(ours(comfy), ours(out), rtol=1e-5)


def test_rslora_and_a_stale_or_broken_config(tmp_path, caplog):
    rs = tmp_path / "rslora.safetensors"
    truth = write_diffusers_lora(rs, {**CONFIG, "rank_pattern": {}, "alpha_pattern": {}, "use_rslora": True})  # 4 / sqrt(8)
    assert_same(ours(rs), truth)
    assert_same(diffusers_applies(convert_lora(rs, tmp_path / "rs_d.safetensors", to="diffusers").out), truth)

    stale = tmp_path / "stale.safetensors"  # what resize wrote before: rank-4 tensors under a config's r 8
    write_diffusers_lora(stale, {"r": 4, "lora_alpha": 4})
    tensors = load_file(str(stale))
    save_file(tensors, str(stale), metadata={META: json.dumps({"transformer.r": 8, "transformer.lora_alpha": 4})})
    assert inspect_file(stale).metadata_mismatch == [
        "lora_adapter_metadata says r 8 for 20 module(s), the tensors hold 4 (diffusers cannot load it)"]

    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata={META: "{not json"})
    with caplog.at_level(logging.WARNING):
        assert set(module_scales(read_lora_index(broken)).values()) == {1.0}  # as if absent: the layout's scale 1
    assert "is not a JSON object" in caplog.text


def test_a_mixed_rank_diffusers_output_carries_the_scale_of_each_module(tmp_path):
    """Without the config diffusers infers lora_alpha = the first module's rank for all (get_peft_kwargs), so a
    combined file of ranks 4 and 6 would load at 4/6 of some modules' delta; the config written says scale 1."""
    a = write_random_lora(tmp_path / "a.safetensors", CFG, rank=4, alpha=1.0, seed=1)
    b = write_random_lora(tmp_path / "b.safetensors", CFG, rank=2, alpha=2.0, seed=2, modules=MODULES[:7])
    out = combine_loras([(a, 0.7), (b, -1.5)], tmp_path / "ab.safetensors", to="diffusers").out
    assert {i.rank for i in read_lora_index(out).modules.values()} == {4, 6}
    assert_same(diffusers_applies(out), ours(out))


@pytest.mark.parametrize("config", [{"r": 8, "lora_alpha": 8},
                                    {"r": 8, "lora_alpha": 8, "rank_pattern": {"^blocks.0.attn1.to_q": 4},
                                     "alpha_pattern": {"^blocks.0.attn1.to_q": 2}}], ids=["uniform", "one_module_fits"])
def test_a_config_the_tensors_do_not_fit_is_stale_and_read_as_absent(tmp_path, capsys, caplog, config):
    """What resize --rank 4 wrote before it rewrote the config: rank-4 tensors, their scale folded in (1 for
    every module: the tools of then read every diffusers file at scale 1), under the input's config copied
    verbatim (r 8, lora_alpha 8). diffusers cannot load it (it builds rank-8 layers), so the config describes
    no loader: every command reads the file at its folded scale 1 (before: alpha 8 over rank 4, twice the
    delta, and the one module whose rank the config's pattern happened to give at 2 / 4), and inspect warns."""
    stale = tmp_path / "resized_r4.safetensors"
    truth = write_diffusers_lora(stale, {"r": 4, "lora_alpha": 4})  # scale 1
    save_file(load_file(str(stale)), str(stale),
              metadata={"format": "pt", META: json.dumps({f"transformer.{k}": v for k, v in config.items()})})
    with caplog.at_level(logging.WARNING):
        assert_same(ours(stale), truth)
    assert "says r 8 for" in caplog.text and "reading the LoRA without it" in caplog.text

    report = inspect_file(stale)
    assert report.scales == {"1": 20} and report.alpha_from_metadata == 0
    assert report.metadata_mismatch == [
        f"lora_adapter_metadata says r 8 for {20 if len(config) == 2 else 19} module(s), the tensors hold 4 "
        "(diffusers cannot load it)"]
    assert main(["inspect", str(stale)]) == 0
    assert "from lora_adapter_metadata" not in capsys.readouterr().out  # (before: "alpha 8 (... from it)")

    for to in ("musubi", "diffusers"):
        out = convert_lora(stale, tmp_path / f"fixed_{to}.safetensors", to=to).out
        assert_same(ours(out), truth)
        if to == "diffusers":  # the config written is one diffusers loads, at the same delta
            assert_same(diffusers_applies(out), truth)
    base = write_tiny_wan(tmp_path / "base.safetensors", config=CFG, dtype="fp32", rest_dtype="fp32")
    merged = tmp_path / "merged.safetensors"
    assert main(["-q", "merge", str(base), "--lora", str(stale), "-o", str(merged)]) == 0
    b, w = load_file(str(base)), load_file(str(merged))
    assert_same({m: w[m + ".weight"].double() - b[m + ".weight"].double() for m in MODULES}, truth, rtol=1e-5)
