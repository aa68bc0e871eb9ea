"""A merged expert's record of its LoRAs, and the mistakes it catches: the wrong expert, a LoRA twice."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors import safe_open

from circle_rotate.cli.main import main
from circle_rotate.kernel.wan_arch import tiny_config
from circle_rotate.selfcheck.synthetic.lora import write_random_lora
from circle_rotate.tools.merge.delta_sketch import FIELD, PROBES

HIGH, LOW = "wan2.2_i2v_high_noise_14B_fp16.safetensors", "wan2.2_i2v_low_noise_14B_fp16.safetensors"


def _record(path, *, sketches=False):
    """The merged-LoRA record; without ``sketches``, each entry's delta sketch checked for shape and left out."""
    with safe_open(str(path), framework="pt") as f:
        record = json.loads(f.metadata()["circle_rotate.merged_loras"])
    if not sketches:
        for entry in record:
            assert len(entry.pop(FIELD)) == PROBES
    return record


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
    assert "'circle_rotate_h.safetensors' is already merged into " in err and not twice.exists()
    assert "(its metadata lists it at strength 0.8); merging it again at strength 1 would apply it twice" in err
    assert "to take it out of this one, merge it at strength -0.8" in err

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


@pytest.mark.parametrize("fmt, alpha, strength", [("comfy", 1.0, "1"), ("comfy", 1.0, "0.3"), ("diffusers", 1.0, "0.5"),
                                                  ("diffusers", 3.0, "1")])
def test_a_converted_copy_of_a_merged_lora_is_refused(tiny_wan_dir, tmp_path, capsys, fmt, alpha, strength):
    """`convert --format comfy` (what ComfyUI users make) gives a LoRA another name and size, the diffusers layout
    folds alpha into the factors (in bf16 rounding when alpha/rank is no power of two): the same delta, found by
    its sketch. At another strength of the same sign it is the same LoRA again too (the sketch leaves the
    strength out): the remedy is the original expert at the strength wanted."""
    lora = write_random_lora(tmp_path / "circle_rotate_h.safetensors", tiny_config(), rank=4, alpha=alpha, seed=3)
    once, twice = tmp_path / "high_once.safetensors", tmp_path / "high_twice.safetensors"
    assert main(["-q", "merge", str(tiny_wan_dir / HIGH), "--lora", f"{lora}:0.8", "-o", str(once)]) == 0
    copy = tmp_path / f"circle_rotate_h_{fmt}.safetensors"
    assert main(["-q", "convert", str(lora), "-o", str(copy), "--format", fmt]) == 0
    assert copy.stat().st_size != lora.stat().st_size
    capsys.readouterr()
    assert main(["merge", str(once), "--lora", f"{copy}:{strength}", "-o", str(twice)]) == 2
    err = capsys.readouterr().err
    assert f"'{copy.name}' holds the same delta as 'circle_rotate_h.safetensors', which is already merged into " in err
    assert f"(its metadata lists it at strength 0.8); merging it again at strength {strength} would apply it twice" in err
    assert "rename the LoRA file" not in err and not twice.exists()


