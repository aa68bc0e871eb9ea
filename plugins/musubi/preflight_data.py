"""Preflight checks on the data side: dataset config, caches, sample prompts, outputs, disk, VRAM."""

from __future__ import annotations

import argparse
import math
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence, Tuple

from circle_rotate.kernel.disk_space import short_disks
from circle_rotate.kernel.errors import UserError
from circle_rotate.musubi.args import task_config
from circle_rotate.musubi.cache_plan import CachePlan, plan_cache
from circle_rotate.musubi.cache_status import check_cache
from circle_rotate.musubi.preflight_findings import Findings, TrainTarget, user_error_parts
from circle_rotate.musubi.recipe_reader import launcher_processes
from circle_rotate.musubi.vram import BUDGETS_GB, VramSettings, estimate_vram, fitting_settings, lora_parameters, tokens_per_sample

GB = 1e9
OPTIMIZER_BYTES = {"adamw": 8, "adamw8bit": 2}


def _check_config_file(f: Findings, config: Path) -> bool:
    """The dataset checker's verdict (``circle-rotate check-config``); False when it found errors."""
    from circle_rotate.dataset.check import check_config

    report = check_config(config, use_musubi=True)
    for p in report.problems:
        where = f"{p.file}:{p.line}" if p.line else str(p.file)
        add = f.error if p.severity == "error" else f.warning
        add(where, f"{p.key + ': ' if p.key else ''}{p.message}", p.fix)
    return report.ok


def _cache_problems(f: Findings, plan: CachePlan) -> None:
    status = check_cache(plan)
    fix = f"circle-rotate cache --dataset-config {plan.config}"
    missing = status.of("missing")
    if missing:
        f.error(plan.config, f"{len(missing)} of {len(plan.items)} clips have no cache yet (e.g. {missing[0].item.video.name}: "
                             f"{missing[0].reasons[0]})", fix)
    no_i2v = [s for s in status.of("stale") if any("without --i2v" in r for r in s.reasons)]
    if no_i2v:
        first = next(r for r in no_i2v[0].reasons if "without --i2v" in r)
        f.error(no_i2v[0].item.latent_files[0].parent, f"{len(no_i2v)} clip(s) have latents cached without --i2v "
                f"({first}); I2V training fails on them with KeyError 'latents_image'", fix + " --refresh-stale")
    other = [s for s in status.of("stale") if s not in no_i2v]
    if other:
        f.error(plan.config, f"{len(other)} clip(s) have stale caches ({other[0].reasons[0]})", fix + " --refresh-stale")
    if status.strays:
        f.warning(status.strays[0].parent, f"{len(status.strays)} cache file(s) belong to no clip of the config but "
                  f"training uses every cache file in the folder (e.g. {status.strays[0].name})",
                  "delete them (circle-rotate cache status lists them)")


def _prompt_problems(f: Findings, ns: argparse.Namespace) -> None:
    if not ns.sample_prompts:
        return
    path = Path(ns.sample_prompts)
    if not path.is_file():
        f.error(path, "sample prompt file not found", "fix SAMPLE_PROMPTS or leave it empty")
        return
    from circle_rotate.kernel.musubi_env import import_musubi

    try:
        prompts = import_musubi("training.sampling_prompts").load_prompts(str(path))
    except (ValueError, IndexError) as exc:  # musubi's line parser: "--d x", "--w" with no value
        f.error(path, f"musubi cannot read the sample prompts ({exc})", "numbers after --w --h --f --d --s --g")
        return
    if "i2v" in ns.task:
        no_image = [p for p in prompts if not p.get("image_path")]
        if no_image:
            f.error(path, f"{len(no_image)} I2V sample prompt(s) carry no first frame, e.g. "
                          f"'{str(no_image[0].get('prompt', ''))[:40]}'", "end each line with --i path/to/first.png")
        gone = [p["image_path"] for p in prompts if p.get("image_path") and not Path(p["image_path"]).is_file()]
        if gone:
            f.error(path, f"sample image not found: {gone[0]}", "fix the --i path in the prompt file")
    if not ns.t5:
        f.error(path, "sampling encodes the prompts with the T5, but no --t5 is given", "set T5")
    elif not Path(ns.t5).is_file():
        f.error(ns.t5, "sampling encodes the prompts with this T5, which is not there",
                "circle-rotate download models, or set T5 to the umt5-xxl file")


