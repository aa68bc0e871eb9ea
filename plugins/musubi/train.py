"""``circle-rotate train low|high|both``: preflight, then the recipe's musubi-tuner commands.

The commands are the recipes' own (:mod:`circle_rotate.musubi.recipe_reader`); this module only sets
their variables (paths, GPU, memory knobs), adds ``--save_state`` / ``--resume`` when asked,
runs them (``both``: one after the other on one GPU, or one expert per GPU side by side with
two GPUs) and writes ``run.json`` beside each run's LoRAs.

Resuming, as musubi-tuner 0.3.4 does it: ``--save_state`` writes
``<output_name>-<epoch:06d>-state`` folders (``utils/train_utils.py``) and ``--resume DIR``
restores the LoRA, optimizer, scheduler and RNG states from one, but the trainer restarts its
epoch count at 0 (``trainer_base.py``: ``epoch_to_start = 0``). So a resume from epoch E runs
the remaining ``max_train_epochs - E`` epochs into ``<output_dir>/resume-from-epoch-<E>/``
(its ``-000001`` file is epoch E+1), never overwriting the first run's checkpoints; when it
ends, its final LoRA is moved up to ``<output_dir>/<output_name>.safetensors``, where a run
that was never interrupted leaves it. Only complete states are resumed from
(:mod:`circle_rotate.musubi.train_state`). Dataset shuffling is seeded by seed + epoch there
too, so a resumed run repeats the first epochs' orders: not bit-identical to an uninterrupted run.

A fresh run (no ``--resume``, or ``--force``) first moves an earlier run's LoRAs, states, resume
folders and run.json in its output folder aside into ``earlier-run-<date>/`` (one line says so):
otherwise a later ``--resume`` would pick the earlier run's newer-numbered states.

``run.json`` says ``running`` (``waiting`` for a second expert queued behind the first on one GPU),
then ``finished``, ``failed``, ``interrupted`` (Ctrl-C, SIGTERM) or ``not started``. When a resume
finishes, the first run's ``run.json`` (beside the final LoRA) is updated too: ``finished``, the final
LoRA and the chain of resumes, each with its own ``run.json`` in its ``resume-from-epoch-<E>/``.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from circle_rotate.kernel.atomic import write_text
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.safetensors_io import read_header, rewrite_metadata
from circle_rotate.musubi.accelerate_launch import config_text, pin_config
from circle_rotate.musubi.parallel_plan import ParallelRequest
from circle_rotate.musubi.preflight import preflight
from circle_rotate.musubi.preflight_findings import PreflightReport, TrainTarget
from circle_rotate.musubi.processes import ChainResult, run_chains
from circle_rotate.musubi.recipe_reader import EXPERTS, MusubiCommand, edit_options, option_values, train_command
from circle_rotate.musubi.run_record import file_identity, read_run_record, write_run_record
from circle_rotate.musubi.train_parallel import MathsChoice, apply_maths, describe, plan_parallel
from circle_rotate.musubi.train_resume import settle
from circle_rotate.musubi.train_state import ResumeStatus, move_aside, resume_status


@dataclass(frozen=True)
class TrainRequest:
    """What ``circle-rotate train`` was asked to do."""

    experts: Tuple[str, ...]
    recipe: str = "reproduce"
    env: Tuple[Tuple[str, str], ...] = ()  # recipe variables (paths, memory knobs)
    gpus: Tuple[str, ...] = ()  # () = the recipe's GPU; 2+ with both experts = one expert per GPU
    save_state: bool = False
    resume: bool = False
    resume_optional: bool = False  # with resume: an expert with nothing saved yet starts from epoch 1 (requeued jobs)
    force: bool = False
    parallel: Optional[ParallelRequest] = None  # data parallel through accelerate (several GPUs / nodes)
    maths: MathsChoice = MathsChoice()  # gradient accumulation, learning-rate rule


@dataclass(frozen=True)
class TrainRun:
    expert: str
    command: MusubiCommand
    output_dir: Path
    output_name: str
    resumed_from: Optional[Path] = None
    epoch_offset: int = 0
    details: Tuple[Tuple[str, object], ...] = ()  # extra run.json entries (data parallel, batch maths)
    accelerate_config: Tuple[Tuple[Path, str], ...] = ()  # (path, text) written before the run
    record: bool = True  # False on the other nodes of a multi-node run: node 0 writes run.json
    node: int = 0  # the machine that runs it (data parallel over several nodes)
    chain: str = "train"  # the device chain it runs in, on its node
    status: Optional[ResumeStatus] = None  # with --resume: what the output folder holds

    @property
    def final_lora(self) -> Path:
        """Where the finished LoRA ends up: the first run's folder, resumed or not."""
        first = self.output_dir.parent if self.resumed_from is not None else self.output_dir
        return first / f"{self.output_name}.safetensors"


