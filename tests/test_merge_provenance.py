"""A merged expert's record of its LoRAs, and the mistakes it catches: the wrong expert, a LoRA twice."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors import safe_open

from circle_rotate.cli.main import main
from circle_rotate.kernel.wan_arch import tiny_config
from circle_rotate.selfcheck.synthetic.lora import write_random_lora

HIGH, LOW = "wan2.2_i2v_high_noise_14B_fp16.safetensors", "wan2.2_i2v_low_noise_14B_fp16.safetensors"


def _record(path):
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["circle_rotate.merged_loras"])


def test_a_lora_named_or_marked_for_the_other_expert_is_refused(tiny_wan_dir, tiny_loras, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    assert main(["merge", str(tiny_wan_dir / LOW), "--lora", str(tiny_loras["high"]), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'circle_rotate_h.safetensors' is a high-noise LoRA (by its filename)" in err
    assert f"{LOW} the low-noise expert (by its filename)" in err and "--ignore-expert-evidence" in err
    assert not out.exists()

    marked = write_random_lora(tmp_path / "mine.safetensors", tiny_config(), rank=4, alpha=1.0, seed=9,
                               metadata={"circle_rotate.expert": "low"})
    assert main(["merge", str(tiny_wan_dir / HIGH), "--lora", str(marked), "-o", str(out)]) == 2
    assert "is a low-noise LoRA (by its metadata)" in capsys.readouterr().err

    assert main(["-q", "merge", str(tiny_wan_dir / LOW), "--lora", str(tiny_loras["high"]), "-o", str(out),
                 "--ignore-expert-evidence"]) == 0
    plain = tmp_path / "plain.safetensors"  # nothing says which expert: no objection
    shutil.copy(tiny_loras["low"], plain)
    assert main(["-q", "merge", str(tiny_wan_dir / HIGH), "--lora", str(plain), "-o", str(tmp_path / "y.safetensors")]) == 0


def test_a_lora_already_merged_is_refused_and_the_record_is_a_history(tiny_wan_dir, tiny_loras, tmp_path, capsys):
    once, twice = tmp_path / "high_once.safetensors", tmp_path / "high_twice.safetensors"
    assert main(["-q", "merge", str(tiny_wan_dir / HIGH), "--lora", f"{tiny_loras['high']}:0.8", "-o", str(once),
                 "--dtype", "fp8_scaled"]) == 0
    assert main(["merge", str(once), "--lora", str(tiny_loras["high"]), "-o", str(twice)]) == 2
    err = capsys.readouterr().err
    assert "'circle_rotate_h.safetensors' is already merged into high_once.safetensors (its metadata lists it at " \
           "strength 0.8); merging it again would double it" in err and not twice.exists()

    other = write_random_lora(tmp_path / "detail_high_noise.safetensors", tiny_config(), rank=2, alpha=1.0, seed=11)
    assert main(["-q", "merge", str(once), "--lora", f"{other}:0.5", "-o", str(twice)]) == 0
    size = tiny_loras["high"].stat().st_size
    assert _record(twice) == [
        {"file": "circle_rotate_h.safetensors", "bytes": size, "strength": 0.8, "dtype": "fp8_scaled"},
        {"file": "detail_high_noise.safetensors", "bytes": other.stat().st_size, "strength": 0.5, "dtype": "same"}]

    renamed = tmp_path / "circle_rotate_h.safetensors"  # same name, another LoRA (another size): not the same one
    write_random_lora(renamed, tiny_config(), rank=8, alpha=1.0, seed=12)
    assert renamed.stat().st_size != size
    assert main(["-q", "merge", str(once), "--lora", str(renamed), "-o", str(tmp_path / "z.safetensors")]) == 0


@pytest.mark.parametrize("strength", ["1", "-1"])
def test_merge_pair_still_merges_the_right_pair(tiny_wan_dir, tiny_loras, tmp_path, strength):
    assert main(["-q", "merge-pair", "--high", str(tiny_wan_dir / HIGH), str(tiny_loras["high"]),
                 "--low", str(tiny_wan_dir / LOW), str(tiny_loras["low"]), "-o", str(tmp_path / "pair"),
                 "--strength-high", strength]) == 0
    assert len(list((tmp_path / "pair").glob("*.safetensors"))) == 2
