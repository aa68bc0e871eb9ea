"""``circle-rotate cache``: one latent + text-encoder cache pass that serves both experts.

The commands come from ``recipes/cache.sh`` (``wan_cache_latents.py --i2v`` and
``wan_cache_text_encoder_outputs.py``, both ``--skip_existing --keep_cache``, so an
interrupted run resumes). Before anything runs: the plan (:mod:`circle_rotate.musubi.cache_plan`)
says which files musubi will write and how big, the status (:mod:`circle_rotate.musubi.cache_status`)
which exist, and the disk holding each cache directory must have room for the rest.

With several GPUs the clips are split into disjoint shards, balanced by pixels x frames;
each shard gets its own dataset config (``video_jsonl_file`` listing its clips, the same
``cache_directory`` and settings as the user's config) and one process per GPU runs the two
scripts on it. ``--keep_cache`` is what lets the shards share a directory: without it each
run deletes the cache files of clips it was not given. Several machines (``nodes``) split the
clips into nodes x GPUs shards the same way; each machine computes the same split from the
shared dataset and runs only its own shards (``node_rank``), all into the one cache directory,
which must therefore be on storage every node mounts at the same path.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from circle_rotate.kernel.atomic import write_text
from circle_rotate.kernel.disk_space import short_disks
from circle_rotate.kernel.errors import UserError
from circle_rotate.musubi.args import check_command
from circle_rotate.musubi.cache_plan import CacheItem, CachePlan, plan_cache
from circle_rotate.musubi.cache_status import CacheStatus, check_cache
from circle_rotate.musubi.processes import ChainResult, run_chains
from circle_rotate.musubi.recipe_reader import CACHE_RECIPE, MusubiCommand, read_recipe, recipe_variables

logger = logging.getLogger(__name__)

GB = 1e9
SHARD_DIR = "circle-rotate-shards"
#: Free space kept beyond the estimate (the estimate is an upper bound already; this is for the OS).
DISK_MARGIN_BYTES = 256 * 2**20


@dataclass(frozen=True)
class CacheRequest:
    """What ``circle-rotate cache`` was asked to do (recipe variables as ``env``)."""

    dataset_config: Optional[Path] = None  # None: the recipe's DATASET_CONFIG
    gpus: Tuple[str, ...] = ("0",)
    env: Tuple[Tuple[str, str], ...] = ()  # VAE, T5, DEVICE, TE_BATCH_SIZE, VAE_CACHE_CPU, FP8_T5, ...
    refresh_stale: bool = False
    nodes: int = 1  # machines sharing the work (and the cache directory, on shared storage)
    node_rank: Optional[int] = None  # this machine; None: plan every node's shards (a dry run)


@dataclass(frozen=True)
class Shard:
    label: str
    gpu: str
    items: Tuple[CacheItem, ...]
    config: Path
    files: Tuple[Tuple[Path, str], ...] = ()  # (path, text) to write before running; () = the user's config
    node: int = 0


@dataclass(frozen=True)
class CacheJob:
    plan: CachePlan
    status: CacheStatus
    shards: Tuple[Shard, ...]
    commands: Tuple[Tuple[str, Tuple[MusubiCommand, ...]], ...]  # (label, [latents, text]) per shard
    refresh_stale: bool
    every_node: bool = False  # planned for all nodes (no --node-rank): fine to print, not to run


def split_items(items: Sequence[CacheItem], parts: int) -> List[List[CacheItem]]:
    """Disjoint, cost-balanced parts (largest first onto the lightest part); order kept inside each."""
    loads = [0.0] * parts
    assigned: List[List[int]] = [[] for _ in range(parts)]
    for index in sorted(range(len(items)), key=lambda i: -items[i].cost):
        target = loads.index(min(loads))
        assigned[target].append(index)
        loads[target] += items[index].cost
    return [[items[i] for i in sorted(a)] for a in assigned]


def shard_files(plan: CachePlan, items: Sequence[CacheItem], config: Path) -> Tuple[Tuple[Path, str], ...]:
    """The dataset config (and its JSONL lists) that makes musubi see only ``items``."""
    import toml

    general: Dict[str, object] = {}
    datasets = []
    files: List[Tuple[Path, str]] = []
    for d in plan.datasets:
        mine = [i for i in items if i.dataset == d.index]
        if not mine:
            continue
        section = dict(d.section)
        if "control_directory" in section:
            raise UserError(f"dataset {d.index} has control videos; they cannot be split over GPUs", path=plan.config,
                            fix="cache it on one GPU (leave out --gpus)")
        for key in ("video_directory", "video_jsonl_file", "caption_extension"):
            section.pop(key, None)
        jsonl = config.with_name(f"{config.stem}-dataset{d.index}.jsonl")
        lines = [json.dumps({"video_path": str(i.video.absolute()), "caption": i.caption}, ensure_ascii=False) for i in mine]
        files.append((jsonl, "\n".join(lines) + "\n"))
        datasets.append({**section, "video_jsonl_file": str(jsonl), "cache_directory": str(d.cache_directory.absolute())})
    header = f"# written by circle-rotate cache: one GPU's share of {plan.config}; safe to delete\n"
    files.append((config, header + toml.dumps({"general": general, "datasets": datasets})))
    return tuple(files)


def _check_disk(plan: CachePlan, status: CacheStatus) -> None:
    needs = [(plan.datasets[s.item.dataset].cache_directory, s.item.latent_bytes + s.item.te_bytes)
             for s in status.items if s.state != "cached"]
    for probe, total, free in short_disks(needs, margin=DISK_MARGIN_BYTES):
        raise UserError(f"the caches need about {total / GB:.2f} GB but only {free / GB:.2f} GB is free", path=probe,
                        fix="free disk space or set cache_directory in the dataset config to a larger disk")


def _check_inputs(plan: CachePlan, status: CacheStatus, refresh: bool) -> None:
    if not plan.items:
        raise UserError("the dataset config lists no clips (a missing video directory silently yields none)",
                        path=plan.config, fix=f"run `circle-rotate check-config {plan.config}`")
    uncaptioned = [i for i in plan.items if i.caption is None]
    if uncaptioned:
        raise UserError(f"{len(uncaptioned)} clip(s) have no caption, e.g. {uncaptioned[0].video}", path=plan.config,
                        fix="write them with `circle-rotate caption`, or fix caption_extension")
    stale = status.of("stale")
    if stale and not refresh:
        raise UserError(f"{len(stale)} clip(s) have stale caches that --skip_existing would keep: "
                        f"{stale[0].reasons[0]}", path=plan.datasets[stale[0].item.dataset].cache_directory,
                        fix="pass --refresh-stale to delete and redo them")


def prepare_cache(request: CacheRequest, *,
                  transform: Optional[Callable[[MusubiCommand], MusubiCommand]] = None) -> CacheJob:
    """Plan, check and build the commands of a cache pass (nothing is written or run).

    Args:
        request: config, GPUs, recipe variables.
        transform: applied to every command (the CPU self-check runs musubi's scripts
            through its own launcher with it).

    Raises:
        UserError: musubi-tuner or the config is unusable, clips lack captions, stale caches
            without ``refresh_stale``, the disk is short, or musubi's parser rejects a command.
    """
    config = request.dataset_config
    if config is None:
        config = Path(recipe_variables(["DATASET_CONFIG"], env=dict(request.env))["DATASET_CONFIG"])
    plan = plan_cache(config)
    status = check_cache(plan)
    _check_inputs(plan, status, request.refresh_stale)
    _check_disk(plan, status)
    gpus = request.gpus or ("0",)
    _check_nodes(plan, request)
    shards: List[Shard] = []
    total = request.nodes * len(gpus)
    if total == 1:
        shards.append(Shard(f"gpu{gpus[0]}", gpus[0], plan.items, plan.config))
    else:
        # every node computes the same split from the same (shared) dataset and runs only its own shards
        shard_dir = plan.datasets[0].cache_directory / SHARD_DIR
        for k, items in enumerate(split_items(plan.items, total)):
            node, gpu = divmod(k, len(gpus))
            if items and request.node_rank in (None, node):
                config = shard_dir / f"shard{k}-of-{total}.toml"
                label = f"gpu{gpus[gpu]}" if request.nodes == 1 else f"node{node}:gpu{gpus[gpu]}"
                shards.append(Shard(label, gpus[gpu], tuple(items), config, shard_files(plan, items, config), node))
    commands = []
    for shard in shards:
        env = {**dict(request.env), "DATASET_CONFIG": str(shard.config), "GPU": shard.gpu}
        chain = tuple(transform(c) if transform else c for c in read_recipe(CACHE_RECIPE, env=env))
        for c in chain:
            check_command(c)
        commands.append((shard.label, chain))
    return CacheJob(plan, status, tuple(shards), tuple(commands), request.refresh_stale,
                    every_node=request.nodes > 1 and request.node_rank is None)


def run_cache(job: CacheJob, *, env: Optional[Mapping[str, str]] = None, scripts_in_parallel: bool = False
              ) -> List[ChainResult]:
    """Delete stale files (when asked), write shard configs, run every shard's commands.

    ``scripts_in_parallel`` runs each shard's latent and text passes side by side (they write
    different files; on one GPU that needs room for the VAE and the T5 at once).

    Raises:
        UserError: the job holds several nodes' shards (run it on each node with its rank), or a
            command failed (its output was streamed above).
    """
    if job.every_node:
        raise UserError("this cache job holds every node's shards", path=job.plan.config,
                        fix="run it on each node with its --node-rank R")
    if job.refresh_stale:
        for s in job.status.of("stale"):
            for f in s.stale_files:
                logger.info("removing stale cache %s (%s)", f, "; ".join(s.reasons))
                f.unlink(missing_ok=True)
    for shard in job.shards:
        for path, text in shard.files:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, text)
    chains = dict(job.commands)
    if scripts_in_parallel:
        chains = {f"{label}:{c.script}": [c] for label, chain in job.commands for c in chain}
    results = run_chains(chains, env=env)
    failed = [r for r in results if not r.ok]
    if failed:
        r = failed[0]
        raise UserError(f"{r.failed_command.script}.py failed on {r.label} (exit {r.returncodes[-1]}); "
                        "re-running resumes where it stopped", path=job.plan.config,
                        fix="read the output above, fix the cause, run the same command again")
    return results


def _check_nodes(plan: CachePlan, request: CacheRequest) -> None:
    if request.node_rank is not None and not 0 <= request.node_rank < request.nodes:
        raise UserError(f"--node-rank {request.node_rank} is out of range for --nodes {request.nodes}",
                        fix=f"use 0 to {request.nodes - 1}, one per node")
    from circle_rotate.musubi.accelerate_launch import check_shared_paths

    paths = {"dataset config": plan.config.absolute(), **{f"cache directory {d.index}": d.cache_directory
                                                          for d in plan.datasets}}
    if request.nodes > 1:  # every node loads the same models
        paths.update({k: Path(v) for k, v in recipe_variables(["VAE", "T5"], env=dict(request.env)).items()})
    for problem in check_shared_paths(paths, request.nodes):
        raise UserError(problem.message, path=problem.path, fix=problem.fix)


def describe_job(job: CacheJob) -> List[str]:
    """Human lines: what is cached, what will be written, where, by which commands."""
    s = job.status
    lines = [f"{len(job.plan.items)} clips in {job.plan.config}: {s.count('cached')} cached, "
             f"{s.count('missing')} missing, {s.count('stale')} stale; about {s.missing_bytes / GB:.2f} GB to write"]
    for shard in job.shards:
        lines.append(f"{shard.label}: {len(shard.items)} clips via {shard.config}")
    for label, chain in job.commands:
        lines += [f"[{label}] {c.shell()}" if len(job.commands) > 1 else c.shell() for c in chain]
    return lines


def env_from_paths(*, vae: Optional[Path] = None, t5: Optional[Path] = None, device: Optional[str] = None,
                   extra: Mapping[str, str] = ()) -> Tuple[Tuple[str, str], ...]:
    """Recipe variables for the given paths (unset ones keep the recipe defaults)."""
    env = {k: v for k, v in (("VAE", vae), ("T5", t5), ("DEVICE", device)) if v is not None}
    env.update(dict(extra))
    return tuple((k, os.fspath(v)) for k, v in env.items())
