"""What ``train --resume`` does with each planned run: resume it, start it fresh, or leave it out.

Under ``--resume`` each :class:`~circle_rotate.musubi.train.TrainRun` carries the
:class:`~circle_rotate.musubi.train_state.ResumeStatus` of its output folder. A run with a complete
state continues from the newest one into ``resume-from-epoch-<E>/`` (musubi 0.3.4 restarts its epoch
count, so only the remaining epochs are asked for); an expert that finished is left out; one that
never started trains from epoch 1 when another expert has progress (``train both`` after one expert
was interrupted and the other never ran), or always with ``--resume-if-saved`` (there also when its
only saves were cut short: a job requeued after being preempted during epoch 1's save would
otherwise fail on every requeue; the fresh run moves the partial files aside). Anything else is
refused with the reason, so a run never silently restarts over its own checkpoints.

A resume keeps the first run's learning rate whatever its command says: accelerate's ``load_state``
restores the optimizer's param groups and the scheduler's base rates. So a resume whose learning
rate differs from the first run's ``run.json`` (another GPU count under ``--lr-rule``) is refused.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Protocol, Sequence, Tuple, TypeVar

from circle_rotate.kernel.errors import UserError
from circle_rotate.musubi.recipe_reader import MusubiCommand, edit_options, option_values
from circle_rotate.musubi.run_record import read_run_record
from circle_rotate.musubi.train_state import RESUME_DIR, ResumeStatus


class _Run(Protocol):
    """What this module reads of :class:`~circle_rotate.musubi.train.TrainRun` (a dataclass; train imports us)."""

    expert: str
    command: MusubiCommand
    output_dir: Path
    status: Optional[ResumeStatus]

    @property
    def final_lora(self) -> Path: ...


TrainRun = TypeVar("TrainRun", bound=_Run)


def _resumed(run: TrainRun, notes: List[str]) -> TrainRun:
    """``run`` continued from its newest complete state, into ``resume-from-epoch-<E>/``."""
    status = run.status
    state = status.latest
    total = option_values(run.command.args).get("--max_train_epochs")
    if not total:
        raise UserError("--resume works with epoch-based recipes (--max_train_epochs)",
                        path=run.command.source or None, fix="resume step-based runs by hand with musubi's --resume")
    remaining = int(total[0]) - state.epoch
    if remaining <= 0:
        raise UserError(f"the saved state is from epoch {state.epoch} of {total[0]}: training already finished",
                        path=state.path, fix="nothing to resume; drop --resume and pass --force to train again")
    _same_learning_rate(run)
    sub = run.output_dir / RESUME_DIR.format(state.epoch)
    args = edit_options(run.command.args, {"--resume": [str(state.path)], "--max_train_epochs": [str(remaining)],
                                           "--output_dir": [str(sub)]})
    resumed = replace(run, command=run.command.with_args(args), output_dir=sub, resumed_from=state.path,
                      epoch_offset=state.epoch)
    _note(notes, f"{run.expert}: resuming from epoch {state.epoch} of {total[0]} ({state.path}); epochs "
                 f"{state.epoch + 1}-{total[0]} go to {sub}, the final LoRA goes to {resumed.final_lora}")
    if status.passed_over_line():
        _note(notes, f"{run.expert}: {status.passed_over_line()}")
    return resumed


def _learning_rate(argv: Sequence[str]) -> Optional[float]:
    """``--learning_rate`` of a command line (run.json records the whole argv, launcher included)."""
    argv = [str(a) for a in argv]
    start = next((i for i, a in enumerate(argv) if a.startswith("--")), len(argv))
    try:
        values = option_values(argv[start:]).get("--learning_rate")
        return float(values[0]) if values else None
    except ValueError:
        return None


def _same_learning_rate(run: TrainRun) -> None:
    """Refuse a resume whose learning rate differs from the first run's: it would be printed and
    recorded but never used (accelerate's load_state restores the first run's rate)."""
    first = read_run_record(run.output_dir)
    if first is None:
        return  # no record of the first run (musubi run by hand): nothing to compare
    old, new = _learning_rate(first.get("command") or []), _learning_rate(run.command.args)
    if old is None or new is None or abs(old - new) <= 1e-12 * max(abs(old), abs(new)):
        return
    was = (first.get("batch_maths") or {}).get("global_batch")
    now = (dict(getattr(run, "details", ()) or ()).get("batch_maths") or {}).get("global_batch")
    batch = f" (global batch {was} then {now})" if was != now and None not in (was, now) else ""
    raise UserError(f"{run.expert}: the first run trained at learning rate {old:g}, this resume asks for {new:g}{batch}"
                    "; a resume keeps the saved optimizer's rate, so "
                    f"{new:g} would be recorded but never used", path=run.output_dir / "run.json",
                    fix=f"resume with the first run's GPUs and --lr-rule (learning rate {old:g}), or drop --resume "
                        f"and pass --force to train from scratch at {new:g}")


def _note(notes: List[str], line: str) -> None:
    if line not in notes:  # a data-parallel expert has one run per node
        notes.append(line)


def _no_state(status: ResumeStatus) -> UserError:
    if status.passed_over:
        return UserError(f"no complete saved state to resume from; {status.passed_over_line()}",
                         path=status.output_dir, fix="a save cut short by the interruption leaves such folders; drop "
                                                     "--resume and pass --force to train again from scratch")
    return UserError(f"no saved training state ({status.name}-<epoch>-state) to resume from", path=status.output_dir,
                     fix="the first run needs --save-state; without it training restarts from scratch")


def settle(runs: Sequence[TrainRun], *, optional: bool = False) -> Tuple[List[TrainRun], List[str]]:
    """Under ``--resume``: each run resumed from its newest complete state, left out when its expert
    already finished, or started fresh when it never started while another expert has progress
    (or always, when the resume is ``optional``)."""
    statuses = [r.status for r in runs if r.status is not None]
    if not statuses:
        return list(runs), []
    if all(s.finished for s in statuses) and optional:  # a requeued job whose experts all finished: nothing to do
        return [], list(dict.fromkeys(f"{r.expert}: training already finished ({r.status.finished}); nothing to run"
                                      for r in runs))
    if all(s.finished for s in statuses):
        raise UserError("training already finished: this is its final LoRA", path=statuses[0].finished,
                        fix="nothing to resume; drop --resume and pass --force to train again from scratch")
    progress = optional or any(s.finished or s.latest for s in statuses)
    kept: List[TrainRun] = []
    notes: List[str] = []
    for run in runs:
        s = run.status
        if s is None:
            kept.append(run)
        elif s.last_state is not None and not s.finished:
            # musubi saves <name>-state after the last epoch, then the LoRA: stopped between the two, every
            # epoch is trained and a resume would have none left to run
            raise UserError(f"{run.expert}: training ran every epoch but was stopped before it wrote its final LoRA; "
                            f"the trained weights are in {s.last_state / 'model.safetensors'}", path=s.last_state,
                            fix="use the last epoch checkpoint beside it, or drop --resume and pass --force to train "
                                "again")
        elif s.finished:
            _note(notes, f"{run.expert}: training already finished ({s.finished}); it is left out")
        elif s.latest is not None:
            kept.append(_resumed(run, notes))
        elif s.started and optional:
            # a requeued job preempted before its first complete save: failing would fail every requeue
            _note(notes, f"{run.expert}: no complete saved state in {s.output_dir}"
                         + (f" ({s.passed_over_line()})" if s.passed_over else "")
                         + "; --resume-if-saved: it trains from epoch 1, the partial files moved aside")
            kept.append(run)
        elif s.started or not progress:
            raise _no_state(s)
        else:
            _note(notes, f"{run.expert}: nothing saved in {s.output_dir} yet (it never started): it trains from "
                         "epoch 1, saving its state")
            kept.append(run)
    return kept, notes
