"""What ``train --resume`` can resume from: musubi-tuner's saved states, checked file by file.

musubi 0.3.4 saves a state with accelerate's ``Accelerator.save_state`` (``utils/train_utils.py``,
on the main process only): ``<output_name>-<epoch:06d>-state/`` after every saved epoch but the
last, and ``<output_name>-state/`` at the end, followed by the final ``<output_name>.safetensors``
(``training/trainer_base.py``). accelerate writes the LoRA weights (musubi's save hook drops the
frozen DiT), then the optimizer, the scheduler, the fp16 grad scaler and last the RNG states
(``accelerate/checkpointing.py``: ``save_accelerator_state``), and ``load_state`` opens the first
three unconditionally. A folder cut short by a kill or a full disk lacks some of them, or holds one
truncated: resuming from it crashes, so it is passed over, never picked by its name alone.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

RESUME_DIR = "resume-from-epoch-{:06d}"
#: where a fresh run moves an earlier run's files (:func:`move_aside`); resume never looks inside
EARLIER_DIR = "earlier-run-{}"
_EPOCH_STATE = re.compile(r"^(?P<name>.+)-(?P<epoch>\d{6})-state$")
_EPOCH_FILE = re.compile(r"^(?P<name>.+)-\d{6}\.safetensors$")
_RESUME_DIR = re.compile(r"^resume-from-epoch-(?P<epoch>\d{6})$")

#: accelerate's names (accelerate/utils/constants.py) for the files ``load_state`` needs from rank 0.
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
REQUIRED = ("optimizer.bin", "scheduler.bin", "random_states_0.pkl")


@dataclass(frozen=True)
class SavedState:
    """One ``<name>-<epoch>-state`` folder; ``epoch`` counts from the first run (resumed runs' offsets added)."""

    epoch: int
    path: Path
    faults: Tuple[str, ...] = ()  # what is missing or cut short; () = complete

    @property
    def complete(self) -> bool:
        return not self.faults


@dataclass(frozen=True)
class ResumeStatus:
    """Where an expert's training stands, from what its output folder holds."""

    output_dir: Path
    name: str
    latest: Optional[SavedState]  # the newest complete state
    passed_over: Tuple[SavedState, ...]  # incomplete states newer than ``latest``
    finished: Optional[Path]  # the final LoRA, when written after every epoch checkpoint and state
    started: bool  # anything of a run there: a state, an epoch checkpoint or the final LoRA
    last_state: Optional[Path] = None  # a complete end-of-training <name>-state (musubi writes it just before the LoRA)

    def passed_over_line(self) -> Optional[str]:
        if not self.passed_over:
            return None
        return "passed over incomplete state(s): " + "; ".join(f"{s.path} ({', '.join(s.faults)})"
                                                              for s in self.passed_over)


def _torch_file_fault(path: Path) -> Optional[str]:
    # torch.save writes a zip archive whose central directory comes last: a cut-short file has none
    return None if zipfile.is_zipfile(path) else f"{path.name} cut short"


def _safetensors_fault(path: Path) -> Optional[str]:
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
    except (OSError, struct.error, ValueError):
        return f"{path.name} unreadable"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return None if path.stat().st_size >= 8 + size + end else f"{path.name} cut short"


def state_faults(folder: Path) -> Tuple[str, ...]:
    """What keeps ``folder`` from being a state accelerate can load: missing or truncated files, in order."""
    faults: List[str] = []
    weights = [folder / name for name in WEIGHTS if (folder / name).is_file()]
    if not weights:
        faults.append("no LoRA weights (model.safetensors)")
    else:
        w = weights[0]
        fault = _safetensors_fault(w) if w.suffix == ".safetensors" else _torch_file_fault(w)
        faults += [fault] if fault else []
    for name in REQUIRED:
        path = folder / name
        if not path.is_file():
            faults.append(f"no {name}")
        elif _torch_file_fault(path):
            faults.append(f"{name} cut short")
    return tuple(faults)


def saved_states(output_dir: Path, name: str, offset: int = 0) -> List[SavedState]:
    """Every epoch state of ``name`` under ``output_dir``, resumed runs' sub-folders included, oldest first."""
    found: List[SavedState] = []
    if not output_dir.is_dir():
        return found
    for entry in output_dir.iterdir():
        m = _EPOCH_STATE.match(entry.name)
        if entry.is_dir() and m and m.group("name") == name:
            found.append(SavedState(offset + int(m.group("epoch")), entry, state_faults(entry)))
        r = _RESUME_DIR.match(entry.name)
        if entry.is_dir() and r and offset == 0:  # resumes always go into the first run's folder
            found += saved_states(entry, name, int(r.group("epoch")))
    return sorted(found, key=lambda s: (s.epoch, str(s.path)))


def _run_folders(output_dir: Path) -> List[Path]:
    subs = [p for p in output_dir.iterdir() if p.is_dir() and _RESUME_DIR.match(p.name)] if output_dir.is_dir() else []
    return [output_dir, *subs]


def _newest_mtime(paths: List[Path]) -> float:
    times = [0.0]
    for p in paths:
        times += [f.stat().st_mtime for f in (p.iterdir() if p.is_dir() else [p]) if f.is_file()]
    return max(times)


def resume_status(output_dir: Path, name: str) -> ResumeStatus:
    """The newest complete state of ``name``, the incomplete ones after it, and whether training finished.

    Finished means a final ``<name>.safetensors`` (in the folder or a ``resume-from-epoch-*`` one)
    at least as new as every epoch checkpoint and state: musubi writes it last, and a later run
    (``--force``) that was interrupted leaves newer checkpoints behind an old one.
    """
    states = saved_states(output_dir, name)
    complete = [s for s in states if s.complete]
    latest = complete[-1] if complete else None
    passed = tuple(s for s in states if not s.complete and (latest is None or s.epoch > latest.epoch))
    folders = _run_folders(output_dir)
    finals = [f / f"{name}.safetensors" for f in folders if (f / f"{name}.safetensors").is_file()]
    epochs = [p for f in folders for p in f.iterdir()
              if _EPOCH_FILE.match(p.name) and _EPOCH_FILE.match(p.name).group("name") == name] if finals else []
    finished = None
    if finals:
        newest = max(finals, key=lambda p: p.stat().st_mtime)
        if newest.stat().st_mtime >= _newest_mtime(epochs + [s.path for s in states]):
            finished = newest
    started = bool(states or finals) or any(_EPOCH_FILE.match(p.name) and p.name.startswith(f"{name}-")
                                            for f in folders if f.is_dir() for p in f.iterdir())
    last = [f / f"{name}-state" for f in folders if (f / f"{name}-state").is_dir() and not state_faults(f / f"{name}-state")]
    return ResumeStatus(output_dir, name, latest, passed, finished, started or bool(last), last[-1] if last else None)


def _musubi_save(name: str) -> "re.Pattern[str]":
    """The names musubi gives ``name``'s epoch and step saves and their states."""
    return re.compile(rf"^{re.escape(name)}-(?:\d{{6}}|step\d{{8}})(?:\.safetensors|-state)$")


def _earlier_run_files(output_dir: Path, name: str) -> List[Path]:
    """What an earlier run of ``name`` left in ``output_dir``: its LoRAs (final, epoch and step ones),
    states, resume folders and run.json; nothing else (samples, the user's own files) is touched."""
    if not output_dir.is_dir():
        return []
    found = []
    for entry in output_dir.iterdir():
        n = entry.name
        # musubi's own names only (train_utils: <name>-<epoch:06d>, <name>-step<step:08d>, each with -state):
        # another expert's files named <name>-low... or a user's <name>-best.safetensors are not the earlier run
        if n in (f"{name}.safetensors", f"{name}-state", "run.json") or _RESUME_DIR.match(n) or _musubi_save(name).match(n):
            found.append(entry)
    return sorted(found)


def move_aside(output_dir: Path, name: str) -> Optional[Tuple[Path, int]]:
    """Move an earlier run's files (:func:`_earlier_run_files`) into ``output_dir/earlier-run-<date>/``
    before a fresh run starts there; (that folder, how many entries) or None when there was nothing.

    Without this a fresh (or ``--force``) run overwrote the earlier run's files only up to the epoch it
    reached, and a later ``--resume`` picked the earlier run's newer states by their epoch numbers.
    Moving them is explicit where file times are not, and never deletes the user's files. A lone
    run.json (an expert recorded but never started) is left to be overwritten."""
    files = _earlier_run_files(output_dir, name)
    if not files or [f.name for f in files] == ["run.json"]:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = output_dir / EARLIER_DIR.format(stamp), 1
    while target.exists():  # two fresh runs within a second
        n += 1
        target = output_dir / EARLIER_DIR.format(f"{stamp}-{n}")
    target.mkdir()
    for f in files:
        os.replace(f, target / f.name)  # same folder's file system: a rename each, nothing copied
    return target, len(files)
