"""Sharded experts (the official Wan2.2 release's layout) read as one model: found as musubi-tuner finds
them, checked as a set, merged into one file, inspected and preflighted, on shards huggingface_hub wrote."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from circle_rotate.cli.main import main
from circle_rotate.kernel.errors import InputOverwriteError, NotARegularFileError, UserError
from circle_rotate.kernel.shards import ShardedHeader, read_checkpoint
from circle_rotate.kernel.wan_arch import tiny_config
from circle_rotate.selfcheck.synthetic.lora import write_random_lora
from circle_rotate.selfcheck.synthetic.tiny_wan import write_release_shards, write_tiny_wan

DTYPE_KEY = "blocks.0.cross_attn.k.weight"  # musubi's detect_wan_sd_dtype reads it from the file --dit names


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A tiny high-noise expert as one file and as the official release's shards (read-only)."""
    d = tmp_path_factory.mktemp("release")
    single = write_tiny_wan(d / "single.safetensors", dtype="bf16", seed=1)
    first = write_release_shards(single, d / "Wan2.2-I2V-A14B" / "high_noise_model", shards=4)
    lora = write_random_lora(d / "circle_rotate_h.safetensors", tiny_config(), rank=4, alpha=1.0, seed=3)
    return {"single": single, "first": first, "folder": first.parent, "lora": lora,
            "shards": sorted(first.parent.glob("diffusion_pytorch_model-*.safetensors")),
            "index": first.parent / "diffusion_pytorch_model.safetensors.index.json"}


def copy_release(release, tmp_path) -> Path:
    folder = tmp_path / "high_noise_model"
    shutil.copytree(release["folder"], folder)
    return folder


