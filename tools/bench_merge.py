"""Benchmark: our streaming merge against a plain file copy and a load-everything merge.

    python -m circle_rotate.tools.bench_merge [--layers 3] [--repeat 3] [--dir /tmp]

Builds, in a temporary folder that is removed afterwards, a synthetic Wan2.2 I2V expert with
the real 14B tensor shapes (``--layers`` real-size blocks plus the real embeddings and head,
about 0.7 GB per block in fp16) and a rank-32 musubi LoRA over every target, then measures side
by side in one run:

- a plain copy of the checkpoint (``shutil.copyfile``), and the same copy followed by ``fsync``
  (our merge fsyncs its output before the atomic rename, so that is the like-for-like figure);
- ``circle-rotate merge`` fp16 -> fp16 (``--repeat`` rounds, each right after its own copies, so a
  ratio compares runs under the same machine load; medians reported) and fp16 -> fp8_scaled,
  each in its own process;
- a load-everything merge (safetensors ``load_file`` + merge + ``save_file``) in its own process.

Memory is peak anonymous memory (``RssAnon`` in ``/proc/<pid>/status``, summed over the process
tree, sampled every 5 ms): pages of a memory-mapped or read input are reclaimable page cache
and show up in plain RSS without costing anything. Times are wall-clock seconds of the whole
command (interpreter start-up and imports included) and, from the command's own ``--json``
report, of the merge alone. Every run starts after ``os.sync()`` with the checkpoint in the page
cache (it was just written), the same for the copies and the merges.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Optional, Tuple

from circle_rotate.safetensors_io import read_header
from circle_rotate.synthetic.tiny_wan import write_tiny_wan
from circle_rotate.tools.synthetic_lora import write_random_lora
from circle_rotate.wan_arch import I2V_A14B

MB = 2**20
_LOAD_EVERYTHING = """
import sys, torch
from safetensors.torch import load_file, save_file
from circle_rotate.tools.lora_keys import parse_lora_key
base, lora_path, out = sys.argv[1:4]
sd = load_file(base)
lora = load_file(lora_path)
parts = {}
for k, v in lora.items():
    p = parse_lora_key(k)
    parts.setdefault(p.module, {})[p.part] = v
for module, p in parts.items():
    key = module + ".weight"
    scale = float(p["alpha"]) / p["down"].shape[0]
    sd[key] = (sd[key].float() + scale * (p["up"].float() @ p["down"].float())).to(sd[key].dtype)
