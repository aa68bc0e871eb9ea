"""Sharded caching with musubi's real cache scripts: shards on several nodes add up to the single-process cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_preflight import write_clips, write_config

CAPTIONS = {"orbit_a": "a red box, the camera orbits right", "orbit_b": "a mug on a table",
            "orbit_c": "a small toy car seen from all around, the camera circles it"}


def _cache(config: Path, models, server, **request):
    from circle_rotate.musubi.cache import CacheRequest, env_from_paths, prepare_cache, run_cache
    from circle_rotate.selfcheck.smoke import _cache_transform

    job = prepare_cache(CacheRequest(config, env=env_from_paths(vae=models.vae, t5=models.t5, device="cpu"),
                                     **request), transform=_cache_transform(models.tokenizer_root, server))
    run_cache(job, scripts_in_parallel=True)
    return job


def _tensors(folder: Path):
    from safetensors.torch import load_file

    return {p.name: load_file(str(p)) for p in sorted(folder.glob("*.safetensors"))}


@pytest.fixture(scope="module")
def caches(musubi, tiny_musubi_models, tmp_path_factory):
    from circle_rotate.selfcheck.smoke import _script_server

    root = tmp_path_factory.mktemp("shards")
    clips = write_clips(root / "clips", names=tuple(CAPTIONS))
    for name, caption in CAPTIONS.items():  # different captions: different token counts in one T5 batch
        (clips / f"{name}.txt").write_text(caption, encoding="utf-8")
    single, sharded = root / "single", root / "sharded"
    for folder in (single, sharded):
        folder.mkdir()
    # both "nodes" are this machine, so its /tmp is storage they share: lift the node-local path check
    with pytest.MonkeyPatch.context() as mp, _script_server(lambda line: None) as server:
        mp.setattr("circle_rotate.musubi.accelerate_launch.NODE_LOCAL", ())
        _cache(write_config(single, clips), tiny_musubi_models, server, gpus=("",))
        config = write_config(sharded, clips)
        first = _cache(config, tiny_musubi_models, server, gpus=("",), nodes=2, node_rank=0)
        partial = sorted(p.name for p in (sharded / "cache").glob("*.safetensors"))
        second = _cache(config, tiny_musubi_models, server, gpus=("",), nodes=2, node_rank=1)
        stamps = {p.name: p.stat().st_mtime_ns for p in (sharded / "cache").glob("*.safetensors")}
        again = _cache(config, tiny_musubi_models, server, gpus=("",), nodes=2, node_rank=0)
    return {"single": single / "cache", "sharded": sharded / "cache", "jobs": (first, second, again),
            "partial": partial, "stamps": stamps}


def test_each_node_caches_only_its_own_disjoint_shard(caches):
    first, second, _ = caches["jobs"]
    mine = {i.video.name for s in first.shards for i in s.items}
    theirs = {i.video.name for s in second.shards for i in s.items}
    assert mine and theirs and not mine & theirs and len(mine | theirs) == len(CAPTIONS)
    assert [s.label for s in first.shards] == ["node0:gpu"] and [s.label for s in second.shards] == ["node1:gpu"]
    # after node 0 only its clips are cached (2 files each: latents, text)
    assert len(caches["partial"]) == 2 * len(mine)


def test_union_of_shards_equals_the_single_process_cache(caches):
    single, sharded = _tensors(caches["single"]), _tensors(caches["sharded"])
    assert sorted(single) == sorted(sharded) and len(single) == 2 * len(CAPTIONS)
    for name, tensors in single.items():
        assert tensors.keys() == sharded[name].keys(), name
        for key, value in tensors.items():
            assert value.dtype == sharded[name][key].dtype and value.shape == sharded[name][key].shape, (name, key)
            assert (value.float() - sharded[name][key].float()).abs().max() == 0, (name, key)


def test_a_rerun_resumes_and_rewrites_nothing(caches):
    _, _, again = caches["jobs"]
    assert again.status.count("cached") == len(CAPTIONS)
    now = {p.name: p.stat().st_mtime_ns for p in caches["sharded"].glob("*.safetensors")}
    assert now == caches["stamps"]


def test_node_checks_are_one_line_errors(musubi, tmp_path, monkeypatch):
    from circle_rotate.kernel.errors import UserError
    from circle_rotate.musubi.cache import CacheRequest, env_from_paths, prepare_cache, run_cache

    config = write_config(tmp_path, write_clips(tmp_path / "clips", names=("orbit_a",)))
    with pytest.raises(UserError, match="out of range.*fix: use 0 to 1"):
        prepare_cache(CacheRequest(config, nodes=2, node_rank=2))
    if str(tmp_path).startswith("/tmp/"):
        with pytest.raises(UserError, match="local to each node.*shared storage"):
            prepare_cache(CacheRequest(config, nodes=2, node_rank=0))
    monkeypatch.setattr("circle_rotate.musubi.accelerate_launch.NODE_LOCAL", ())  # pytest's /tmp stands in for shared storage
    with pytest.raises(UserError, match="VAE is a relative path.*fix: give an absolute path"):
        prepare_cache(CacheRequest(config, nodes=2, node_rank=0, env=(("VAE", "models/vae.safetensors"),)))
    job = prepare_cache(CacheRequest(config, nodes=2, env=env_from_paths(vae=tmp_path / "v", t5=tmp_path / "t")))
    assert {s.label for s in job.shards} == {"node0:gpu0"}  # one clip: node 1's shard is empty
    with pytest.raises(UserError, match="every node's shards.*--node-rank"):
        run_cache(job)
