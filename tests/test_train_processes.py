"""Stopping training: SIGTERM/Ctrl-C to circle-rotate alone stops the trainer its launcher started.

``accelerate launch`` with one process Popens the trainer and waits, forwarding no signal: stopping
the launcher alone left the trainer running (reparented to init), still writing states. These tests
build that real process tree: a launcher that starts a grandchild and waits on it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file() or os.name != "posix",
                                reason="process groups and Linux's /proc")

# The launcher: like accelerate's simple_launcher, starts the trainer and waits on it; the
# trainer writes its pid and a heartbeat, and (with "stubborn") ignores SIGINT and SIGTERM too.
_LAUNCHER = r"""
import subprocess, sys
trainer = r'''
import os, signal, sys, time
from pathlib import Path
root = Path(sys.argv[1])
if sys.argv[2] == "stubborn":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
(root / "trainer.pid").write_text(str(os.getpid()))
n = 0
while True:
    n += 1
    (root / "beat").write_text(str(n))
    time.sleep(0.05)
'''
subprocess.Popen([sys.executable, "-c", trainer, *sys.argv[1:]]).wait()
"""

# circle-rotate's side: run_chains under the CLI's SIGTERM-as-interrupt, as `circle-rotate train` runs it.
_DRIVER = r"""
import sys
from circle_rotate.cli.main import _terminate_as_interrupt
from circle_rotate.musubi import processes
from circle_rotate.musubi.recipe_reader import MusubiCommand
processes.STOP_GRACE = (float(sys.argv[3]), float(sys.argv[3]))
chains = {f"gpu{i}": [MusubiCommand("launcher.py", (), launcher=(sys.executable, "-c", sys.argv[1], sys.argv[i + 4],
                                                                sys.argv[2]))]
          for i in range(len(sys.argv) - 4)}
try:
    with _terminate_as_interrupt():
        processes.run_chains(chains)
except KeyboardInterrupt:
    print("stopped", flush=True)
    sys.exit(130)
"""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _stop_and_check(tmp_path: Path, mode: str, sig: int, *, roots=1, grace: float = 2.0) -> float:
    folders = [tmp_path / f"chain{i}" for i in range(roots)]
    for f in folders:
        f.mkdir()
    log = tmp_path / "driver.log"  # a file, not a pipe: a surviving trainer would hold a pipe open
    with open(log, "wb") as fh:
        driver = subprocess.Popen([sys.executable, "-c", _DRIVER, _LAUNCHER, mode, str(grace), *map(str, folders)],
                                  stdout=fh, stderr=subprocess.STDOUT)
    pids = []
    try:
        for f in folders:
            _wait_for(f / "trainer.pid")
            _wait_for(f / "beat")
            pids.append(int((f / "trainer.pid").read_text()))
        started = time.monotonic()
        driver.send_signal(sig)  # to circle-rotate's pid alone, as `kill PID` does
        driver.wait(timeout=60)
        out = log.read_text()
        took = time.monotonic() - started
        assert driver.returncode == 130 and "stopped" in out, out
        for pid in pids:
            assert not _alive(pid), "the trainer outlived circle-rotate"
        beats = [(f / "beat").read_text() for f in folders]
        time.sleep(0.3)
        assert beats == [(f / "beat").read_text() for f in folders], "something still writes"
        return took
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if driver.poll() is None:
            driver.kill()


def test_sigterm_to_circle_rotate_stops_the_trainer_its_launcher_started(tmp_path):
    _stop_and_check(tmp_path, "plain", signal.SIGTERM)


def test_sigquit_to_circle_rotate_stops_the_trainer_too(tmp_path):
    """Ctrl-\\ reaches circle-rotate alone (the trainer has its own group). Failed before: Python's default
    SIGQUIT ended circle-rotate at once and left the trainer running, orphaned."""
    _stop_and_check(tmp_path, "plain", signal.SIGQUIT)


def test_sigint_to_circle_rotate_alone_stops_every_chains_trainer(tmp_path):
    _stop_and_check(tmp_path, "plain", signal.SIGINT, roots=2)


def test_a_trainer_that_ignores_sigint_and_sigterm_is_killed_after_the_grace(tmp_path):
    took = _stop_and_check(tmp_path, "stubborn", signal.SIGTERM, grace=0.5)
    assert took >= 1.0  # SIGINT's grace, then SIGTERM's, then SIGKILL


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_ctrl_z_stops_the_trainer_with_circle_rotate_and_fg_resumes_both(tmp_path):
    """In its own process group the trainer does not get the terminal's Ctrl-Z: failed before, training went on
    on the GPU behind the shell's prompt ("Stopped"), and fg/bg reached circle-rotate alone."""
    folder = tmp_path / "chain0"
    folder.mkdir()
    with open(tmp_path / "driver.log", "wb") as fh:
        driver = subprocess.Popen([sys.executable, "-c", _DRIVER, _LAUNCHER, "plain", "2.0", str(folder)],
                                  stdout=fh, stderr=subprocess.STDOUT)
    pid = None
    try:
        _wait_for(folder / "trainer.pid")
        _wait_for(folder / "beat")
        pid = int((folder / "trainer.pid").read_text())
        driver.send_signal(signal.SIGTSTP)  # what the terminal sends circle-rotate on Ctrl-Z
        deadline = time.monotonic() + 10
        while not (_state(pid) == "T" and _state(driver.pid) == "T"):
            assert time.monotonic() < deadline, (_state(pid), _state(driver.pid))
            time.sleep(0.05)
        beat = (folder / "beat").read_text()
        time.sleep(0.3)
        assert (folder / "beat").read_text() == beat, "the trainer still trains"
        driver.send_signal(signal.SIGCONT)  # fg
        deadline = time.monotonic() + 10
        while (folder / "beat").read_text() == beat:
            assert time.monotonic() < deadline, "the trainer was not resumed"
            time.sleep(0.05)
        driver.send_signal(signal.SIGTERM)
        driver.wait(timeout=60)
        assert driver.returncode == 130 and not _alive(pid)
    finally:
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)
        if driver.poll() is None:
            driver.kill()