save_file(sd, out)
"""


def _tree(pid: int) -> List[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            pass
    return pids


def rss_anon(pid: int) -> int:
    """Anonymous resident memory of ``pid`` and its descendants, in bytes."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("RssAnon:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def run_measured(cmd: List[str]) -> Tuple[float, int, str]:
    """(wall seconds, peak RssAnon bytes over the process tree, stdout) of a command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], rss_anon(proc.pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"{cmd[:4]} failed: {err.decode(errors='replace')[-2000:]}")
    return wall, peak[0], out.decode()


def timed_copy(src: Path, dst: Path, *, fsync: bool) -> float:
    os.sync()  # no writeback left over from the previous step
    start = time.perf_counter()
    shutil.copyfile(src, dst)
    if fsync:
        with open(dst, "rb+") as fh:
            os.fsync(fh.fileno())
    wall = time.perf_counter() - start
    dst.unlink()
    return wall


def _merge_cmd(base: Path, lora: Path, out: Path, dtype: str) -> List[str]:
    return [sys.executable, "-m", "circle_rotate.cli.main", "-q", "merge", "--base", str(base), "--lora", str(lora),
            "--out", str(out), "--dtype", dtype, "--force", "--json"]


def run_merge_measured(base: Path, lora: Path, out: Path, dtype: str) -> Tuple[float, float, int]:
    """(command wall s, merge-only wall s from its report, peak RssAnon) of ``circle-rotate merge``."""
    os.sync()
    wall, peak, stdout = run_measured(_merge_cmd(base, lora, out, dtype))
    out.unlink()
    return wall, float(json.loads(stdout)["seconds"]), peak


def _load_everything(base: Path, lora: Path, out: Path) -> Tuple[float, int]:
    os.sync()
    wall, peak, _ = run_measured([sys.executable, "-c", _LOAD_EVERYTHING, str(base), str(lora), str(out)])
    out.unlink()
    return wall, peak


def _row(name: str, wall: float, copy_s: float, copy_sync_s: float, peak: Optional[int]) -> str:
    mem = f"{peak / MB:.0f}" if peak is not None else ""
    return f"{name:<26}{wall:>8.2f}{wall / copy_s:>8.2f}{wall / copy_sync_s:>14.2f}{mem:>18}"


def bench(layers: int, workdir: Optional[Path], repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_merge_", dir=workdir) as d:
        d = Path(d)
        cfg = I2V_A14B.with_layers(layers)
        print(f"writing a synthetic Wan2.2 I2V expert with {layers} real-size blocks ...", flush=True)
        base = write_tiny_wan(d / "wan2.2_i2v_high_noise_bench_fp16.safetensors", config=cfg, dtype="fp16", seed=1)
        lora = write_random_lora(d / "lora_r32.safetensors", cfg, rank=32, alpha=1.0, seed=2)
        header = read_header(base)
        largest = max(header.tensors.values(), key=lambda t: t.nbytes)
        out, copy = d / "merged.safetensors", d / "copy.safetensors"
        print(f"checkpoint {header.file_size / 2**30:.2f} GiB fp16 ({len(header.tensors)} tensors), largest tensor "
              f"'{largest.name}' {largest.nbytes / MB:.0f} MiB; LoRA rank 32, {read_header(lora).file_size / MB:.0f} MiB")
        print(f"{'':26}{'wall s':>8}{'x copy':>8}{'x copy+fsync':>14}{'peak RssAnon MiB':>18}")
        rounds = []
        for i in range(repeat):  # copies and merge back to back, so each ratio sees the same machine load
            copy_s, copy_sync_s = timed_copy(base, copy, fsync=False), timed_copy(base, copy, fsync=True)
            ours = run_merge_measured(base, lora, out, "fp16")
            rounds.append((copy_s, copy_sync_s, ours))
            print(f"round {i + 1}: plain copy {copy_s:.2f} s, copy + fsync {copy_sync_s:.2f} s", flush=True)
            print(_row("  ours fp16 -> fp16", ours[0], copy_s, copy_sync_s, ours[2]))
            print(_row("    (merge only)", ours[1], copy_s, copy_sync_s, None), flush=True)
        copy_s, copy_sync_s = statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)
        ours8 = run_merge_measured(base, lora, out, "fp8_scaled")
        everything = _load_everything(base, lora, out)
        print(f"median copies: plain {copy_s:.2f} s, copy + fsync {copy_sync_s:.2f} s")
        print(_row("ours fp16 -> fp8_scaled", ours8[0], copy_s, copy_sync_s, ours8[2]))
        print(_row("  (merge only)", ours8[1], copy_s, copy_sync_s, None))
        print(_row("load-everything fp16", everything[0], copy_s, copy_sync_s, everything[1]))
        target = 4 * largest.nbytes + 400 * MB
        peak = max(max(r[2][2] for r in rounds), ours8[2])
        print(f"target memory: peak RssAnon <= 4 x largest + 400 MiB = {target / MB:.0f} MiB: "
              f"{'met' if peak <= target else 'MISSED'} (ours at most {peak / MB:.0f} MiB; load-everything "
              f"{everything[1] / MB:.0f} MiB)")

        def ratio(ours_field: int, copy_field: int) -> float:
            return statistics.median(r[2][ours_field] / r[copy_field] for r in rounds)

        print(f"target time: fp16 -> fp16 <= 1.5 x copy; median over {repeat} rounds: command {ratio(0, 0):.2f} x plain "
              f"copy, {ratio(0, 1):.2f} x copy + fsync; merge only {ratio(1, 0):.2f} x plain copy, {ratio(1, 1):.2f} x "
              f"copy + fsync; load-everything {everything[0] / copy_sync_s:.2f} x copy + fsync")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m circle_rotate.tools.bench_merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=3, help="real-size blocks (0.7 GB each in fp16; 3 gives ~2.5 GB)")
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary files go (default: the system temp)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of copy + fp16 merge (medians are reported)")
    args = parser.parse_args(argv)
    bench(args.layers, args.dir, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
