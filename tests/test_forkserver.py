"""The fork server runs a module as ``python -m`` would, as a fork of a process that imported it already."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from circle_rotate.selfcheck.forkserver import client_argv, fork_server, supported

pytestmark = pytest.mark.skipif(not supported(), reason="the fork server runs on Linux only")

PRELOADED = """
import os
with open(os.environ["IMPORT_LOG"], "a") as f:
    f.write(f"{os.getpid()}\\n")
"""

PROBE = """
import json, os, sys
import preloaded_probe
if sys.argv[1] == "sleep":
    open("child.pid", "w").write(str(os.getpid()))
    import time
    time.sleep(60)
print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": os.environ.get("PROBE_VALUE"),
                  "stdin": sys.stdin.read(), "pid": os.getpid()}))
print("to stderr", file=sys.stderr)
if sys.argv[1] == "raise":
    raise RuntimeError("boom from the probe")
sys.exit(int(sys.argv[1]) if sys.argv[1].isdigit() else sys.argv[1])
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    lib = tmp_path_factory.mktemp("lib")
    (lib / "preloaded_probe.py").write_text(PRELOADED)
    log = lib / "imports.log"
    env = {**os.environ, "PYTHONPATH": str(lib), "IMPORT_LOG": str(log)}
    with fork_server(preload=("preloaded_probe",), env=env) as path:
        yield path, log


def _run(server_path: Path, cwd: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    (cwd / "probe_module.py").write_text(PROBE)
    return subprocess.run([*client_argv(server_path, "probe_module"), *args], cwd=cwd, input=stdin, text=True,
                          capture_output=True, env={**os.environ, "PROBE_VALUE": "from the client"}, timeout=60)


def test_the_module_gets_the_clients_arguments_cwd_environment_and_stdio(server, tmp_path):
    import json

    path, log = server
    proc = _run(path, tmp_path, "3", "--flag", stdin="some input")
    assert proc.returncode == 3, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["argv"] == ["3", "--flag"]
    assert Path(seen["cwd"]).resolve() == tmp_path.resolve()
    assert seen["env"] == "from the client" and seen["stdin"] == "some input"
    assert proc.stderr.strip() == "to stderr"
    again = json.loads(_run(path, tmp_path, "0").stdout)
    assert again["pid"] != seen["pid"]  # a process per run
    importers = log.read_text().split()
    assert len(importers) == 1 and int(importers[0]) not in (seen["pid"], again["pid"])  # imported once, by the server


@pytest.mark.parametrize("arg, code, stderr", [("0", 0, ""), ("raise", 1, "RuntimeError: boom from the probe"),
                                               ("a message", 1, "a message")])
def test_exit_codes_and_errors_are_those_of_python_m(server, tmp_path, arg, code, stderr):
    proc = _run(server[0], tmp_path, arg)
    assert proc.returncode == code
    assert stderr in proc.stderr


def test_stopping_the_client_stops_the_run(server, tmp_path):
    (tmp_path / "probe_module.py").write_text(PROBE)
    client = subprocess.Popen([*client_argv(server[0], "probe_module"), "sleep"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid_file = tmp_path / "child.pid"
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and client.poll() is None
        time.sleep(0.05)
    child = int(pid_file.read_text())
    client.send_signal(signal.SIGTERM)
    client.wait(10)
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, "the forked run outlived its client"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_server_stops_with_its_block_and_clients_then_fail_clearly(tmp_path):
    with fork_server() as path:
        assert path.exists()
    assert not path.exists()
    proc = subprocess.run([*client_argv(path, "json.tool")], input="{}", text=True, capture_output=True, timeout=30)
    assert proc.returncode == 127 and "no server" in proc.stderr


def test_a_server_whose_imports_fail_fails_its_clients_instead_of_hanging(tmp_path):
    with fork_server(preload=("no_such_module_anywhere",)) as path:
        proc = subprocess.run([*client_argv(path, "json.tool")], input="{}", text=True, capture_output=True,
                              timeout=60)
    assert proc.returncode in (1, 127) and "circle_rotate.selfcheck.forkserver:" in proc.stderr


def test_client_usage_without_a_module():
    proc = subprocess.run([sys.executable, "-m", "circle_rotate.selfcheck.forkserver"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr


THREADS_PROBE = """
import os
print(len(os.listdir(f"/proc/{os.getppid()}/task")))
"""


def test_the_musubi_preload_leaves_the_server_single_threaded(musubi, tmp_path):
    """Forking is safe only from a single-threaded process: musubi's imports must start no thread (pool)."""
    (tmp_path / "threads_probe.py").write_text(THREADS_PROBE)
    with fork_server(preload=("circle_rotate.selfcheck.tiny_task:preload",)) as path:
        proc = subprocess.run([*client_argv(path, "threads_probe")], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "1"  # the server's threads, read by its child
