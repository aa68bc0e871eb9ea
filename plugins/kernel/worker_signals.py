"""How a worker process of a pool stops on Ctrl-C, SIGTERM or SIGHUP: quietly.

The terminal sends Ctrl-C (and ``timeout``/``docker stop`` their SIGTERM) to the whole process group,
so each worker gets it too. Python's default turns it into a KeyboardInterrupt wherever the worker
is, and ``multiprocessing`` prints that traceback: 15-40 lines before the command's own one-line
message. Raised as ``SystemExit`` instead, the signal still unwinds the worker's work (temporary
files are removed on the way out) and ends an idle worker without a word; the main process, which
got the same signal, says what happened.
"""

from __future__ import annotations

import signal


def _stop(signum, frame) -> None:
    raise SystemExit(128 + signum)


def quiet_stop() -> None:
    """A ``ProcessPoolExecutor`` initializer: stop signals end the worker with ``SystemExit``."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _stop)