def check_data(f: Findings, namespaces: Sequence[argparse.Namespace]) -> Optional[CachePlan]:
    """Dataset config (checker + musubi's loader), caches and sample prompts; returns the cache plan."""
    configs = {str(ns.dataset_config) for ns in namespaces if ns.dataset_config}
    if not configs:
        f.error("", "no --dataset_config given", "set DATASET_CONFIG")
        return None
    plan = None
    for config in sorted(configs):
        path = Path(config)
        if not path.is_file():
            f.error(path, "dataset config not found", "set DATASET_CONFIG, or write one with `circle-rotate config`")
            continue
        if not _check_config_file(f, path):
            continue  # musubi's loader would only repeat the checker's errors
        try:
            plan = plan_cache(path)
        except UserError as exc:
            message, fix = user_error_parts(exc)
            f.error(exc.path or path, message, fix)
            continue
        _cache_problems(f, plan)
    for ns in namespaces[:1]:
        _prompt_problems(f, ns)
    return plan


def steps_per_epoch(plan: CachePlan) -> int:
    """Batches per epoch as musubi buckets them (by size and frame count, num_repeats copies each)."""
    total = 0
    for d in plan.datasets:
        section = dict(d.section)
        batch, repeats = int(section.get("batch_size", 1)), int(section.get("num_repeats", 1))
        buckets = Counter((i.bucket, n) for i in plan.items if i.dataset == d.index for _, n in i.windows)
        total += sum(math.ceil(count * repeats / batch) for count in buckets.values())
    return max(total, 1)


