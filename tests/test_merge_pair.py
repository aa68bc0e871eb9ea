"""merge-pair: the right LoRA into the right expert, refused before any work when it is not."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from circle_rotate.cli.main import main
from circle_rotate.kernel import wan_arch
from circle_rotate.kernel.errors import UserError
from circle_rotate.selfcheck.synthetic.lora import write_random_lora
from circle_rotate.selfcheck.synthetic.tiny_wan import write_release_shards, write_tiny_wan
from circle_rotate.tools.merge.pair import merge_pair
from circle_rotate.tools.merge.run import merge_loras

CFG = wan_arch.tiny_config()


@pytest.fixture()
def pair(tiny_wan_dir, tiny_loras):
    high, low = (tiny_wan_dir / f"wan2.2_i2v_{e}_noise_14B_fp16.safetensors" for e in ("high", "low"))
    return high, tiny_loras["high"], low, tiny_loras["low"]


def test_pair_merges_each_lora_into_its_expert(tmp_path, pair):
    high, lh, low, ll = pair
    out = tmp_path / "merged"
    report = merge_pair((high, lh), (low, ll), out, dtype="fp8_scaled", strengths=(1.0, 0.5))
    assert report.evidence == {"high base": "high (filename)", "high LoRA": "high (filename)",
                               "low base": "low (filename)", "low LoRA": "low (filename)"}
    assert sorted(os.listdir(out)) == ["wan2.2_i2v_high_noise_circle_rotate_h_fp8_scaled.safetensors",
                                       "wan2.2_i2v_low_noise_circle_rotate_l_fp8_scaled.safetensors"]
    for expert, base, lora, strength, merged in (("high", high, lh, 1.0, report.high), ("low", low, ll, 0.5, report.low)):
        single = tmp_path / f"single_{expert}.safetensors"
        merge_loras(base, [(lora, strength)], single, dtype="fp8_scaled")
        a, b = load_file(merged.out), load_file(str(single))
        assert set(a) == set(b)
        assert all(a[k].reshape(-1).view(torch.uint8).equal(b[k].reshape(-1).view(torch.uint8)) for k in a)
        with safe_open(merged.out, framework="pt") as f:
            assert f.metadata()["circle_rotate.expert"] == expert


def test_swapped_pair_is_refused_naming_files_and_evidence(tmp_path, pair):
    high, lh, low, ll = pair
    with pytest.raises(UserError) as err:
        merge_pair((low, lh), (high, ll), tmp_path / "out")
    msg = str(err.value)
    assert "--high base 'wan2.2_i2v_low_noise_14B_fp16.safetensors' is the low-noise one (by filename)" in msg
    assert "--low base 'wan2.2_i2v_high_noise_14B_fp16.safetensors' is the high-noise one (by filename)" in msg
    with pytest.raises(UserError, match="--high LoRA 'circle_rotate_l.safetensors' is the low-noise one"):
        merge_pair((high, ll), (low, lh), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    report = merge_pair((high, ll), (low, lh), tmp_path / "out", ignore_expert_evidence=True)
    assert report.evidence["high LoRA"] == "high (overriding low by filename)"


def test_unnamed_experts_need_metadata_or_assume_experts(tmp_path, pair):
    _, lh, _, ll = pair
    a = write_tiny_wan(tmp_path / "expert_a.safetensors", seed=1)
    b = write_tiny_wan(tmp_path / "expert_b.safetensors", seed=2, expert="low")  # metadata tells
    with pytest.raises(UserError, match="cannot tell which expert --high base 'expert_a.safetensors'.*--assume-experts"):
        merge_pair((a, lh), (b, ll), tmp_path / "out")
    report = merge_pair((a, lh), (b, ll), tmp_path / "out", assume_experts=True)
    assert report.evidence["high base"] == "high (assumed from the command line)"
    assert report.evidence["low base"] == "low (metadata)"


def test_merge_pair_cli(tmp_path, pair, capsys):
    high, lh, low, ll = pair
    out = tmp_path / "merged"
    args = ["merge-pair", "--high", str(high), str(lh), "--low", str(low), str(ll), "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "high base: high (filename)" in text and "wan2.2_i2v_low_noise_circle_rotate_l_fp16.safetensors" in text
    assert main(args) == 2  # outputs exist
    assert "--force" in capsys.readouterr().err
    assert main(["--quiet"] + args + ["--force"]) == 0


def test_readme_section_3_commands_run_as_written(tmp_path, monkeypatch, capsys):
    """Every ``circle-rotate`` command of README section 3, on tiny files with the real names."""
    import re
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## 3. Use the LoRAs in ComfyUI", 1)[1].split("\n## ", 1)[0]
    commands = [c.replace("\\\n", " ") for block in re.findall(r"```bash\n(.*?)```", section, re.S)
                for c in re.split(r"\n(?=circle-rotate )", block.strip())]
    assert len(commands) >= 5
    monkeypatch.chdir(tmp_path)
    for expert, seed in (("high", 1), ("low", 2)):
        write_tiny_wan(tmp_path / f"wan2.2_i2v_{expert}_noise_14B_fp16.safetensors", seed=seed)
        write_random_lora(tmp_path / f"circle_rotate_{expert[0]}.safetensors", CFG, rank=4, seed=seed + 2)
    write_release_shards(tmp_path / "wan2.2_i2v_high_noise_14B_fp16.safetensors",
                         tmp_path / "Wan2.2-I2V-A14B" / "high_noise_model")  # the official release's layout
    write_random_lora(tmp_path / "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors", CFG, fmt="comfy",
                      diffs=True, rank=4, alpha=4.0, seed=5)  # the 4-step LoRA: pairs and whole-tensor differences
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "circle-rotate"
        assert main(argv[1:]) == 0, command
    capsys.readouterr()
    assert sorted(os.listdir(tmp_path / "merged")) == ["circle_rotate_workflow.json", "circle_rotate_workflow_api.json",
                                                       "wan2.2_i2v_high_noise_circle_rotate_h_fp8_scaled.safetensors",
                                                       "wan2.2_i2v_low_noise_circle_rotate_l_fp8_scaled.safetensors"]


def test_a_disk_that_takes_one_merged_expert_but_not_two_is_refused_before_either(tmp_path, pair, monkeypatch):
    import shutil
    from collections import namedtuple

    from circle_rotate.kernel import disk_space

    high, lh, low, ll = pair
    one = os.path.getsize(high)  # about one merged expert (same dtype)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda p: usage(10 * one, 9 * one, int(1.5 * one)))
    with pytest.raises(UserError, match="the two merged experts need .* GB free") as err:
        merge_pair((high, lh), (low, ll), tmp_path / "out")
    assert "fp8_scaled" in err.value.fix
    assert not list(tmp_path.rglob("*.safetensors"))
    monkeypatch.setattr(disk_space.shutil, "disk_usage", shutil.disk_usage)


def test_ctrl_c_during_the_low_noise_merge_keeps_neither_expert(tmp_path, pair, monkeypatch):
    """The pair is the output: the finished high-noise file goes too, so the rerun needs no --force."""
    from circle_rotate.tools.merge import pair as pair_module

    high, lh, low, ll = pair
    real, done = pair_module.run_merge, []

    def interrupted_second(prepared, **kw):
        if done:
            raise KeyboardInterrupt
        done.append(real(prepared, **kw))
        return done[-1]

    monkeypatch.setattr(pair_module, "run_merge", interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        merge_pair((high, lh), (low, ll), tmp_path / "out")
    assert len(done) == 1 and not os.path.exists(done[0].out)  # the high-noise expert was written, and is gone
    assert not list(tmp_path.rglob("*.safetensors")) and not list(tmp_path.rglob(".*part*"))
    monkeypatch.setattr(pair_module, "run_merge", real)
    report = merge_pair((high, lh), (low, ll), tmp_path / "out")
    assert os.path.exists(report.high.out) and os.path.exists(report.low.out)


def test_a_wrong_extension_or_strength_names_the_right_option(tmp_path, pair, capsys):
    high, lh, low, ll = pair
    assert main(["merge", str(high), "--lora", str(lh), "-o", str(tmp_path / "high.ckpt")]) == 2
    assert "written as .safetensors but named .ckpt; fix: name it high.safetensors" in capsys.readouterr().err
    assert main(["merge-pair", "--high", str(high), str(lh), "--low", str(low), str(ll), "-o", str(tmp_path / "p"),
                 "--strength-high", "1e30", "--dtype", "fp16"]) == 2
    assert "--strength-high" in capsys.readouterr().err and not (tmp_path / "p").exists()


def test_dry_run_checks_both_merges_says_what_each_would_be_and_writes_nothing(tmp_path, pair, capsys, monkeypatch):
    """As ``merge --dry-run``: the same checks (experts, outputs, free disk for both), the plan of each
    merged expert with its size, both together against the free space; no file, no folder."""
    import json
    import shutil
    from collections import namedtuple

    from circle_rotate.kernel import disk_space

    high, lh, low, ll = pair
    out = tmp_path / "merged"
    args = ["merge-pair", "--high", str(high), str(lh), "--low", str(low), str(ll), "--out", str(out),
            "--dtype", "fp8_scaled", "--workflow", "--dry-run"]
    assert main(args + ["--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert not out.exists()
    names = {e: f"wan2.2_i2v_{e}_noise_circle_rotate_{e[0]}_fp8_scaled.safetensors" for e in ("high", "low")}
    for expert in ("high", "low"):
        assert plan[expert]["out"] == str(out / names[expert]) and plan[expert]["expert"] == expert
        assert plan[expert]["merged"] > 0 and plan[expert]["dtypes"]["fp8_e4m3fn"] > 0
    assert plan["bytes"] == plan["high"]["bytes"] + plan["low"]["bytes"]
    assert plan["disk"] == str(tmp_path) and plan["free_bytes"] > 0  # measured where the folder will be made
    assert plan["evidence"]["low LoRA"] == "low (filename)" and plan["workflow"] == str(out / "circle_rotate_workflow.json")

    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.count("would write ") == 3 and "GiB free at" in text and text.rstrip().endswith("_api.json")
    assert "both: " in text and "nothing written" in text and not out.exists()

    # the checks are the merge's own: a swapped pair and a disk that takes one expert but not two are refused
    assert main(["merge-pair", "--high", str(low), str(lh), "--low", str(high), str(ll), "--out", str(out),
                 "--dry-run"]) == 2
    assert "is the low-noise one" in capsys.readouterr().err
    one, real = plan["high"]["bytes"], shutil.disk_usage
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda p: usage(10 * one, 9 * one, int(1.5 * one)))
    assert main(args) == 2 and "the two merged experts need" in capsys.readouterr().err
    monkeypatch.setattr(disk_space.shutil, "disk_usage", real)
    assert not out.exists()

    # the sizes are what the merge then writes (plus each file's header)
    report = merge_pair((high, lh), (low, ll), out, dtype="fp8_scaled")
    for expert, merged in (("high", report.high), ("low", report.low)):
        size = os.path.getsize(merged.out)
        assert merged.out == plan[expert]["out"] and 0 <= size - plan[expert]["bytes"] < 64 * 1024


def test_workflow_from_sharded_experts_loads_the_merged_files(tmp_path, pair, capsys):
    """merge-pair takes a shard of the official release and writes one whole file per expert, so its
    --workflow is checked (and written) with the names it writes, not the shard names it reads."""
    import json

    high, lh, low, ll = pair
    shards = {e: write_release_shards(base, tmp_path / "Wan2.2-I2V-A14B" / f"{e}_noise_model")
              for e, base in (("high", high), ("low", low))}
    out = tmp_path / "merged"
    args = ["merge-pair", "--high", str(shards["high"]), str(lh), "--low", str(shards["low"]), str(ll), "-o", str(out),
            "--dtype", "fp16", "--workflow"]
    assert main(args + ["--dry-run"]) == 0 and not out.exists()
    assert "would write the ComfyUI workflow" in capsys.readouterr().out
    assert main(["-q"] + args) == 0
    api = json.loads((out / "circle_rotate_workflow_api.json").read_text())
    names = sorted(n["inputs"]["unet_name"] for n in api.values() if n["class_type"] == "UNETLoader")
    assert names == sorted(os.listdir(out))[2:] == ["wan2.2_i2v_high_noise_circle_rotate_h_fp16.safetensors",
                                                    "wan2.2_i2v_low_noise_circle_rotate_l_fp16.safetensors"]


def test_videox_fun_named_experts_are_fun_inp_for_the_workflow_too(tmp_path, pair, capsys):
    """Wan2.2-Fun-A14B-InP (VideoX-Fun's name) merges into fun_inpaint files; --end-image is theirs to take."""
    import json
    import shutil

    high, lh, low, ll = pair
    fun = {e: shutil.copy(base, tmp_path / f"Wan2.2-Fun-A14B-InP_{e}_noise.safetensors")
           for e, base in (("high", high), ("low", low))}
    out = tmp_path / "merged"
    assert main(["-q", "merge-pair", "--high", str(fun["high"]), str(lh), "--low", str(fun["low"]), str(ll), "-o", str(out),
                 "--dtype", "fp16", "--workflow", "--end-image", "end.png"]) == 0, capsys.readouterr().err
    api = json.loads((out / "circle_rotate_workflow_api.json").read_text())
    (cond,) = [n for n in api.values() if n["class_type"].startswith("Wan")]
    assert cond["class_type"] == "WanFunInpaintToVideo" and "end_image" in cond["inputs"]
    assert sorted(os.listdir(out))[2:] == ["wan2.2_fun_inpaint_high_noise_circle_rotate_h_fp16.safetensors",
                                           "wan2.2_fun_inpaint_low_noise_circle_rotate_l_fp16.safetensors"]
