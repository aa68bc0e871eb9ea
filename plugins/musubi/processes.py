"""Run musubi-tuner commands as child processes, streaming their output.

A *chain* is a list of commands run one after the other on one device (stopping at the
first failure); several chains run side by side, one per GPU, their output lines prefixed
with the chain's label. A single chain inherits the terminal, so musubi's own progress bars
draw as usual. Ctrl-C (or SIGTERM/SIGHUP, raised as an interrupt by the CLI) stops every child and
everything it started: each command runs in its own session (process group), and the whole group is
signalled, because ``accelerate launch`` with one process only ``Popen``s the trainer and waits, forwarding
no signal: stopping the launcher alone would leave the trainer running, reparented to init.
Ctrl-\\ (SIGQUIT) is an interrupt too (the CLI raises it as one), and Ctrl-Z stops the groups with
this process and ``fg``/``bg`` resumes them (:func:`_job_control`), as when they shared the terminal's group.
SIGKILL cannot be forwarded: ``kill -9`` of circle-rotate, or of its process group (which the
commands are no longer in), leaves them running; their own group is the launcher's pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence, TextIO

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


#: seconds a stopped command's process group gets after SIGINT (musubi's Ctrl-C), then after SIGTERM, before SIGKILL
STOP_GRACE = (10.0, 5.0)
_NEW_GROUP = os.name == "posix"  # elsewhere the child shares our console and gets Ctrl-C itself


def _group_members(pgid: int) -> Optional[int]:
    """Live (not zombie) processes in group ``pgid``, from Linux's /proc; None where /proc cannot tell.

    A zombie still answers ``killpg(pgid, 0)``: a grandchild reparented to an init that is slow to
    reap (a container's) would look alive forever."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").is_file():
        return None
    count = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        if fields[0] != "Z" and int(fields[2]) == pgid:
            count += 1
    return count


def _group_alive(pgid: int) -> bool:
    members = _group_members(pgid)
    if members is not None:
        return members > 0
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(proc: subprocess.Popen) -> None:
    """Stop ``proc`` and every process in its group: SIGINT, then SIGTERM, then SIGKILL, each after
    :data:`STOP_GRACE`; returns once none is left (or SIGKILL was sent and a last grace passed)."""
    if not _NEW_GROUP:
        if proc.poll() is None:
            proc.terminate()
        return
    pgid = proc.pid  # start_new_session: the child leads its own group
    steps = [(signal.SIGINT, STOP_GRACE[0]), (signal.SIGTERM, STOP_GRACE[1]), (signal.SIGKILL, STOP_GRACE[1])]
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # started ignoring SIGINT (a script's `cmd &`), our children inherited that: SIGINT would only wait
        steps = steps[1:]
    for sig, grace in steps:
        proc.poll()  # reap our own child, or its zombie keeps the group "alive"
        if not _group_alive(pgid):
            return
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()
            if not _group_alive(pgid):
                return
            time.sleep(0.05)


def _pump(stream, label: str, out: TextIO, lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        # tqdm redraws with \r: keep only the last state of the line
        text = raw.decode("utf-8", "replace").rstrip("\n").split("\r")[-1]
        with lock:
            out.write(f"[{label}] {text}\n")
            out.flush()


def _run_chain(label: str, commands: Sequence[MusubiCommand], *, prefix: bool, env: Optional[Mapping[str, str]],
               out: TextIO, lock: threading.Lock, procs: list, stopping: threading.Event,
               on_start: Optional[Callable[[str, int], None]] = None) -> ChainResult:
    codes = []
    for k, command in enumerate(commands):
        with lock:
            if stopping.is_set():  # interrupted between two commands: start no more
                return ChainResult(label, tuple(codes), command)
            out.write(f"[{label}] $ {command.shell()}\n" if prefix else f"$ {command.shell()}\n")
            out.flush()
        kwargs = dict(env=_env(command, env), cwd=command.cwd or None, start_new_session=_NEW_GROUP)
        if prefix:
            kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        with lock:  # under the lock: an interrupt either sees this child in procs or stops it from starting
            if stopping.is_set():
                return ChainResult(label, tuple(codes), command)
            try:
                proc = subprocess.Popen(command.argv, **kwargs)
            except OSError as exc:  # the launcher itself is missing (accelerate not installed, ...)
                out.write(f"[{label}] cannot start {command.argv[0]}: {exc}\n")
                return ChainResult(label, (*codes, 127), command)
            procs.append(proc)
        if on_start is not None:
            on_start(label, k)
        if prefix:
            _pump(proc.stdout, label, out, lock)
        code = proc.wait()
        codes.append(code)
        if code != 0:
            return ChainResult(label, tuple(codes), command)
    return ChainResult(label, tuple(codes))


@contextlib.contextmanager
def _job_control(procs: list, lock: threading.Lock):
    """Ctrl-Z (SIGTSTP) stops the commands' process groups with this process, and ``fg``/``bg``
    (SIGCONT) resumes them: in their own sessions they are no longer in the terminal's foreground
    group, so the terminal's Ctrl-Z reaches this process alone and would leave training running on
    the GPU behind a shell prompt. Main thread, POSIX, and only where SIGTSTP is not ignored."""
    tstp = getattr(signal, "SIGTSTP", None)
    if (not _NEW_GROUP or tstp is None or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(tstp) is signal.SIG_IGN):
        yield
        return

    def on_stop(signum, frame):
        with lock:
            groups = [p.pid for p in procs if p.poll() is None]
        for g in groups:
            with contextlib.suppress(OSError):
                os.killpg(g, signal.SIGSTOP)
        # SIGSTOP, not SIGTSTP again: a stop signal's default action is dropped in an orphaned process group
        os.kill(os.getpid(), signal.SIGSTOP)  # stopped here until SIGCONT (fg/bg)
        for g in groups:
            with contextlib.suppress(OSError):
                os.killpg(g, signal.SIGCONT)

    old = signal.signal(tstp, on_stop)
    try:
        yield
    finally:
        signal.signal(tstp, old)


def run_chains(chains: Mapping[str, Sequence[MusubiCommand]], *, env: Optional[Mapping[str, str]] = None,
               out: Optional[TextIO] = None,
               on_start: Optional[Callable[[str, int], None]] = None) -> List[ChainResult]:
    """Run each chain's commands in order; several chains run concurrently.

    Args:
        chains: label -> commands (labels name the device, e.g. ``gpu0``).
        env: extra environment for every command (each command's own ``env`` wins).
        out: where prefixed output goes when several chains run (default: ``sys.stdout``).
        on_start: called with (label, index in the chain) just before each command starts (from the
            chain's thread), so a caller can tell a command that started from one that never did.

    Returns:
        One result per chain, in the order given.
    """
    out = out or sys.stdout
    lock = threading.Lock()
    procs: list = []
    stopping = threading.Event()
    labels = list(chains)
    prefix = len(labels) > 1
    results: List[Optional[ChainResult]] = [None] * len(labels)

    def work(i: int) -> None:
        results[i] = _run_chain(labels[i], chains[labels[i]], prefix=prefix, env=env, out=out, lock=lock, procs=procs,
                                 stopping=stopping, on_start=on_start)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(labels))]
    try:
        with _job_control(procs, lock):
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
    except KeyboardInterrupt:
        with lock:
            stopping.set()
            started = list(procs)
        # every group at once (SIGINT to all, then wait), so two GPUs' trainers stop side by side
        stoppers = [threading.Thread(target=stop_group, args=(p,), daemon=True) for p in started]
        for t in stoppers:
            t.start()
        try:
            for t in stoppers:
                t.join()
        except KeyboardInterrupt:  # a second Ctrl-C: no more grace, but still leave nothing running
            for p in started:
                with contextlib.suppress(OSError):
                    os.killpg(p.pid, signal.SIGKILL) if _NEW_GROUP else p.kill()
            raise
        raise
    # a chain whose thread died without a result (a bug) counts as failed at its first command
    return [r or ChainResult(labels[i], (-1,), chains[labels[i]][0]) for i, r in enumerate(results)]
