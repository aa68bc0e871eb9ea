"""Run musubi-tuner commands as child processes, streaming their output.

A *chain* is a list of commands run one after the other on one device (stopping at the
first failure); several chains run side by side, one per GPU, their output lines prefixed
with the chain's label. A single chain inherits the terminal, so musubi's own progress bars
draw as usual. Ctrl-C stops every child.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, TextIO

from circle_rotate.musubi.recipe_reader import MusubiCommand


@dataclass(frozen=True)
class ChainResult:
    label: str
    returncodes: tuple  # one per command started
    failed_command: Optional[MusubiCommand] = None

    @property
    def ok(self) -> bool:
        return self.failed_command is None


def _env(command: MusubiCommand, extra: Optional[Mapping[str, str]]) -> dict:
    return {**os.environ, **(extra or {}), **command.env_dict}


def _pump(stream, label: str, out: TextIO, lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        # tqdm redraws with \r: keep only the last state of the line
        text = raw.decode("utf-8", "replace").rstrip("\n").split("\r")[-1]
        with lock:
            out.write(f"[{label}] {text}\n")
            out.flush()


def _run_chain(label: str, commands: Sequence[MusubiCommand], *, prefix: bool, env: Optional[Mapping[str, str]],
               out: TextIO, lock: threading.Lock, procs: list) -> ChainResult:
    codes = []
    for command in commands:
        with lock:
            out.write(f"[{label}] $ {command.shell()}\n" if prefix else f"$ {command.shell()}\n")
            out.flush()
        kwargs = dict(env=_env(command, env), cwd=command.cwd or None)
        if prefix:
            kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            proc = subprocess.Popen(command.argv, **kwargs)
        except OSError as exc:  # the launcher itself is missing (accelerate not installed, ...)
            with lock:
                out.write(f"[{label}] cannot start {command.argv[0]}: {exc}\n")
            return ChainResult(label, (*codes, 127), command)
        procs.append(proc)
        if prefix:
            _pump(proc.stdout, label, out, lock)
        code = proc.wait()
        codes.append(code)
        if code != 0:
            return ChainResult(label, tuple(codes), command)
    return ChainResult(label, tuple(codes))


def run_chains(chains: Mapping[str, Sequence[MusubiCommand]], *, env: Optional[Mapping[str, str]] = None,
               out: Optional[TextIO] = None) -> List[ChainResult]:
    """Run each chain's commands in order; several chains run concurrently.

    Args:
        chains: label -> commands (labels name the device, e.g. ``gpu0``).
        env: extra environment for every command (each command's own ``env`` wins).
        out: where prefixed output goes when several chains run (default: ``sys.stdout``).

    Returns:
        One result per chain, in the order given.
    """
    out = out or sys.stdout
    lock = threading.Lock()
    procs: list = []
    labels = list(chains)
    prefix = len(labels) > 1
    results: List[Optional[ChainResult]] = [None] * len(labels)

    def work(i: int) -> None:
        results[i] = _run_chain(labels[i], chains[labels[i]], prefix=prefix, env=env, out=out, lock=lock, procs=procs)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(labels))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        raise
    # a chain whose thread died without a result (a bug) counts as failed at its first command
    return [r or ChainResult(labels[i], (-1,), chains[labels[i]][0]) for i, r in enumerate(results)]