def test_one_lora_given_twice_in_one_merge_is_refused(tiny_wan_dir, tmp_path, capsys):
    """Failed before: the guard held each LoRA against the base's record only, so the same file (or its converted
    copy) given twice in one command was merged twice; the same LoRA and its undo in one command still merge."""
    lora = write_random_lora(tmp_path / "circle_rotate_h.safetensors", tiny_config(), rank=4, alpha=1.0, seed=3)
    copy = tmp_path / "circle_rotate_h_comfy.safetensors"
    assert main(["-q", "convert", str(lora), "-o", str(copy), "--format", "comfy"]) == 0
    base, out = str(tiny_wan_dir / HIGH), tmp_path / "out.safetensors"
    for second in (lora, copy):
        capsys.readouterr()
        assert main(["merge", base, "--lora", str(lora), "--lora", str(second), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"'{second.name}' is given twice in this merge (the same delta as 'circle_rotate_h.safetensors')" in err
        assert "fix: give it once, with --lora FILE:2" in err and not out.exists()
    assert main(["-q", "merge", base, "--lora", str(lora), "--lora", f"{copy}:-1", "-o", str(out)]) == 0


def test_another_lora_of_the_same_name_and_size_still_merges(tiny_wan_dir, tiny_loras, tmp_path):
    """A retrained LoRA keeps its name and, with the same settings, its size: the sketch tells it apart (the
    name-and-size rule refused it)."""
    once = tmp_path / "high_once.safetensors"
    assert main(["-q", "merge", str(tiny_wan_dir / HIGH), "--lora", str(tiny_loras["high"]), "-o", str(once)]) == 0
    retrained = tmp_path / "v2" / tiny_loras["high"].name
    retrained.parent.mkdir()
    write_random_lora(retrained, tiny_config(), rank=4, alpha=1.0, seed=99, metadata={"ss_network_dim": "4"})
    assert retrained.stat().st_size == tiny_loras["high"].stat().st_size
    twice = tmp_path / "high_twice.safetensors"
    assert main(["-q", "merge", str(once), "--lora", str(retrained), "-o", str(twice)]) == 0
    assert [e["file"] for e in _record(twice)] == [retrained.name] * 2


def test_a_record_without_a_sketch_is_matched_by_name_and_size(tiny_loras):
    """Experts merged before sketches: their records hold file name and size only, matched as before."""
    from circle_rotate.kernel.errors import UserError
    from circle_rotate.tools.lora.files import module_scales, read_lora_index
    from circle_rotate.tools.merge.delta_sketch import delta_sketch
    from circle_rotate.tools.merge.provenance import MERGED_LORAS_KEY, check_not_merged_again

    index = read_lora_index(tiny_loras["high"])
    sketch = delta_sketch(index, module_scales(index))
    old = {MERGED_LORAS_KEY: json.dumps([{"file": index.path.name, "bytes": index.header.file_size, "strength": 1.0}])}
    with pytest.raises(UserError, match="already merged into old.safetensors .*rename the LoRA file"):
        check_not_merged_again(old, [index], "old.safetensors", [sketch], strengths=[1.0])
    check_not_merged_again(old, [index], "old.safetensors", [sketch], strengths=[-1.0])  # undoes it
    other = {MERGED_LORAS_KEY: json.dumps([{"file": "another.safetensors", "bytes": index.header.file_size}])}
    check_not_merged_again(other, [index], "old.safetensors", [sketch], strengths=[1.0])


@pytest.mark.parametrize("strength", ["1", "-1"])
def test_merge_pair_still_merges_the_right_pair(tiny_wan_dir, tiny_loras, tmp_path, strength):
    assert main(["-q", "merge-pair", "--high", str(tiny_wan_dir / HIGH), str(tiny_loras["high"]),
                 "--low", str(tiny_wan_dir / LOW), str(tiny_loras["low"]), "-o", str(tmp_path / "pair"),
                 "--strength-high", strength]) == 0
    assert len(list((tmp_path / "pair").glob("*.safetensors"))) == 2


def test_a_negative_strength_undoes_a_merged_lora_and_the_record_keeps_both(tiny_wan_dir, tiny_loras, tmp_path,
                                                                            capsys, caplog):
    """The way out of an expert that holds a LoRA, with no unmerged copy at hand: the LoRA again at the opposite
    strength. It undoes rather than doubles, so it merges (before: refused as 'would double it'), and the record
    lists both entries; what they add up to decides the next merge: nothing (it may go in again), or the
    LoRA at the strength they sum to (the same sign is refused, naming the strength that takes it out)."""
    from safetensors.torch import load_file

    lora = tiny_loras["high"]
    base = tiny_wan_dir / "wan2.2_i2v_high_noise_14B_fp32.safetensors"
    once, undone, again = (tmp_path / f"high_{n}.safetensors" for n in ("once", "undone", "again"))
    assert main(["-q", "merge", str(base), "--lora", f"{lora}:0.8", "-o", str(once)]) == 0
    assert main(["-q", "merge", str(once), "--lora", f"{lora}:-0.8", "-o", str(undone)]) == 0
    assert [(e["file"], e["strength"]) for e in _record(undone)] == [(lora.name, 0.8), (lora.name, -0.8)]
    b, o, u = (load_file(str(p)) for p in (base, once, undone))
    changed = [k for k in b if not torch.equal(b[k], o[k])]
    assert changed and all(torch.allclose(u[k], b[k], atol=1e-6) for k in changed)  # back to the base

    assert main(["-q", "merge", str(undone), "--lora", str(lora), "-o", str(again)]) == 0  # held at 0: merges
    assert [e["strength"] for e in _record(again)] == [0.8, -0.8, 1.0]
    capsys.readouterr()
    assert main(["merge", str(again), "--lora", f"{lora}:0.5", "-o", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "(its metadata lists it at strengths 0.8, -0.8, 1); merging it again at strength 0.5 would apply it " \
           "twice" in err and "merge it at strength -1" in err

    # a copy with its alpha negated is the same LoRA at the opposite sign: at +0.8 it undoes, at -0.8 it adds
    negated = write_random_lora(tmp_path / "negated.safetensors", tiny_config(), rank=4, alpha=-1.0, seed=3)
    assert main(["merge", str(once), "--lora", f"{negated}:-0.8", "-o", str(tmp_path / "y.safetensors")]) == 2
    assert "holds the same delta as 'circle_rotate_h.safetensors'" in capsys.readouterr().err
    assert main(["-q", "merge", str(once), "--lora", f"{negated}:0.8", "-o", str(tmp_path / "z.safetensors")]) == 0

    with caplog.at_level(logging.WARNING):  # more than undone: merges, and says what the output holds
        assert main(["-q", "merge", str(once), "--lora", f"{lora}:-2", "-o", str(tmp_path / "w.safetensors")]) == 0
    assert "strength -2 more than undoes the 0.8" in caplog.text and "(the output holds it at -1.2)" in caplog.text
