"""How a worker process of a pool stops on Ctrl-C, SIGTERM or SIGHUP: quietly.

The terminal sends Ctrl-C (and ``timeout``/``docker stop`` their SIGTERM) to the whole process group,
so each worker gets it too. Python's default turns it into a KeyboardInterrupt wherever the worker
is, and ``multiprocessing`` prints that traceback: 15-40 lines before the command's own one-line
message. Raised as ``SystemExit`` instead, the signal still unwinds the worker's work (temporary
files are removed on the way out) and ends an idle worker without a word; the main process, which
got the same signal, says what happened.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time


#: Seconds a stopped worker has to unwind its job before it ends for certain.
UNWIND_S = 5.0
#: The same once its parent has died (killed outright): nothing waits for the job's result, and
#: the worker's one cleanup, removing a half-written clip, takes milliseconds.
ORPHAN_UNWIND_S = 0.5


_stopping = False
_parent = None  # the pool's process, as the worker started
#: The signal the kernel sends a worker when its parent dies (Linux's PR_SET_PDEATHSIG): one of its
#: own, as ``getppid()`` still names the dying parent when a SIGTERM would arrive.
PARENT_DIED = getattr(signal, "SIGUSR2", None)


def _stop(signum, frame) -> None:
    global _stopping
    if _stopping:  # unwinding already: a second signal (the group's, then the parent's) would cut a
        return  # finally block short, and print its traceback
    _stopping = True
    # ``concurrent.futures`` catches the SystemExit of a job and sends it back as its result, and
    # the worker then waits for its next job: for ever, if its parent was killed. So once the job
    # has unwound (its temporary files removed on the way), the process ends.
    orphaned = signum == PARENT_DIED or (_parent is not None and os.getppid() != _parent)
    code = 128 + (signal.SIGTERM if signum == PARENT_DIED else signum)
    timer = threading.Timer(ORPHAN_UNWIND_S if orphaned else UNWIND_S, os._exit, args=(code,))
    timer.daemon = True
    timer.start()
    raise SystemExit(code)


def quiet_stop() -> None:
    """A ``ProcessPoolExecutor`` initializer: stop signals end the worker with ``SystemExit``, and
    so does its parent's death (Linux), which would otherwise leave it idle for ever."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        # one the parent was started ignoring (nohup) stays ignored
        if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) is not signal.SIG_IGN:
            signal.signal(getattr(signal, name), _stop)
    _die_with_parent()


def _die_with_parent() -> None:
    """Have the kernel send :data:`PARENT_DIED` when the parent dies (killed outright, it cannot stop
    its workers): the job unwinds and the worker ends within :data:`ORPHAN_UNWIND_S`, rather than
    taking the next job already queued and writing clips no manifest will list."""
    global _parent
    _parent = parent = os.getppid()
    if not sys.platform.startswith("linux"):
        return
    signal.signal(PARENT_DIED, _stop)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(PARENT_DIED))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the request took
        raise SystemExit(128 + signal.SIGTERM)


def stop_workers(pool, grace: float = 10.0) -> None:
    """Shut a ``ProcessPoolExecutor`` down now, after Ctrl-C or an error in the main process:
    queued work cancelled, running workers sent SIGTERM (which :func:`quiet_stop` turns into an
    unwinding ``SystemExit``: their temporary files go), and killed if still alive after
    ``grace`` seconds. ``shutdown(wait=True)`` instead waits for every running job, and forever
    for a worker spawned after the signal reached the process group, which never got it."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(1.0)