def digest(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def test_any_shard_the_index_or_the_folder_is_the_whole_model(release):
    whole = load_file(str(release["single"]))
    for named in (release["first"], release["shards"][-1], release["index"], release["folder"]):
        header = read_checkpoint(named)
        assert isinstance(header, ShardedHeader) and header.paths == tuple(release["shards"]), named
        assert set(header.keys()) == set(whole) and header.index == release["index"]
        assert sorted(header.storage_order) == sorted(whole)
        for key, t in whole.items():
            info = header.tensors[key]
            assert (info.shape, info.torch_dtype) == (tuple(t.shape), t.dtype), key
            assert key in load_file(str(header.header_of(key).path)), key
    assert read_checkpoint(release["single"]).shards[0].path == release["single"]


def test_shards_found_as_musubi_finds_them(musubi, release):
    from musubi_tuner.utils.safetensors_utils import get_split_weight_filenames, load_split_weights

    for named in (release["first"], release["shards"][1]):
        assert [Path(p) for p in get_split_weight_filenames(str(named))] == list(read_checkpoint(named).paths)
    # musubi's own loader gets exactly the tensors our header says, from the files it says
    loaded = load_split_weights(str(release["first"]))
    header = read_checkpoint(release["first"])
    assert set(loaded) == set(header.keys())
    assert all(tuple(loaded[k].shape) == header.tensors[k].shape for k in loaded)


def test_an_incomplete_or_mixed_set_is_refused_naming_the_file(release, tmp_path):
    folder = copy_release(release, tmp_path)
    shards = sorted(folder.glob("diffusion_pytorch_model-*.safetensors"))
    n = len(shards)

    shards[1].unlink()  # an interrupted download
    with pytest.raises(UserError, match=f"shard 2 of {n} is missing: {shards[1].name}") as err:
        read_checkpoint(shards[0])
    assert "; fix: " in str(err.value)
    with pytest.raises(UserError, match=f"1 of the {n} shards it lists not found, e.g. {shards[1].name}"):
        read_checkpoint(folder)

    shutil.copy(release["shards"][1], shards[1])
    extra = load_file(str(shards[2]))
    save_file({**extra, "blocks.0.extra.weight": torch.zeros(2)}, str(shards[2]))  # a shard of another release
    with pytest.raises(UserError, match="'blocks.0.extra.weight' of .* is not in the index"):
        read_checkpoint(shards[0])
    save_file({**extra, **load_file(str(shards[0]))}, str(shards[2]))  # two shards hold the same tensor
    with pytest.raises(UserError, match="is in two shards"):
        read_checkpoint(shards[0])
    save_file({k: v for k, v in list(extra.items())[1:]}, str(shards[2]))  # a tensor the index lists, in no shard
    with pytest.raises(UserError, match="in no shard"):
        read_checkpoint(shards[0])

    index = json.loads(release["index"].read_text())
    moved = DTYPE_KEY  # listed in a shard that holds other tensors too, so every shard stays listed
    elsewhere = next(s.name for s in shards if s.name != index["weight_map"][moved])
    index["weight_map"][moved] = elsewhere
    (folder / release["index"].name).write_text(json.dumps(index))
    shutil.copy(release["shards"][2], shards[2])
    with pytest.raises(UserError, match=f"the index puts '{moved}' in {elsewhere}"):
        read_checkpoint(folder)

    (folder / release["index"].name).unlink()
    with pytest.raises(NotARegularFileError, match=f"it holds {n} .safetensors files and no index"):
        read_checkpoint(folder)
    # the release's top folder: the experts are one level down, and the error names their folders
    (tmp_path / "low_noise_model").mkdir()
    shutil.copy(release["index"], tmp_path / "low_noise_model")
    (tmp_path / "google").mkdir()  # the text encoder's tokenizer: no model file
    with pytest.raises(NotARegularFileError, match="name one of the model folders it holds: high_noise_model/, "
                                                   "low_noise_model/$"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize("dtype", ["same", "fp16", "fp8_scaled"])
def test_merge_into_shards_writes_one_file_equal_to_merging_the_single_file(release, tmp_path, dtype):
    before = digest(release["shards"])
    out_sharded, out_single = tmp_path / "sharded.safetensors", tmp_path / "single.safetensors"
    assert main(["merge", str(release["first"]), "--lora", str(release["lora"]), "-o", str(out_sharded),
                 "--dtype", dtype]) == 0
    assert main(["merge", str(release["single"]), "--lora", str(release["lora"]), "-o", str(out_single),
                 "--dtype", dtype]) == 0
    got, want = load_file(str(out_sharded)), load_file(str(out_single))
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
    assert read_checkpoint(out_sharded).metadata["circle_rotate.expert"] == "high"  # told by high_noise_model/
    assert digest(release["shards"]) == before  # the user's shards are never touched


def test_merge_never_writes_over_a_shard(release, tmp_path):
    from circle_rotate.tools.merge.run import merge_loras

    folder = copy_release(release, tmp_path)
    last = sorted(folder.glob("diffusion_pytorch_model-*.safetensors"))[-1]
    before = last.read_bytes()
    with pytest.raises(InputOverwriteError):
        merge_loras(folder, [(release["lora"], 1.0)], last, force=True)
    assert last.read_bytes() == before


def test_inspect_reports_the_whole_sharded_model(release, capsys):
    assert main(["inspect", str(release["shards"][-1])]) == 0
    out = capsys.readouterr().out
    assert "model, wan2.2-a14b, i2v" in out and "high (filename)" in out and "bf16" in out
    assert f"in {len(release['shards'])} shards" in out and f"{tiny_config().num_layers} blocks" in out
    assert main(["inspect", str(release["folder"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shards"] == len(release["shards"])


def errors(f) -> list:
    return [p for p in f.problems if p.severity == "error"]


def test_preflight_takes_the_shard_musubi_reads_the_dtype_from(musubi, release):
    from musubi_tuner.wan.modules.model import detect_wan_sd_dtype

    from circle_rotate.musubi.preflight import check_dit
    from circle_rotate.musubi.preflight_findings import Findings
    from circle_rotate.selfcheck.tiny_task import TINY_TASK

    ns = argparse.Namespace(task=TINY_TASK, fp8_base=True, fp8_scaled=False, mixed_precision="bf16")
    header = read_checkpoint(release["first"])
    holder = header.header_of(DTYPE_KEY).path
    other = next(p for p in release["shards"] if p != holder)
    for path in (holder, other):
        f = Findings()
        ident = check_dit(f, path, expert="high", flag="--dit", ns=ns)
        assert ident is not None and ident.num_layers == tiny_config().num_layers and ident.expert == "high"
        try:  # musubi's own dtype read on the same file: it works exactly where we raise nothing
            detect_wan_sd_dtype(str(path))
            musubi_ok = True
        except ValueError:
            musubi_ok = False
        assert musubi_ok == (path == holder) == (not errors(f)), [p.one_line() for p in f.problems]
    line = errors(f)[0].one_line()
    assert str(other) in line and f"give {holder}" in line and "\n" not in line
    # wan_generate_video.py's --dit_high_noise is loaded, never dtype-read: any shard of it will do
    f = Findings()
    check_dit(f, other, expert="high", flag="--dit-high", ns=ns, reads_dtype=False)
    assert not errors(f), [p.one_line() for p in f.problems]
    for named in (release["folder"], release["index"]):  # musubi opens --dit as one safetensors file
        f = Findings()
        check_dit(f, named, expert="high", flag="--dit", ns=ns)
        assert [p.message for p in errors(f) if "not a folder or an index" in p.message], named


def test_workflow_refuses_a_shard_comfyui_would_load_as_a_whole_model(release, tmp_path, capsys):
    assert main(["workflow", "--high", release["first"].name, "--low", "wan2.2_i2v_low_noise_14B_fp16.safetensors",
                 "--out", str(tmp_path / "w.json")]) == 2
    assert f"{release['first'].name} is one shard of a sharded model" in capsys.readouterr().err
    assert not (tmp_path / "w.json").exists()


def test_run_record_identifies_the_whole_set_a_shard_stands_for(release, tmp_path):
    from circle_rotate.musubi.run_record import file_identity

    folder = copy_release(release, tmp_path)
    shards = sorted(folder.glob("diffusion_pytorch_model-*.safetensors"))
    ident = file_identity(shards[0])
    assert ident["shards"] == len(shards) and ident["size"] == sum(p.stat().st_size for p in shards)
    last = load_file(str(shards[-1]))
    # same header (huggingface_hub's metadata too), other weights: the same identity, by design (headers only)
    save_file({k: v + 1 for k, v in last.items()}, str(shards[-1]), metadata={"format": "pt"})
    assert file_identity(shards[0])["header_sha256"] == ident["header_sha256"]
    save_file({**last, "extra.weight": torch.zeros(1)}, str(shards[-1]))  # another release's last shard
    assert file_identity(shards[0])["header_sha256"] != ident["header_sha256"]
    assert "shards" not in file_identity(release["single"])


def test_without_a_lora_merge_converts_the_release_into_one_file(tmp_path, capsys):
    # the official release is fp32; ComfyUI users want one fp16 or fp8_scaled file of it
    single = write_tiny_wan(tmp_path / "single.safetensors", dtype="fp32", rest_dtype="fp32", seed=2, expert="low")
    folder = write_release_shards(single, tmp_path / "Wan2.2-I2V-A14B" / "low_noise_model", shards=3).parent
    whole = load_file(str(single))
    outs = {d: tmp_path / f"low_{d}.safetensors" for d in ("same", "fp16", "fp8_scaled")}
    for dtype, out in outs.items():
        assert main(["merge", str(folder), "-o", str(out), "--dtype", dtype]) == 0, dtype
        assert "no LoRA" in capsys.readouterr().out
    joined, half = load_file(str(outs["same"])), load_file(str(outs["fp16"]))
    assert set(joined) == set(half) == set(whole)
    assert all(joined[k].equal(whole[k]) for k in whole)  # joined byte for byte
    assert all(half[k].dtype == torch.float16 and half[k].equal(whole[k].half()) for k in whole)  # rounded once
    scaled = load_file(str(outs["fp8_scaled"]))
    weights = [k for k in whole if scaled[k].dtype == torch.float8_e4m3fn]
    assert len(weights) >= 2 * tiny_config().num_layers
    for key in weights:
        scale, want = float(scaled[key[: -len(".weight")] + ".scale_weight"]), whole[key].double()
        assert scale == pytest.approx(float(want.abs().max()) / 448.0, rel=1e-6), key
        assert torch.all((scaled[key].double() * scale - want).abs() <= want.abs() * 2**-4 + scale * 2**-9), key
    # the same conversion from the one file gives the same tensors (the shards store them in another order)
    assert main(["merge", str(single), "-o", str(tmp_path / "from_single.safetensors"), "--dtype", "fp8_scaled"]) == 0
    from_single = load_file(str(tmp_path / "from_single.safetensors"))
    assert set(from_single) == set(scaled) and all(from_single[k].equal(scaled[k]) for k in scaled)


def test_no_lora_and_no_new_dtype_is_nothing_to_do(tmp_path, capsys):
    single = write_tiny_wan(tmp_path / "single.safetensors", seed=2)
    assert main(["merge", str(single), "-o", str(tmp_path / "copy.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "nothing to do" in err and "--dtype fp16" in err and not (tmp_path / "copy.safetensors").exists()
