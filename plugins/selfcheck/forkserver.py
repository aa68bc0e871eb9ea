"""``python -m`` without the imports: run modules as forks of one process that imported them already.

On a CPU each musubi-tuner Wan script spends about 6 s importing torch, transformers,
diffusers and musubi before its ``main()`` starts (``python -X importtime``), more than the
tiny models' work in the smoke run. A fork server pays that once. Each run is still its own
process: a fork of the server that takes the caller's arguments, environment, working
directory and stdin/stdout/stderr, runs the module as ``python -m`` would, and exits with its
exit code.

The caller launches :func:`client_argv`, a small stdlib-only client (about 0.1 s to start),
exactly where it would launch ``python -m MODULE``, so :mod:`circle_rotate.musubi.processes` streams and
stops it like any child. The client hands its file descriptors to the server over a Unix
socket; the server forks, reports the child's pid and, when the child ends, its exit status.
If the client goes away (killed, Ctrl-C), the server terminates the child.

As with :mod:`multiprocessing`'s forkserver, the server stays single-threaded and its preload
only imports (no torch operation), so no thread pool (OpenMP) or held lock is copied into a
child. What a preloaded module read from the environment at import time comes from the
server's environment: start it with the environment the commands will have.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, NoReturn, Optional, Sequence, Tuple

_LEN = struct.Struct("<Q")
_POLL_S = 0.05  # how often the server reaps children; bounds the delay of reporting an exit
_STDIO = (0, 1, 2)


def supported() -> bool:
    """Linux only: macOS makes forking a process that loaded system frameworks unsafe (multiprocessing
    spawns there), and Windows has no fork."""
    return sys.platform.startswith("linux")


def client_argv(socket_path: Path, module: str) -> Tuple[str, ...]:
    """The launcher that runs ``module`` (with the arguments after it) in the server at ``socket_path``."""
    return (sys.executable, "-m", "circle_rotate.selfcheck.forkserver", str(socket_path), module)


# --- client -------------------------------------------------------------------------------

def _recv_line(sock: socket.socket, buffer: bytearray) -> Optional[dict]:
    while b"\n" not in buffer:
        chunk = sock.recv(4096)
        if not chunk:
            return None
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return json.loads(line)


def run_client(socket_path: str, argv: Sequence[str]) -> int:
    """Run ``python -m argv[0] argv[1:]`` in the server; return its exit code (128+N for signal N)."""
    payload = json.dumps({"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
    except OSError as exc:
        print(f"circle_rotate.selfcheck.forkserver: no server at {socket_path} ({exc})", file=sys.stderr)
        return 127
    message = _LEN.pack(len(payload)) + payload
    buffer = bytearray()
    try:
        sent = socket.send_fds(sock, [message], list(_STDIO))
        sock.sendall(message[sent:])
        started = _recv_line(sock, buffer)
        ended = _recv_line(sock, buffer) if started else None
    except KeyboardInterrupt:  # closing the socket makes the server stop the child
        return 130
    except ConnectionError:  # the server died (its imports failed, say: its output says why)
        ended = None
    if ended is None:
        print("circle_rotate.selfcheck.forkserver: the server went away before the command ended", file=sys.stderr)
        return 1
    code = int(ended["exit"])
    return code if code >= 0 else 128 - code


# --- server -------------------------------------------------------------------------------

def _recv_request(conn: socket.socket) -> Tuple[dict, List[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, len(_STDIO))
    while len(data) < _LEN.size or len(data) < _LEN.size + _LEN.unpack_from(data)[0]:
        chunk = conn.recv(1 << 16)
        if not chunk:
            raise ConnectionError("request cut short")
        data += chunk
    if len(fds) != len(_STDIO):
        raise ConnectionError(f"expected {len(_STDIO)} file descriptors, got {len(fds)}")
    return json.loads(data[_LEN.size:]), fds


def _run_module(argv: Sequence[str]) -> int:
    import runpy
    import traceback
    import warnings

    sys.argv = list(argv)
    # runpy warns that a preloaded module is run again as __main__: here that is the point
    warnings.filterwarnings("ignore", message=".*found in sys.modules after import of package", category=RuntimeWarning)
    try:
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:  # as the interpreter would: print it, exit 1
        traceback.print_exc()
        return 1


def _child(request: dict, fds: List[int], close: Sequence[socket.socket]) -> None:
    """In the fork: become the caller's process (stdio, cwd, environment, sys.path[0]), run, exit."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops a run as it would stop python -m
    for s in close:
        s.close()
    for target, fd in zip(_STDIO, fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = os.getcwd()  # what ``python -m`` puts first
    code = _run_module(request["argv"])
    try:
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        # as multiprocessing's children do: no interpreter teardown (a second or more with torch loaded)
        os._exit(code & 0xFF)


def _preload(specs: Sequence[str]) -> None:
    import importlib

    for spec in specs:
        module, _, func = spec.partition(":")
        loaded = importlib.import_module(module)
        if func:
            getattr(loaded, func)()


@dataclass
class _Child:
    conn: socket.socket  # the client's connection; its end means the client is gone
    client_gone: bool = False


def serve(listen_fd: int, preload: Sequence[str] = ()) -> NoReturn:
    """Import ``preload`` (``module`` or ``module:function``), then fork a run per client of ``listen_fd``.

    Runs until stdin closes (the process that started it is gone) or SIGTERM. Ctrl-C reaches
    the runs, which stop; the server lives on until the process that started it lets go.
    """
    signal.signal(signal.SIGTERM, _exit_on_signal)  # so that the children are stopped too
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    listener = socket.socket(fileno=listen_fd)
    _preload(preload)
    children: Dict[int, _Child] = {}
    try:
        while True:
            watched = {c.conn: pid for pid, c in children.items() if not c.client_gone}
            ready, _, _ = select.select([listener, sys.stdin, *watched], [], [], _POLL_S)
            _reap(children)
            if sys.stdin in ready and not os.read(sys.stdin.fileno(), 1 << 12):
                break
            for conn in (c for c in ready if c in watched and watched[c] in children):
                if not conn.recv(1):  # a client sends nothing after its request: this is its end
                    children[watched[conn]].client_gone = True
                    os.kill(watched[conn], signal.SIGTERM)
            if listener in ready:
                _start(listener, children)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # an interpreter teardown with torch loaded takes a second or more, for nothing


def _start(listener: socket.socket, children: Dict[int, _Child]) -> None:
    conn, _ = listener.accept()
    try:
        request, fds = _recv_request(conn)
    except (ConnectionError, ValueError, OSError) as exc:
        print(f"circle_rotate.selfcheck.forkserver: bad request ({exc})", file=sys.stderr)
        conn.close()
        return
    sys.stdout.flush()  # else what the imports printed is still buffered and each child prints it again
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(request, fds, [listener, conn, *(c.conn for c in children.values())])
    for fd in fds:
        os.close(fd)
    children[pid] = _Child(conn)
    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _reap(children: Dict[int, _Child]) -> None:
    for pid in list(children):
        done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            continue
        child = children.pop(pid)
        if not child.client_gone:
            try:
                child.conn.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
            except OSError:  # it went away meanwhile
                pass
        child.conn.close()


@contextmanager
def fork_server(*, preload: Sequence[str] = (), env: Optional[Mapping[str, str]] = None) -> Iterator[Path]:
    """A fork server for the duration of the block; yields its socket path for :func:`client_argv`.

    The server starts importing at once, so its imports overlap whatever the block does
    first; clients that connect earlier wait for them in the socket's backlog (it is bound
    here, before the server starts, so there is nothing to wait for and no race).
    """
    folder = Path(tempfile.mkdtemp(prefix="cr-fork-"))  # short: Unix socket paths are limited to ~100 bytes
    path = folder / "server.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(16)
        proc = subprocess.Popen([sys.executable, "-m", "circle_rotate.selfcheck.forkserver", "--serve", str(listener.fileno()),
                                 *preload], stdin=subprocess.PIPE, pass_fds=(listener.fileno(),),
                                env=dict(env) if env is not None else None)
    try:
        yield path
    finally:
        proc.stdin.close()  # the server's signal to stop
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        path.unlink(missing_ok=True)
        folder.rmdir()


def main(argv: Sequence[str]) -> int:
    if len(argv) >= 2 and argv[0] == "--serve":
        serve(int(argv[1]), argv[2:])
    if len(argv) < 2:
        print("usage: python -m circle_rotate.selfcheck.forkserver SOCKET MODULE [ARGS ...]\n"
              "       python -m circle_rotate.selfcheck.forkserver --serve LISTENING_FD [PRELOAD ...]", file=sys.stderr)
        return 2
    return run_client(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