@dataclass(frozen=True)
class TrainPlan:
    request: TrainRequest
    runs: Tuple[TrainRun, ...]
    chains: Tuple[Tuple[str, Tuple[int, ...]], ...]  # (label, indices into runs) per device, on this node
    lines: Tuple[str, ...] = ()  # what a dry run prints instead of the bare commands (data parallel)
    problems: Tuple[object, ...] = ()  # preflight Problems of the parallel request
    notes: Tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainResult:
    plan: TrainPlan
    report: PreflightReport
    chains: Tuple[ChainResult, ...] = ()
    records: Tuple[Path, ...] = ()


def _run_for(request: TrainRequest, expert: str, gpu: Optional[str],
             transform: Optional[Callable[[MusubiCommand], MusubiCommand]]) -> TrainRun:
    env = dict(request.env)
    if gpu is not None:
        env["GPU"] = gpu
    command = train_command(request.recipe, expert, env=env)
    command = replace(command, launcher=pin_config(command.launcher))
    details: Tuple[Tuple[str, object], ...] = ()
    if request.maths != MathsChoice():
        from circle_rotate.musubi.train_parallel import dataset_shape

        size, batches, _ = dataset_shape(command)
        command, maths = apply_maths(command, request.maths, 1, (size, batches))
        details = (("batch_maths", maths.to_record()),)
    if transform is not None:
        command = transform(command)
    return replace(_stateful(request, expert, command), details=details)


def _stateful(request: TrainRequest, expert: str, command: MusubiCommand) -> TrainRun:
    values = option_values(command.args)
    out, name = Path((values.get("--output_dir") or ["."])[0]), (values.get("--output_name") or [""])[0]
    if request.save_state or request.resume:
        command = command.with_args(edit_options(command.args, {"--save_state": []}))
    return TrainRun(expert, command, out, name, status=resume_status(out, name) if request.resume else None)


def plan_training(request: TrainRequest, *, transform: Optional[Callable[[MusubiCommand], MusubiCommand]] = None,
                  for_run: bool = False) -> TrainPlan:
    """The commands each expert runs and on which device (nothing runs).

    Args:
        request: experts, recipe, variables, GPUs, state options.
        transform: applied to each recipe command first (the smoke run scales it down).

    Raises:
        UserError: unknown recipe/expert, a recipe that cannot be resolved, nothing to resume.
    """
    experts = tuple(e for e in EXPERTS if e in request.experts)
    if not experts:
        raise UserError("no expert to train", fix="choose low, high or both")
    if request.parallel is not None:
        return _plan_parallel(request, experts, transform, for_run=for_run)
    parallel = len(request.gpus) >= 2 and len(experts) == 2
    gpus = {e: (request.gpus[i] if parallel else (request.gpus[0] if request.gpus else None))
            for i, e in enumerate(experts)}
    runs = [_run_for(request, e, gpus[e], transform) for e in experts]
    if parallel:
        runs = [replace(r, chain=f"{r.expert}@{'gpu' + gpus[r.expert] if gpus[r.expert] else 'cpu'}") for r in runs]
    runs, notes = settle(runs, optional=request.resume_optional)
    return TrainPlan(request, tuple(runs), _chains(runs, node=0), notes=tuple(notes))


def _chains(runs: Sequence[TrainRun], *, node: int) -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
    """(label, indices into ``runs``) of each device chain on ``node``, in the runs' order."""
    chains: Dict[str, List[int]] = {}
    for i, run in enumerate(runs):
        if run.node == node:
            chains.setdefault(run.chain, []).append(i)
    return tuple((label, tuple(idx)) for label, idx in chains.items())


