"""The streaming merge's chunked path, inf/NaN refusal, and --dry-run.

Every real 14B tensor (5120 x 13824 fp16 is 141 MB) is merged in row chunks of ``JOB_ELEMS``
elements, each computed in ``SCRATCH_ELEMS`` passes; the tiny test models' tensors are smaller
than one chunk, so here both sizes are lowered until every weight spans several jobs and passes
(with ragged ends) and the result is compared with an independent whole-tensor merge.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from circle_rotate.cli.main import main
from circle_rotate.kernel import wan_arch
from circle_rotate.kernel.errors import UserError
from circle_rotate.selfcheck.synthetic.lora import write_random_lora
from circle_rotate.selfcheck.synthetic.tiny_wan import write_tiny_wan
from circle_rotate.tools.merge import run as merge
from circle_rotate.tools.merge import chunks as merge_chunks
from circle_rotate.tools.merge.fp8 import FP8_MAX
from circle_rotate.tools.merge.run import merge_loras

CFG = wan_arch.tiny_config()  # ffn.0 is 172 x 64: 11008 elements


@pytest.fixture()
def small_chunks(monkeypatch):
    monkeypatch.setattr(merge, "JOB_ELEMS", 1000)  # 15 rows of 64: 12 jobs, the last one ragged
    monkeypatch.setattr(merge_chunks, "SCRATCH_ELEMS", 300)  # 4 rows: 4 passes per job


def whole_tensor_merge(base, lora, strength):
    """W + strength * alpha / rank * up @ down per tensor, from whole tensors (fp64), nothing shared with merge."""
    sd, lw = load_file(str(base)), load_file(str(lora))
    out = {}
    for module in wan_arch.lora_target_modules(CFG):
        stem = wan_arch.musubi_lora_name(module)
        down, up = lw[stem + ".lora_down.weight"].double(), lw[stem + ".lora_up.weight"].double()
        w = sd[module + ".weight"].double()
        if module + ".scale_weight" in sd:
            w = w * float(sd[module + ".scale_weight"])
        out[module + ".weight"] = w + strength * float(lw[stem + ".alpha"]) / down.shape[0] * (up @ down)
    return out


@pytest.mark.parametrize("dtype,base_dtype", [("fp16", "fp16"), ("fp8_scaled", "fp16"), ("same", "fp8_scaled")])
def test_tensors_larger_than_a_chunk_match_a_whole_tensor_merge(tmp_path, small_chunks, dtype, base_dtype):
    base = write_tiny_wan(tmp_path / "base.safetensors", dtype=base_dtype, seed=1)
    lora = write_random_lora(tmp_path / "lora.safetensors", CFG, rank=4, seed=2, up_std=0.05, dtype=torch.float32)
    out = tmp_path / "out.safetensors"
    merge_loras(base, [(lora, 0.7)], out, dtype=dtype)
    got, want = load_file(str(out)), whole_tensor_merge(base, lora, 0.7)
    assert want["blocks.0.ffn.0.weight"].numel() > 10 * merge.JOB_ELEMS
    for key, w in want.items():
        if got[key].dtype == torch.float16:
            ulp = torch.finfo(torch.float16).eps * w.abs().clamp(min=2**-14)
            assert torch.all((got[key].double() - w).abs() <= ulp), key  # one fp16 rounding, whichever chunk
        else:
            scale = got[key[:-7] + ".scale_weight"]
            assert float(scale) == pytest.approx(float(w.abs().max()) / FP8_MAX, rel=1e-6), key  # max over all chunks
            assert torch.all((got[key].double() * float(scale) - w).abs() <= w.abs() * 2**-4 + float(scale) * 2**-9), key


@pytest.mark.parametrize("poison", ["overflow", "nan"])
def test_non_finite_output_is_refused_naming_the_key(tmp_path, small_chunks, poison, capsys):
    base = write_tiny_wan(tmp_path / "base.safetensors", dtype="fp16", seed=1)
    lora_path = write_random_lora(tmp_path / "lora.safetensors", CFG, rank=4, seed=2, dtype=torch.float32)
    sd = load_file(str(lora_path))
    stem = wan_arch.musubi_lora_name("blocks.1.ffn.2")
    sd[stem + ".lora_up.weight"][50 if poison == "nan" else 3, 0] = float("nan") if poison == "nan" else 1e9
    save_file(sd, str(lora_path))
    out = tmp_path / "out.safetensors"
    # a NaN in the LoRA itself is refused when the LoRA is read (naming its tensor), before any
    # output exists; an overflow only shows in the merged output, which the writer checks
    named, pattern = ((stem + ".lora_up.weight", r"holds NaN or inf") if poison == "nan" else
                      ("blocks.1.ffn.2.weight", r"'blocks\.1\.ffn\.2\.weight' would hold inf/NaN"))
    with pytest.raises(UserError, match=pattern):
        merge_loras(base, [(lora_path, 1.0)], out)
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    assert main(["merge", str(base), "--lora", str(lora_path), "--out", str(out)]) == 2
    assert named in capsys.readouterr().err and not out.exists()


def test_dry_run_says_what_would_be_written_and_writes_nothing(tmp_path, capsys):
    base = write_tiny_wan(tmp_path / "base.safetensors", dtype="fp16", seed=1)
    lora = write_random_lora(tmp_path / "lora.safetensors", CFG, rank=4, seed=2,
                             modules=[m for m in wan_arch.lora_target_modules(CFG) if m.startswith("blocks.1.")])
    out = tmp_path / "out.safetensors"
    args = ["merge", str(base), "--lora", str(lora), "--out", str(out), "--dtype", "fp8_scaled", "--dry-run"]
    assert main(args + ["--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "lora.safetensors"]
    assert summary["merged"] == 10 and summary["blocks"] == "1"
    assert "ffn.2" in summary["modules"] and summary["dtypes"]["fp8_e4m3fn"] == 26 + 1  # every Linear, the marker
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "would write" in text and "nothing written" in text and not out.exists()
    merge_loras(base, [(lora, 1.0)], out, dtype="fp8_scaled")
    assert out.stat().st_size >= summary["bytes"] and out.stat().st_size - summary["bytes"] < 64 * 1024  # + header


def test_a_conversion_that_overflows_fp16_is_refused_naming_the_tensor(tmp_path, capsys):
    # no LoRA at all: the official fp32 weights themselves can exceed fp16's 65504
    base = write_tiny_wan(tmp_path / "base.safetensors", dtype="fp32", rest_dtype="fp32", seed=1, expert="high")
    sd = load_file(str(base))
    sd["blocks.0.norm3.bias"][5] = 1e6
    save_file(sd, str(base))
    out = tmp_path / "out.safetensors"
    assert main(["merge", str(base), "--out", str(out), "--dtype", "fp16"]) == 2
    err = capsys.readouterr().err
    assert "'blocks.0.norm3.bias' would hold inf/NaN" in err and "--dtype bf16/fp32" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors"]
    assert main(["merge", str(base), "--out", str(out), "--dtype", "bf16"]) == 0  # bf16's range holds it
    assert load_file(str(out))["blocks.0.norm3.bias"][5].equal(torch.tensor(1e6).bfloat16())
