"""``circle-rotate <command>``: the one entry point.

Every module in this package that defines ``add_parser(subparsers)`` and ``run(args) -> int``
is a command; ``ORDER`` (an int, default 100) sorts them in ``--help``. The CLI layer only
parses and prints: each ``run`` builds typed values and calls one library function.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import importlib
import logging
import os
import pkgutil
import signal
import sys
import threading
from types import ModuleType
from typing import Iterator, List, Optional, Sequence

import circle_rotate
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.progress import set_quiet

EPILOG = """examples:
  circle-rotate doctor                 what this machine can do
  circle-rotate <command> --help       options of one command
"""


def command_modules() -> List[ModuleType]:
    """The command modules of ``circle_rotate.cli``, in help order."""
    import circle_rotate.cli as pkg

    mods = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_") or info.name == "main":
            continue
        mod = importlib.import_module(f"circle_rotate.cli.{info.name}")
        if hasattr(mod, "add_parser") and hasattr(mod, "run"):
            mods.append(mod)
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.__name__))


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes as one line (the command, the message, where to look), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="circle-rotate",
        description="Train, merge and evaluate camera-orbit (turntable) LoRAs for Wan2.2 I2V-A14B with musubi-tuner.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"circle-rotate {circle_rotate.__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or step messages")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for mod in command_modules():
        mod.add_parser(sub)
    return parser


def with_default_action(parser: argparse.ArgumentParser, argv: Sequence[str]) -> List[str]:
    """``eval PATH`` means ``eval run PATH``: a command whose parser names a ``default_action``
    gets it inserted when no action of its own follows the command name."""
    argv = list(argv)
    commands = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
    at = next((i for i, word in enumerate(argv) if not word.startswith("-")), None)
    if at is None or argv[at] not in commands:
        return argv
    command = commands[argv[at]]
    default = getattr(command, "default_action", None)
    actions = next((a.choices for a in command._actions if isinstance(a, argparse._SubParsersAction)), {})
    following = argv[at + 1] if at + 1 < len(argv) else None
    if default and following not in actions and following not in ("-h", "--help"):
        argv.insert(at + 1, default)
    return argv


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``timeout``, ``docker stop``, a closed terminal), raised where Ctrl-C would
    be, so that every temporary file a command is writing is removed on the way out."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_SIGNAL_WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)"}
if hasattr(signal, "SIGHUP"):
    _SIGNAL_WORDS[signal.SIGHUP] = "terminal closed (SIGHUP)"
if hasattr(signal, "SIGQUIT"):
    _SIGNAL_WORDS[signal.SIGQUIT] = "quit (SIGQUIT)"


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM, SIGHUP and SIGQUIT raise :class:`Terminated` while a command runs (main thread only), unless
    the process was started ignoring them: ``nohup circle-rotate merge ... &`` must outlive its terminal.
    SIGQUIT (Ctrl-\\, pressed when Ctrl-C seems stuck) would otherwise end this process at once, leaving
    a trainer that runs in its own process group (musubi/processes.py) with no one to stop it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None),
                          getattr(signal, "SIGQUIT", None))
              if s is not None and signal.getsignal(s) is not signal.SIG_IGN]

    def handler(signum, frame):
        raise Terminated(signum)

    old = {s: signal.signal(s, handler) for s in wanted}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: Optional[Sequence[str]] = None) -> int:
    # Interpreter teardown garbage-collects every object alive at exit, which after torch's import
    # is ~170k of them (0.4 s measured): freezing them at exit skips that scan. Our outputs are
    # closed explicitly and atomically; nothing waits on a finalizer there. Once per process.
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    logging.disable(logging.NOTSET)  # undo an earlier in-process run's interrupt silencing
    parser = build_parser()
    args = parser.parse_args(with_default_action(parser, sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.DEBUG if args.verbose else (logging.WARNING if args.quiet else logging.INFO),
                        format="%(levelname)s %(name)s: %(message)s")
    set_quiet(args.quiet)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with _terminate_as_interrupt():
            return int(args.func(args) or 0)
    except UserError as exc:
        print(f"circle-rotate {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        logging.disable(logging.CRITICAL)  # library loggers (torch's INFO at teardown) would follow this last line
        kept = getattr(exc, "kept", None) or "no partial output was kept"  # a command that keeps finished work says so
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"circle-rotate {args.command}: {_SIGNAL_WORDS.get(signum, 'interrupted')}; {kept}", file=sys.stderr)
        return 128 + int(signum)
    except BrokenPipeError:  # output piped into `head` and closed early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # (after BrokenPipeError, one too) a full disk met outside circle_rotate.kernel.atomic
        from circle_rotate.kernel.write_checks import NO_SPACE, disk_full

        if exc.errno not in NO_SPACE:
            raise
        print(f"circle-rotate {args.command}: error: {disk_full(exc.filename or os.getcwd())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