def _plan_parallel(request: TrainRequest, experts: Tuple[str, ...],
                   transform: Optional[Callable[[MusubiCommand], MusubiCommand]], *, for_run: bool) -> TrainPlan:
    par = request.parallel
    planned = plan_parallel(request.recipe, experts, dict(request.env), par, request.maths, for_run=for_run,
                            transform=transform)
    here = par.node_rank if par.node_rank is not None else 0
    runs: List[TrainRun] = []
    for p in planned.runs:
        pl = p.placement
        run = _stateful(request, p.expert, p.command)
        details = (("data_parallel", {"nodes": pl.machines, "node_ranks": list(pl.node_ranks), "node": p.node,
                                      "gpus_per_node": list(pl.gpus), "processes": pl.processes,
                                      "main_process": f"{pl.host}:{pl.port}",
                                      "accelerate_config": str(p.config or par.accelerate_config)}),
                   ("batch_maths", p.maths.to_record()))
        files = ((p.config, config_text(pl)),) if p.config is not None else ()
        label = f"{pl.chain}@gpu{','.join(pl.gpus)}" if pl.chain != "all" else "train"
        runs.append(replace(run, details=details, accelerate_config=files, record=p.node == pl.node_ranks[0],
                            node=p.node, chain=label))
    runs, notes = settle(runs, optional=request.resume_optional)
    # the printed commands are the ones that run: --save_state, --resume and the resume folder included
    shown = replace(planned, runs=tuple(replace(p, command=r.command) for r in runs for p in planned.runs
                                        if (p.expert, p.node) == (r.expert, r.node)))
    return TrainPlan(request, tuple(runs), _chains(runs, node=here), lines=tuple(describe(shown)),
                     problems=planned.problems, notes=planned.notes + tuple(notes))


def _record(run: TrainRun, request: TrainRequest, status: str, dataset: Dict[str, object],
            extra: Dict[str, object]) -> Path:
    values = option_values(run.command.args)
    first = {k: (v[0] if v else True) for k, v in values.items()}
    outputs = sorted(p.name for p in run.output_dir.glob(f"{run.output_name}*.safetensors")) if run.output_dir.is_dir() else []
    return write_run_record(run.output_dir, {
        "status": status, "expert": run.expert, "recipe": request.recipe,
        "command": run.command.argv, "command_line": run.command.shell(), "environment": run.command.env_dict,
        "seed": first.get("--seed"), "dataset": dataset,
        "models": {"dit": file_identity(first.get("--dit", "")), "vae": file_identity(first.get("--vae", ""))},
        "resumed_from": str(run.resumed_from) if run.resumed_from else None, "epoch_offset": run.epoch_offset,
        "outputs": outputs, **dict(run.details), **extra,
    })


def _finish_first_record(run: TrainRun, final: Path, finished_at: float) -> Optional[Path]:
    """After a resume finished: the first run's run.json (beside the final LoRA) says so, names the
    final LoRA and lists every resume (its folder, state, epoch offset and status)."""
    first_dir = run.final_lora.parent
    record = read_run_record(first_dir) or {}  # none: the first run was not ours (musubi by hand), start it here
    resumes = []
    for sub in sorted(first_dir.glob("resume-from-epoch-*")):
        r = read_run_record(sub)
        if r is None:
            continue
        resumes.append({"folder": str(sub), "resumed_from": r.get("resumed_from"),
                        "epoch_offset": r.get("epoch_offset"), "status": r.get("status")})
    outputs = sorted(str(p.relative_to(first_dir)) for f in (first_dir, *(Path(r["folder"]) for r in resumes))
                     for p in f.glob(f"{run.output_name}*.safetensors"))
    record.update(status="finished", final_lora=str(final), finished_at=finished_at, resumes=resumes, outputs=outputs)
    return write_run_record(first_dir, record)


#: musubi's counts in a LoRA's metadata; a resumed run's count only its own epochs (it restarts at 0)
_EPOCH_FIELDS, _STEP_FIELDS = ("ss_epoch", "ss_num_epochs"), ("ss_steps", "ss_max_train_steps")


