"""Everything a training run needs, checked on a CPU before a GPU hour is spent.

All from file headers, configs and the commands themselves (no weights are loaded):
musubi-tuner and its version; each command through musubi's own parser; each DiT is what
its flag says (expert, I2V, dtype musubi can train, the task's shapes); the VAE; the dataset
config (the dataset checker, :mod:`circle_rotate.dataset.check`); the caches (present,
complete, ``--i2v``); sample prompts carry a first frame; existing outputs; free disk for
every checkpoint the run saves; a VRAM estimate and the settings that fit 24/48/80 GB.

Every problem is one line naming the file and the fix; all are collected before reporting.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from circle_rotate.kernel.checkpoint_identity import DIFFUSERS_FIX, DIFFUSERS_LAYOUT, CheckpointIdentity, identify_checkpoint
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.musubi_env import (INSTALL_HINT, SUPPORTED_VERSION, import_musubi, musubi_available,
                                             musubi_version)
from circle_rotate.kernel.safetensors_io import read_header
from circle_rotate.kernel.shard_names import INDEX_SUFFIX
from circle_rotate.kernel.shards import AnyHeader, read_checkpoint
from circle_rotate.kernel.wan_arch import BOUNDARY_I2V, BOUNDARY_T2V
from circle_rotate.musubi.args import task_config
from circle_rotate.musubi.preflight_data import check_data, check_outputs_and_disk, vram_notes
from circle_rotate.musubi.preflight_findings import Findings, PreflightReport, TrainTarget, user_error_parts
from circle_rotate.musubi.tasks import extra_task

logger = logging.getLogger(__name__)

OTHER = {"low": "high", "high": "low"}
NOISE = {"low": "low-noise", "high": "high-noise"}
# wan/modules/model.py detect_wan_sd_dtype: the tensor musubi reads a DiT's dtype from, in the file --dit names
_DTYPE_KEYS = ("model.diffusion_model.blocks.0.cross_attn.k.weight", "blocks.0.cross_attn.k.weight")


def _expert_problem(f: Findings, ident: CheckpointIdentity, expert: str, flag: str) -> None:
    path = ident.path
    if ident.expert == OTHER[expert]:
        f.error(path, f"is the {NOISE[ident.expert]} expert (by its {ident.expert_evidence}) but is given as the "
                      f"{NOISE[expert]} one ({flag}); the experts are swapped",
                "swap DIT_LOW and DIT_HIGH (--dit-low / --dit-high)")
    elif ident.expert is None:
        f.warning(path, f"nothing in its metadata or file name says which expert it is (both have identical shapes); "
                        f"it is used as the {NOISE[expert]} expert", f"make sure it is the {NOISE[expert]} expert")


def _dtype_problem(f: Findings, ident: CheckpointIdentity, ns: argparse.Namespace) -> None:
    path, dtype = ident.path, ident.dtype
    if dtype == "fp8_scaled":
        f.error(path, "is an fp8_scaled checkpoint, which musubi-tuner can neither train nor load (docs/wan.md support matrix)",
                "use the fp16 expert (circle-rotate download models)")
    elif dtype == "fp8_e4m3fn" and (not ns.fp8_base or ns.fp8_scaled):
        f.error(path, "is plain fp8_e4m3fn: musubi trains it only with --fp8_base and without --fp8_scaled",
                "use the fp16 expert")
    elif (dtype, ns.mixed_precision) in (("fp16", "bf16"), ("bf16", "fp16")):
        f.error(path, f"is {dtype} but --mixed_precision is {ns.mixed_precision}; musubi requires them to match",
                f"use --mixed_precision {dtype}, or the {ns.mixed_precision} expert")
    elif dtype in ("mixed", "unknown"):
        f.warning(path, f"its block weights have {dtype} dtypes", "use the official fp16 expert")


def _shard_problem(f: Findings, path: Path, header: AnyHeader, flag: str, reads_dtype: bool) -> None:
    """musubi-tuner takes a sharded DiT by naming one shard (it finds the others by name) and reads the
    model's dtype from the file named, so that one must hold the tensor it reads it from."""
    holder = next((header.header_of(k).path for k in _DTYPE_KEYS if k in header), header.shards[0].path)
    if path.is_dir() or path.name.endswith(INDEX_SUFFIX):
        f.error(path, f"{flag}: musubi-tuner loads a model file or one shard of it, not a folder or an index",
                f"give {holder}")
    elif reads_dtype and len(header.shards) > 1 and holder.resolve() != path.resolve():
        f.error(path, f"{flag}: musubi-tuner reads the model's dtype from {_DTYPE_KEYS[1]} in the shard it is given, "
                      f"and {holder.name} holds that", f"give {holder}")