def saved_files(ns: argparse.Namespace, epochs: int, steps: int) -> int:
    """LoRA files a run leaves: every N epochs / steps before the end (pruned by save_last_n_*), plus the final one."""
    by_epoch = (epochs - 1) // ns.save_every_n_epochs if ns.save_every_n_epochs else 0
    if ns.save_last_n_epochs:
        by_epoch = min(by_epoch, ns.save_last_n_epochs)
    by_step = steps // ns.save_every_n_steps if ns.save_every_n_steps else 0
    if ns.save_last_n_steps and ns.save_every_n_steps:
        by_step = min(by_step, ns.save_last_n_steps // ns.save_every_n_steps)
    return by_epoch + by_step + 1


def checkpoint_bytes(ns: argparse.Namespace, plan: Optional[CachePlan], *, processes: int = 1) -> Tuple[int, int, int]:
    """(bytes of the LoRA files and states a run saves, epochs, optimizer steps over ``processes`` processes)."""
    cfg = task_config(ns.task)
    params = lora_parameters(cfg, ns.network_dim or 4)
    lora = params * (2 if ns.save_precision in ("fp16", "bf16") else 4) + 64 * 1024
    # musubi: ceil(batches / processes / accumulation) optimizer steps per epoch
    accumulation = getattr(ns, "gradient_accumulation_steps", 1) or 1
    per_epoch = math.ceil(steps_per_epoch(plan) / processes / accumulation) if plan else 1
    epochs = ns.max_train_epochs or math.ceil(ns.max_train_steps / per_epoch)
    steps = ns.max_train_epochs * per_epoch if ns.max_train_epochs else ns.max_train_steps
    files = saved_files(ns, epochs, steps)
    state = params * (4 + OPTIMIZER_BYTES.get((ns.optimizer_type or "adamw").lower(), 8)) if ns.save_state else 0
    states = min(files, ns.save_last_n_epochs_state or files) if ns.save_state else 0
    return files * lora + states * state, epochs, steps


def _output_problems(f: Findings, ns: argparse.Namespace, *, force: bool, resume: bool) -> None:
    out = Path(ns.output_dir or ".")
    if not ns.output_name:
        f.error("", "no --output_name given", "set the output name in the recipe")
        return
    final = out / f"{ns.output_name}.safetensors"
    if final.exists() and not (force or resume):
        f.error(final, "a finished run's LoRA is already there",
                "pass --force to train again (its files are moved aside into earlier-run-<date>/), or choose another "
                "-o/--out")
    elif not final.exists() and not resume and any(out.glob(f"{ns.output_name}-*.safetensors")):
        states = sorted(out.glob(f"{ns.output_name}-*-state"))
        f.warning(out, "an interrupted run left epoch checkpoints here; a fresh run moves them aside into "
                       "earlier-run-<date>/", "pass --resume to continue from its last state" if states else
                  "delete them, or choose another -o/--out, if the copy is not wanted")


def check_outputs_and_disk(f: Findings, parsed: Sequence[Tuple[TrainTarget, argparse.Namespace]],
                           plan: Optional[CachePlan], *, force: bool, resume: bool) -> None:
    """Existing outputs, then free disk for every checkpoint each run saves (summed per disk)."""
    needs = []
    for target, ns in parsed:
        _output_problems(f, ns, force=force, resume=resume)
        size, epochs, steps = checkpoint_bytes(ns, plan, processes=launcher_processes(target.command.launcher))
        # without clips the step count is a guess of one per epoch: say so rather than print it
        counted = f"{steps} step(s)" if plan is not None and plan.items else "steps unknown until the config finds clips"
        f.notes.append(f"{target.expert}: {epochs} epoch(s), {counted}; checkpoints need about {size / GB:.1f} GB "
                       f"in {ns.output_dir}")
        needs.append((Path(ns.output_dir or "."), size))
    for probe, total, free in short_disks(needs):
        f.error(probe, f"the runs save about {total / GB:.1f} GB of checkpoints but only {free / GB:.1f} GB is free",
                "free disk, choose another -o/--out, or keep fewer epoch files (--set SAVE_LAST_N_EPOCHS=10)")


def vram_notes(f: Findings, ns: argparse.Namespace, plan: Optional[CachePlan]) -> None:
    """The estimate for the command's own settings and the least intrusive ones that fit 24/48/80 GB."""
    if plan is None or not plan.items:
        return
    cfg = task_config(ns.task)
    tokens = max(tokens_per_sample(n, i.bucket[1], i.bucket[0]) for i in plan.items for _, n in i.windows)
    batch = max(int(dict(d.section).get("batch_size", 1)) for d in plan.datasets)
    settings = VramSettings(fp8_base=bool(ns.fp8_base), gradient_checkpointing=bool(ns.gradient_checkpointing),
                            cpu_offload=bool(ns.gradient_checkpointing_cpu_offload), blocks_to_swap=ns.blocks_to_swap or 0)
    if settings.cpu_offload and not settings.gradient_checkpointing:  # musubi offloads only inside checkpointing
        f.warning("--gradient_checkpointing_cpu_offload", "does nothing without --gradient_checkpointing (musubi "
                  "offloads the checkpointed activations only)", "set GRADIENT_CHECKPOINTING=1 too, or "
                  "GRADIENT_CHECKPOINTING_CPU_OFFLOAD=0")
    kw = dict(tokens=tokens, batch=batch, rank=ns.network_dim or 4, optimizer=ns.optimizer_type or "adamw")
    est = estimate_vram(cfg, settings=settings, **kw)
    f.notes.append(f"VRAM estimate (rough, +-30%): {est.total_gb:.1f} GiB with {settings.describe()} "
                   f"({tokens} tokens x batch {batch})")
    if est.total_gb > max(BUDGETS_GB):
        f.warning("--gradient_checkpointing", f"the estimate, {est.total_gb:.0f} GiB with {settings.describe()}, fits "
                  f"no card up to {max(BUDGETS_GB)} GB", "keep the recipes' memory settings (GRADIENT_CHECKPOINTING=1, "
                  "the default), or take the settings below for your card")
    for budget in BUDGETS_GB:
        # from the bare command, so that the advice is the least a card needs, not more on top of the settings given
        fit = fitting_settings(cfg, budget, base=VramSettings(fp8_base=settings.fp8_base), **kw)
        if fit is None:
            f.notes.append(f"  {budget} GB: does not fit even with every memory setting; lower the resolution or frames")
        else:
            knobs = " ".join(f"{k}={v}" for k, v in fit.settings.recipe_vars().items())
            f.notes.append(f"  {budget} GB: {fit.total_gb:.1f} GiB with {fit.settings.describe()}  ({knobs})")