def _offset_metadata(path: Path, offset: int) -> None:
    """Add the epochs (and their steps) trained before the resume to the final LoRA's metadata, so
    ``ss_epoch`` says 400 of 400, not 56 of 56 (the header rewritten, the tensors as they are); a
    file without those fields is left alone."""
    meta = dict(read_header(path).metadata)
    counts = {}
    for key in _EPOCH_FIELDS + _STEP_FIELDS:
        try:
            counts[key] = int(meta[key])
        except (KeyError, ValueError):
            pass
    if "ss_epoch" not in counts and "ss_num_epochs" not in counts:
        return
    for key in _EPOCH_FIELDS:
        if key in counts:
            meta[key] = str(counts[key] + offset)
    epochs, steps = counts.get("ss_num_epochs"), counts.get("ss_max_train_steps")
    if epochs and steps and steps % epochs == 0:  # steps per epoch are known only from the planned totals
        for key in _STEP_FIELDS:
            if key in counts:
                meta[key] = str(counts[key] + offset * (steps // epochs))
    meta["ss_resumed_at_epoch"] = str(offset)
    rewrite_metadata(path, meta)


def _final_in_place(run: TrainRun) -> Path:
    """Move a resumed run's final LoRA up to the first run's folder (one rename, same file system),
    its metadata counting the epochs before the resume."""
    written = run.output_dir / f"{run.output_name}.safetensors"
    if run.resumed_from is not None and written.is_file():
        os.replace(written, run.final_lora)
        try:
            _offset_metadata(run.final_lora, run.epoch_offset)
        except (OSError, ValueError, struct.error, UserError):  # unreadable, or no room: the LoRA stays as musubi wrote it
            pass
    return run.final_lora


def _interrupted(plan: TrainPlan, request: TrainRequest, started: set, datasets: Dict[int, Dict[str, object]],
                 extra: Dict[str, object], exc: BaseException) -> None:
    """Ctrl-C or SIGTERM: each run.json says interrupted (or not started), and the message says
    what was kept: musubi's epoch checkpoints (and states) stay, resumable with --save-state."""
    kept, resumable = [], []
    for i in (i for _, idx in plan.chains for i in idx):  # this node's runs: another node records its own
        run = plan.runs[i]
        if i not in started:
            if run.record:
                _record(run, request, "not started", datasets[i], extra)
            continue
        if run.record:
            _record(run, request, "interrupted", datasets[i], {**extra, "interrupted_at": time.time()})
        first = run.final_lora.parent  # the first run's folder: its resume folders are read from there
        status = resume_status(first, run.output_name)
        if status.started and first not in kept:
            kept.append(first)
        if status.latest is not None and first not in resumable:
            resumable.append(first)
    if not kept:
        exc.kept = "no epoch was saved yet, so there is nothing to resume; the same command starts over"
        return
    where = ", ".join(str(d) for d in kept)
    if (request.save_state or request.resume) and not resumable:
        exc.kept = (f"the epoch checkpoints so far are kept in {where}, but no saved state is complete yet, so "
                    "--resume has nothing to continue from; the same command starts over (moving them aside)")
    elif request.save_state or request.resume:
        exc.kept = (f"the epoch checkpoints and saved states so far are kept in {where}; the same `circle-rotate "
                    "train` command with --resume continues from the last complete one")
    else:
        exc.kept = (f"the epoch checkpoints so far are kept in {where} (no --save-state: they cannot be resumed; "
                    "a new run moves them aside and starts over)")


def _dataset_identity(run: TrainRun) -> Dict[str, object]:
    from circle_rotate.musubi.cache_plan import plan_cache
    from circle_rotate.musubi.run_record import dataset_hash

    config = option_values(run.command.args).get("--dataset_config", [""])[0]
    try:
        plan = plan_cache(Path(config))
    except UserError:
        return {"config": config}
    return {"config": str(Path(config).absolute()), "clips": len(plan.items), "manifest_sha256": dataset_hash(plan)}


def train(request: TrainRequest, *, dry_run: bool, echo: Callable[[str], None] = print,
          transform: Optional[Callable[[MusubiCommand], MusubiCommand]] = None,
          record_extra: Optional[Dict[str, object]] = None) -> TrainResult:
    """Plan, preflight, print; then (unless ``dry_run``) run and record.

    Raises:
        UserError: a preflight error (all problems are echoed first), or a run failed.
    """
    plan = plan_training(request, transform=transform, for_run=not dry_run)
    here = [plan.runs[i] for _, idx in plan.chains for i in idx]
    # a dry run checks every node's inputs (each expert once); a run, what this node runs
    checked = plan.runs if dry_run or not here else here
    first: Dict[str, TrainRun] = {}
    for r in checked:
        first.setdefault(r.expert, r)
    targets = [TrainTarget(r.expert, r.command) for r in first.values()]
    report = preflight(targets, for_run=not dry_run, force=request.force, resume=request.resume)
    if plan.problems or plan.notes:
        report = replace(report, problems=tuple(plan.problems) + report.problems, notes=plan.notes + report.notes)
    for p in report.problems:
        echo(p.one_line())
    for note in report.notes:
        echo(note)
    if plan.lines:
        for line in plan.lines:
            echo(line)
    else:
        for label, indices in plan.chains:
            for i in indices:
                echo(f"[{label}] {plan.runs[i].command.shell()}" if len(plan.chains) > 1
                     else plan.runs[i].command.shell())
    report.raise_for_errors()
    if dry_run or not plan.runs:
        return TrainResult(plan, report)
    for run in here:
        for path, text in run.accelerate_config:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, text)
    for run in here:
        # a fresh run over an earlier run's files: move them aside so --resume never picks them up
        moved = move_aside(run.output_dir, run.output_name) if run.record and run.resumed_from is None else None
        if moved:
            echo(f"{run.expert}: moved the earlier run's {moved[1]} file(s)/folder(s) to {moved[0]} (--resume ignores "
                 "them; delete that folder to free its space)")
    extra = {"preflight_warnings": [p.one_line() for p in report.problems], "started_at": time.time(),
             **(record_extra or {})}
    datasets = {i: _dataset_identity(r) for i, r in enumerate(plan.runs)}
    position = {i: (label, k) for label, idx in plan.chains for k, i in enumerate(idx)}
    for i, r in enumerate(plan.runs):
        if r.record:  # a second expert queued behind the first on one GPU waits
            _record(r, request, "waiting" if position.get(i, ("", 0))[1] > 0 else "running", datasets[i], extra)
    started = set()
    lock = threading.Lock()

    def on_start(label: str, k: int) -> None:
        i = dict(plan.chains)[label][k]
        with lock:
            started.add(i)
        if k > 0 and plan.runs[i].record:
            _record(plan.runs[i], request, "running", datasets[i], {**extra, "started_at": time.time()})

    try:
        results = run_chains({label: [plan.runs[i].command for i in idx] for label, idx in plan.chains},
                             on_start=on_start)
    except KeyboardInterrupt as exc:
        try:
            _interrupted(plan, request, started, datasets, extra, exc)
        except OSError:  # a record that cannot be written (full disk) must not hide the interrupt
            pass
        raise
    records, failed = [], []
    for (label, idx), result in zip(plan.chains, results):
        for k, i in enumerate(idx):
            codes = result.returncodes
            status = "not started" if k >= len(codes) else ("finished" if codes[k] == 0 else "failed")
            if not plan.runs[i].record:
                if status == "failed":
                    failed.append((label, codes[k], plan.runs[i].output_dir / "run.json"))
                continue
            done = {**extra, "finished_at": time.time()}
            if status == "finished":
                done["final_lora"] = str(_final_in_place(plan.runs[i]))
                echo(f"{plan.runs[i].expert}: final LoRA {done['final_lora']}")
            path = _record(plan.runs[i], request, status, datasets[i], done)
            records.append(path)
            if status == "finished" and plan.runs[i].resumed_from is not None:
                records.append(_finish_first_record(plan.runs[i], Path(done["final_lora"]), done["finished_at"]))
            if status == "failed":
                failed.append((label, codes[k], path))
    if failed:
        label, code, path = failed[0]
        raise UserError(f"training failed on {label} (exit {code})", path=path.parent,
                        fix="read the output above; with --save-state, `--resume` continues from the last epoch")
    return TrainResult(plan, report, tuple(results), tuple(records))