def check_dit(f: Findings, path: Path, *, expert: str, flag: str, ns: argparse.Namespace,
              reads_dtype: bool = True) -> Optional[CheckpointIdentity]:
    """The checkpoint at ``path`` (one file, or a shard of a sharded model) is a Wan DiT for ``ns.task``,
    the named expert, in a dtype musubi trains. ``reads_dtype``: musubi reads the dtype from this file
    (``--dit``; not ``wan_generate_video.py``'s ``--dit_high_noise``)."""
    try:
        header = read_checkpoint(path)
        ident = identify_checkpoint(header)
    except UserError as exc:
        message, fix = user_error_parts(exc)
        f.error(path, f"{flag}: {message}", fix or "check the path")
        return None
    _shard_problem(f, path, header, flag, reads_dtype)
    cfg = task_config(ns.task)
    if not ident.is_wan:
        f.error(path, "is not a Wan DiT checkpoint (no patch_embedding / blocks.N keys)", f"point {flag} at a Wan2.2 expert")
        return ident
    if ident.layout == "diffusers":
        f.error(path, DIFFUSERS_LAYOUT, DIFFUSERS_FIX)
    elif cfg.i2v and ident.task == "t2v":
        f.error(path, f"is a T2V checkpoint ({ident.in_dim} input channels); --task {ns.task} needs the I2V expert (36)",
                f"use wan2.2_i2v_{expert}_noise_14B_fp16.safetensors")
    elif ident.family == "wan2.1-14b" and cfg.model_version == "2.2":
        f.error(path, "is a Wan2.1 I2V checkpoint (it has img_emb/k_img); Wan2.2 has neither",
                f"use wan2.2_i2v_{expert}_noise_14B_fp16.safetensors")
    elif (ident.dim, ident.num_layers, ident.in_dim) != (cfg.dim, cfg.num_layers, cfg.in_dim):
        f.error(path, f"has dim {ident.dim}, {ident.num_layers} blocks, {ident.in_dim} input channels; --task {ns.task} "
                      f"builds dim {cfg.dim}, {cfg.num_layers} blocks, {cfg.in_dim} (strict loading would fail)",
                "use the checkpoint that matches the task")
    _dtype_problem(f, ident, ns)
    _expert_problem(f, ident, expert, flag)
    return ident


def vae_shapes() -> Dict[str, Tuple[int, ...]]:
    """Every key of musubi's Wan2.1 VAE with its shape (built on the meta device, no weights)."""
    import tempfile

    from safetensors.torch import save_file

    vae_module = import_musubi("wan.modules.vae")
    with tempfile.TemporaryDirectory() as d, _without_root_info():
        empty = Path(d) / "empty.safetensors"
        save_file({}, str(empty))
        # musubi loads a .safetensors VAE with strict=False into a meta-device model: an empty
        # file leaves every parameter on meta, which is exactly the shape table we want.
        model = vae_module._video_vae(pretrained_path=str(empty), z_dim=16)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@contextlib.contextmanager
