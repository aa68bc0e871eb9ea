"""Cache planning, sharding, disk estimate and status, against musubi-tuner's own dataset and cache code."""

from __future__ import annotations

import json
import os
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from circle_rotate.dataset.items import frames_after_fps
from circle_rotate.kernel.errors import UserError
from circle_rotate.musubi.cache_plan import frame_windows, latent_cache_bytes, plan_cache


def clip(directory: Path, name: str, *, width=32, height=32, frames=9, fps=16.0, caption="a box, orbit right",
         seed=0) -> Path:
    from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, write_turntable

    directory.mkdir(parents=True, exist_ok=True)
    files = write_turntable(TurntableSpec(name=name, width=width, height=height, frames=frames, fps=fps, seed=seed),
                            directory)
    if caption is not None:
        (directory / f"{name}.txt").write_text(caption, encoding="utf-8")
    return files.video


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """A directory of clips (two sizes and lengths, one too short for 9 frames) and a JSONL of 30 fps clips."""
    root = tmp_path_factory.mktemp("sources")
    a = root / "a"
    clip(a, "wide", width=64, height=48, frames=13)
    clip(a, "tall", width=48, height=64, frames=9, seed=1)
    clip(a, "short", frames=5, seed=2)  # shorter than 9: only the 5-frame window
    b = root / "b"
    lines = [{"video_path": str(clip(b, f"fast{i}", frames=23, fps=30.0, caption=None, seed=i)), "caption": f"c{i}"}
             for i in range(2)]
    (root / "b.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


def mixed_config(root: Path, sources: Path) -> Path:
    """Two datasets: the directory (head, two lengths) and the JSONL (chunk, 30 fps resampled), caches under root."""
    config = root / "mixed.toml"
    config.write_text(
        f'[general]\nresolution = [48, 48]\ncaption_extension = ".txt"\nbatch_size = 1\nenable_bucket = true\n\n'
        f'[[datasets]]\nvideo_directory = "{(sources / "a").as_posix()}"\ncache_directory = "{(root / "ca").as_posix()}"\n'
        f'target_frames = [5, 9]\nframe_extraction = "head"\n\n'
        f'[[datasets]]\nvideo_jsonl_file = "{(sources / "b.jsonl").as_posix()}"\n'
        f'cache_directory = "{(root / "cb").as_posix()}"\ntarget_frames = [5]\nframe_extraction = "chunk"\n'
        f'source_fps = 30.0\n', encoding="utf-8")
    return config


@pytest.fixture
def mixed(tmp_path, sources) -> Path:
    return mixed_config(tmp_path, sources)


def _musubi_items(config: Path):
    """What musubi's own dataset classes produce for the config: latent paths with sizes, text paths."""
    import argparse

    from musubi_tuner.dataset import config_utils

    blueprint = config_utils.BlueprintGenerator(config_utils.ConfigSanitizer()).generate(
        config_utils.load_user_config(str(config)), argparse.Namespace(debug_dataset=False), architecture="wan")
    latents, texts = {}, set()
    for ds in config_utils.generate_dataset_group_by_blueprint(blueprint.dataset_group).datasets:
        for _, batch in ds.retrieve_latent_cache_batches(1):
            for item in batch:
                latents[item.latent_cache_path] = (item.content.shape[2], item.content.shape[1], item.content.shape[0])
        for batch in ds.retrieve_text_encoder_output_cache_batches(1):
            texts |= {item.text_encoder_output_cache_path for item in batch}
    return latents, texts


def test_plan_names_and_shapes_match_musubis_dataset_code(musubi, mixed):
    plan = plan_cache(mixed)
    theirs_latents, theirs_texts = _musubi_items(mixed)
    ours = {str(f): (item.bucket[0], item.bucket[1], n)
            for item in plan.items for f, (_, n) in zip(item.latent_files, item.windows)}
    assert ours == theirs_latents
    assert {str(i.te_file) for i in plan.items} == theirs_texts
    assert len(plan.items) == 5 and sum(len(i.latent_files) for i in plan.items) == 2 + 2 + 1 + 2 * 2


def test_a_frame_folder_counts_the_frames_musubi_reads(musubi, tmp_path):
    """A Mac copying frames to a USB drive leaves a hidden ``._name`` beside each (AppleDouble);
    musubi's loader passes over hidden files, so the plan must too, or it names caches musubi never writes."""
    import cv2

    frames = tmp_path / "orbit_frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for t in range(9):
        cv2.imwrite(str(frames / f"frame_{t:04d}.png"), rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
        (frames / f"._frame_{t:04d}.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (frames / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "f.jsonl").write_text(json.dumps({"video_path": str(frames), "caption": "a box, orbit right"}) + "\n")
    config = tmp_path / "frames.toml"
    config.write_text(f'[general]\nresolution = [32, 32]\nbatch_size = 1\n\n[[datasets]]\n'
                      f'video_jsonl_file = "{(tmp_path / "f.jsonl").as_posix()}"\n'
                      f'cache_directory = "{(tmp_path / "c").as_posix()}"\ntarget_frames = [5]\nframe_extraction = "chunk"\n')
    plan = plan_cache(config)
    theirs, _ = _musubi_items(config)
    ours = {str(f): (item.bucket[0], item.bucket[1], n)
            for item in plan.items for f, (_, n) in zip(item.latent_files, item.windows)}
    # 9 frames: one 5-frame chunk (18 files, hidden ones counted, would make two)
    assert ours == theirs and len(ours) == 1


def test_a_caption_musubi_cannot_read_stops_the_plan_naming_the_file(musubi, tmp_path):
    video = clip(tmp_path, "orbit", frames=9, fps=16.0)
    video.with_suffix(".txt").write_bytes("caf\xe9 orbit".encode("latin-1"))
    config = tmp_path / "c.toml"
    config.write_text(f'[general]\nresolution = [32, 32]\ncaption_extension = ".txt"\n\n[[datasets]]\n'
                      f'video_directory = "{video.parent.as_posix()}"\ncache_directory = "{(tmp_path / "c").as_posix()}"\n'
                      'target_frames = [9]\n')
    with pytest.raises(UserError, match="musubi cannot read this caption: not UTF-8") as caught:
        plan_cache(config)
    assert str(caught.value.path) == str(video.with_suffix(".txt")) and "save it as UTF-8" in caught.value.fix


def test_frames_after_fps_is_musubis_frame_dropping(musubi, tmp_path):
    from musubi_tuner.dataset.media_utils import load_video

    video = clip(tmp_path, "c30", frames=31, fps=30.0)
    for end in (None, 9):
        got = load_video(str(video), 0, end, source_fps=30.0, target_fps=16.0)
        assert len(got) == frames_after_fps(31, source_fps=30.0, target_fps=16.0, end_frame=end)
    assert frames_after_fps(81, source_fps=None, target_fps=16.0, end_frame=9) == 9


def test_frame_windows_follow_the_documented_extraction_modes():
    assert frame_windows(20, extraction="head", target_frames=(5, 9, 25)) == [(0, 5), (0, 9)]
    assert frame_windows(20, extraction="chunk", target_frames=(9,)) == [(0, 9), (9, 9)]
    assert frame_windows(12, extraction="slide", target_frames=(9,), stride=2) == [(0, 9), (2, 9)]
    assert frame_windows(21, extraction="uniform", target_frames=(9,), sample=3) == [(0, 9), (6, 9), (12, 9)]
    assert frame_windows(10, extraction="uniform", target_frames=(9,), sample=3) == [(0, 9), (1, 9)]  # 0, 0, 1
    assert frame_windows(20, extraction="full", target_frames=(), max_frames=129) == [(0, 17)]


def test_latent_size_estimate_bounds_musubis_file(musubi, tmp_path, mixed, write_musubi_caches):
    plan = plan_cache(mixed)
    write_musubi_caches(plan)
    for item in plan.items:
        real = sum(f.stat().st_size for f in item.latent_files)
        assert real <= item.latent_bytes <= real + 1024 * len(item.latent_files)
        assert item.te_file.stat().st_size <= item.te_bytes
    assert latent_cache_bytes(832, 480, 81) > 9e6  # 36 channels x 21 x 60 x 104 in bf16


def test_caches_cannot_depend_on_the_expert(musubi):
    from circle_rotate.musubi.args import parse_musubi_args

    for script, args in (("wan_cache_latents", ["--dataset_config", "x.toml"]),
                         ("wan_cache_text_encoder_outputs", ["--dataset_config", "x.toml", "--t5", "t5.pth"])):
        with pytest.raises(UserError, match="unrecognized arguments: --dit"):
            parse_musubi_args(script, [*args, "--dit", "expert.safetensors"])


def test_split_items_is_disjoint_and_balanced(musubi, mixed):
    from circle_rotate.musubi.cache import split_items

    items = plan_cache(mixed).items
    parts = split_items(items, 2)
    assert sorted(i.video for p in parts for i in p) == sorted(i.video for i in items)
    loads = [sum(i.cost for i in p) for p in parts]
    assert max(loads) - min(loads) <= max(i.cost for i in items)


def test_shard_configs_load_in_musubi_disjoint_with_one_cache_dir(musubi, mixed):
    from circle_rotate.kernel.atomic import write_text
    from circle_rotate.musubi.cache import CacheRequest, prepare_cache

    env = (("VAE", "vae.safetensors"), ("T5", "t5.pth"))
    job = prepare_cache(CacheRequest(mixed, gpus=("0", "1"), env=env))
    assert [s.gpu for s in job.shards] == ["0", "1"]
    seen = []
    for shard, (label, chain) in zip(job.shards, job.commands):
        for path, text in shard.files:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, text)
        assert [c.env_dict["CUDA_VISIBLE_DEVICES"] for c in chain] == [shard.gpu, shard.gpu]
        assert all(c.args[c.args.index("--dataset_config") + 1] == str(shard.config) for c in chain)
        latents, _ = _musubi_items(shard.config)
        seen.append(set(latents))
    everything, _ = _musubi_items(mixed)
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(everything)


def test_refuses_when_the_disk_is_short(musubi, mixed, monkeypatch):
    import circle_rotate.kernel.disk_space as disk_space
    import circle_rotate.musubi.cache as cache

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(UserError, match="GB is free"):
        cache.prepare_cache(cache.CacheRequest(mixed))


def test_status_lists_cached_missing_stale_and_strays(musubi, tmp_path, sources, write_musubi_caches):
    from circle_rotate.musubi.cache_status import check_cache

    shutil.copytree(sources, tmp_path / "src")  # this test edits a caption
    (tmp_path / "src" / "b.jsonl").write_text((sources / "b.jsonl").read_text().replace(str(sources), str(tmp_path / "src")))
    mixed = mixed_config(tmp_path, tmp_path / "src")
    plan = plan_cache(mixed)
    write_musubi_caches(plan)
    status = check_cache(plan)
    assert status.count("cached") == 5 and status.used_bytes == sum(
        f.stat().st_size for d in ("ca", "cb") for f in (mixed.parent / d).iterdir())
    by_name = {i.video.stem: i for i in plan.items}
    by_name["tall"].te_file.unlink()
    (tmp_path / "src" / "a" / "short.txt").write_text("a new caption")
    write_musubi_caches(plan_cache(mixed), i2v=False, skip={"tall.mp4", "short.mp4", "fast0.mp4", "fast1.mp4"})
    (mixed.parent / "ca" / "gone_00000-005_0032x0032_wan.safetensors").write_bytes(b"")
    status = check_cache(plan_cache(mixed))
    states = {s.item.video.stem: (s.state, s.reasons) for s in status.items}
    assert states["tall"][0] == "missing"
    assert states["short"] == ("stale", ("short_wan_te.safetensors holds an older caption",))
    assert states["wide"][0] == "stale" and "without --i2v" in states["wide"][1][0]
    assert [p.name for p in status.strays] == ["gone_00000-005_0032x0032_wan.safetensors"]


def test_stale_caches_need_refresh_which_deletes_them(musubi, mixed, write_musubi_caches, monkeypatch):
    import circle_rotate.musubi.cache as cache

    plan = plan_cache(mixed)
    write_musubi_caches(plan, i2v=False)
    with pytest.raises(UserError, match="--refresh-stale"):
        cache.prepare_cache(cache.CacheRequest(mixed))
    job = cache.prepare_cache(cache.CacheRequest(mixed, refresh_stale=True))
    ran = []
    monkeypatch.setattr(cache, "run_chains", lambda chains, env=None: ran.append(chains) or [])
    cache.run_cache(job)
    assert ran and not any(f.exists() for i in plan.items for f in i.latent_files)


def test_uncaptioned_clips_are_refused(musubi, tmp_path):
    clip(tmp_path / "v", "mute", caption=None)
    config = tmp_path / "c.toml"
    config.write_text(f'[general]\nresolution = [32, 32]\ncaption_extension = ".txt"\n\n[[datasets]]\n'
                      f'video_directory = "{(tmp_path / "v").as_posix()}"\ntarget_frames = [5]\n')
    from circle_rotate.musubi.cache import CacheRequest, prepare_cache

    with pytest.raises(UserError, match="no caption"):
        prepare_cache(CacheRequest(config))


def test_cli_dry_run_and_status(musubi, mixed, tmp_path):
    import subprocess
    import sys

    base = [sys.executable, "-m", "circle_rotate", "cache"]
    models = {"VAE": tmp_path / "v.safetensors", "T5": tmp_path / "t5.pth"}
    proc = subprocess.run([*base, "--dataset-config", str(mixed), "--gpus", "0,1", "--dry-run"], capture_output=True,
                          text=True, env={**os.environ, **{k: str(v) for k, v in models.items()}})
    assert proc.returncode == 2 and f"VAE {models['VAE']}: not found" in proc.stderr  # a dry run checks the models too
    for path in models.values():
        path.write_bytes(b"\0")
    proc = subprocess.run([*base, "--dataset-config", str(mixed), "--gpus", "0,1", "--dry-run"], capture_output=True,
                          text=True, env={**os.environ, **{k: str(v) for k, v in models.items()}})
    assert proc.returncode == 0, proc.stderr
    assert "5 clips" in proc.stdout and proc.stdout.count("wan_cache_latents.py") == 2
    assert "CUDA_VISIBLE_DEVICES=1" in proc.stdout and "--i2v" in proc.stdout
    status = subprocess.run([*base, "status", "--dataset-config", str(mixed), "--json"], capture_output=True, text=True)
    assert status.returncode == 0 and json.loads(status.stdout)["missing"] == 5


@pytest.mark.parametrize("argv, says", [(["--nodes", "0"], "--nodes: '0' is not a whole number of at least 1"),
                                        (["--node-rank", "-1"], "--node-rank: '-1' is not a whole number"),
                                        (["--set", "TE_BATCH_SIZE=0"], "TE_BATCH_SIZE=0: text-encoder batch size"),
                                        (["--set", "BOGUS=1"], "--set BOGUS: cache.sh read no such variable"),
                                        (["--gpus", "0,0"], "names GPU 0 twice")])
def test_cache_refuses_settings_no_pass_can_use(argv, says, capsys):
    from circle_rotate.cli.main import main

    try:
        code = main(["cache", *argv, "--dry-run"])
    except SystemExit as exit_:  # argparse's own usage error
        code = exit_.code
    assert code == 2 and says in capsys.readouterr().err


def test_a_cache_pass_for_clips_all_shorter_than_target_frames_is_refused(musubi, mixed, tmp_path, capsys, monkeypatch):
    from circle_rotate.cli.main import main

    for name in ("VAE", "T5"):
        (tmp_path / name).write_bytes(b"\0")
        monkeypatch.setenv(name, str(tmp_path / name))
    long = mixed.with_name("long.toml")
    text = mixed.read_text().replace("target_frames = [5, 9]", "target_frames = [81]")
    long.write_text(text.split("[[datasets]]\nvideo_jsonl_file")[0])  # the directory dataset alone
    assert main(["cache", "--dataset-config", str(long), "--dry-run"]) == 2
    assert "are shorter than [81] frames" in capsys.readouterr().err