def _without_root_info() -> Iterator[None]:
    """Drop INFO and DEBUG records logged on the root logger itself while this runs.

    musubi's ``_video_vae`` says ``logging.info(f"loading {path}")`` on the root logger: for the
    probe above that is our temporary empty file, a stray line on every dry run's stderr. A
    filter on the root logger sees only records logged on it directly (records propagated from
    named loggers, the kit's own included, go to its handlers without passing its filters), so
    nothing else is hidden; it is removed afterwards, whatever happens.
    """
    root = logging.getLogger()

    def warnings_and_up(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING

    root.addFilter(warnings_and_up)
    try:
        yield
    finally:
        root.removeFilter(warnings_and_up)


def check_vae(f: Findings, path: Optional[str]) -> None:
    """The VAE exists and, for safetensors, has exactly the keys and shapes of musubi's Wan2.1 VAE."""
    if not path:
        f.error("", "no --vae given; training needs the Wan2.1 VAE", "set VAE (circle-rotate download models)")
        return
    p = Path(path)
    if not p.is_file():
        f.error(p, "VAE file not found", "set VAE to the Wan2.1 VAE (circle-rotate download models)")
        return
    if p.suffix != ".safetensors":
        return  # a pickle (Wan2.1_VAE.pth) is never opened here; musubi loads it with weights_only=True
    try:
        header = read_header(p)
    except UserError as exc:
        message, fix = user_error_parts(exc)
        f.error(p, message, fix or "re-download it")
        return
    expected = vae_shapes()
    got = {k: tuple(v.shape) for k, v in header.tensors.items()}
    missing = sorted(set(expected) - set(got))
    wrong = sorted(k for k in expected if k in got and got[k] != expected[k])
    if missing or wrong:
        # musubi loads a safetensors VAE with strict=False: a wrong file fails later, far from here
        example = (missing or wrong)[0]
        f.error(p, f"is not the Wan2.1 VAE ({len(missing)} keys missing, {len(wrong)} of other shapes, e.g. {example}); "
                   "Wan2.2_VAE is for the 5B model only", "use wan_2.1_vae.safetensors (circle-rotate download models)")


def check_timesteps(f: Findings, ns: argparse.Namespace, *, expert: str, boundary: int) -> None:
    """Each expert only ever sees its side of the boundary at inference (t >= boundary: high noise)."""
    lo = 0 if ns.min_timestep is None else int(ns.min_timestep)
    hi = 1000 if ns.max_timestep is None else int(ns.max_timestep)
    own = (boundary, 1000) if expert == "high" else (0, boundary)
    if (lo, hi) == (0, 1000):
        f.notes.append(f"{expert}: trains on all timesteps 0-1000, as published; at inference Wan2.2 runs the "
                       f"{NOISE[expert]} expert only for t {'>=' if expert == 'high' else '<'} {boundary} "
                       f"(--recipe recommended trains it on {own[0]}-{own[1]})")
    elif (expert == "high" and hi <= boundary) or (expert == "low" and lo >= boundary):
        f.error(ns.dit or "", f"trains the {NOISE[expert]} expert on timesteps {lo}-{hi}, where Wan2.2 runs the "
                              f"{NOISE[OTHER[expert]]} expert (boundary {boundary}); the timestep ranges are swapped",
                f"--min_timestep {own[0]} --max_timestep {own[1]} for this expert (--recipe recommended)")
    elif (lo, hi) != own:
        f.warning(ns.dit or "", f"trains the {NOISE[expert]} expert on timesteps {lo}-{hi}; Wan2.2 hands over at "
                                f"{boundary}, so its own range is {own[0]}-{own[1]}",
                  f"--min_timestep {own[0]} --max_timestep {own[1]} unless this is deliberate")


def check_runtime(f: Findings, ns: argparse.Namespace, *, for_run: bool) -> None:
    """What the GPU machine itself needs (errors only when about to run, notes for a dry run)."""
    task = extra_task(ns.task)
    if task is not None and task.runs_on_cpu:
        return
    add = f.error if for_run else f.warning
    import torch

    if not torch.cuda.is_available():
        add("", "no CUDA GPU here; a 14B expert does not train on a CPU",
            "run on a GPU machine (here: --dry-run, or `circle-rotate smoke` for the CPU chain)")
    if (ns.optimizer_type or "").lower().endswith("8bit") and importlib.util.find_spec("bitsandbytes") is None:
        add("", f"--optimizer_type {ns.optimizer_type} needs bitsandbytes, which is not installed",
            'pip install bitsandbytes (or, in the circle-rotate clone, pip install -e ".[train]")')


def check_musubi(f: Findings) -> Optional[str]:
    if not musubi_available():
        f.error("", "musubi-tuner is not installed; nothing can be checked against it or run", INSTALL_HINT)
        return None
    try:
        # the package alone may be there without its requirements (pip install --no-deps): one error
        # naming the missing module, not the same one for every command and check that imports it
        import_musubi("wan_train_network")
    except UserError as exc:
        message, fix = user_error_parts(exc)
        f.error("", message, fix)
        return None
    version = musubi_version()
    if version != SUPPORTED_VERSION:
        f.warning("", f"musubi-tuner {version} is installed; the recipes were checked against {SUPPORTED_VERSION}",
                  f"pip install musubi-tuner=={SUPPORTED_VERSION} from its v{SUPPORTED_VERSION} tag")
    return version


def preflight(targets: Sequence[TrainTarget], *, for_run: bool, force: bool = False,
              resume: bool = False) -> PreflightReport:
    """Run every check on the training commands in ``targets`` (one per expert).

    Args:
        targets: the commands about to run.
        for_run: they are about to run here (missing GPU / bitsandbytes become errors).
        force: replacing finished outputs is allowed.
        resume: the run resumes from a saved state (finished epochs are expected).

    Returns:
        The report; nothing is raised for problems (see :meth:`PreflightReport.raise_for_errors`).
    """
    from circle_rotate.musubi.args import check_command

    f = Findings()
    version = check_musubi(f)
    if version is None:
        return PreflightReport(tuple(f.problems), (), None)
    parsed: List[Tuple[TrainTarget, argparse.Namespace]] = []
    for t in targets:
        try:
            parsed.append((t, check_command(t.command)))
        except UserError as exc:
            message, fix = user_error_parts(exc)
            f.error(exc.path or "", message, fix)
    identities = []
    dits = [Path(ns.dit).resolve() for _, ns in parsed if ns.dit]
    if len(dits) == 2 and dits[0] == dits[1]:  # first: what follows from it ("swapped") is no help
        f.error(dits[0], "is given for both experts", "point DIT_LOW and DIT_HIGH at the two different experts")
    for t, ns in parsed:
        ident = check_dit(f, Path(ns.dit or ""), expert=t.expert, flag="--dit", ns=ns)
        check_timesteps(f, ns, expert=t.expert, boundary=BOUNDARY_I2V if "i2v" in (ns.task or "") else BOUNDARY_T2V)
        if ident is not None:
            identities.append((t.expert, ident.to_dict()))
    if parsed:
        ns0 = parsed[0][1]
        check_vae(f, ns0.vae)
        check_runtime(f, ns0, for_run=for_run)
        plan = check_data(f, [ns for _, ns in parsed])
        check_outputs_and_disk(f, parsed, plan, force=force, resume=resume)
        vram_notes(f, ns0, plan)
    return PreflightReport(tuple(f.problems), tuple(f.notes), version, tuple(identities))
