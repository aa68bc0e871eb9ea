"""Benchmark: what each kind of network costs the merge, per tensor of the real 14B shapes.

    python -m circle_rotate.selfcheck.bench_merge_kinds [--rank 32] [--repeat 3]

The streaming merge reads and writes the same bytes whatever the LoRA is made of; what differs
is the arithmetic on each touched tensor: decode a row range, add the delta, encode it. This
runs exactly that (:class:`circle_rotate.tools.merge.chunks.Chunks`, one thread, as each merge
worker does) side by side in one run on a self-attention projection (5120 x 5120) and the two
FFN matrices (13824 x 5120, 5120 x 13824), fp16 in and out, for:

- no delta (decode + encode: the floor);
- a rank-``r`` LoRA pair;
- a rank-``r`` LoHa (two rank-``r`` products, multiplied elementwise);
- a LoKr as musubi-tuner builds it (``w1`` whole, ``w2`` a rank-``r`` product, factors by
  musubi's balanced factorization);
- a LoRA pair plus a whole-tensor difference (the lightx2v LoRAs' ``.diff``).

Medians over ``--repeat`` rounds, each kind timed right after the others, and each kind's ratio
to the LoRA pair on the same tensor.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch

from circle_rotate.kernel.arg_types import whole_number
from circle_rotate.kernel.wan_arch import I2V_A14B
from circle_rotate.tools.merge.chunks import JOB_ELEMS, Chunks, Source, row_ranges
from circle_rotate.tools.merge.ordered_pipeline import torch_threads


def balanced_factors(n: int) -> Tuple[int, int]:
    """``(m, n / m)`` with ``m`` the largest divisor up to the square root (musubi's ``factorization(n)``
    for the Wan widths, where it finds the balanced pair)."""
    m = max(d for d in range(1, int(n ** 0.5) + 1) if n % d == 0)
    return m, n // m


def sources(rows: int, cols: int, rank: int, gen: torch.Generator) -> Dict[str, Source]:
    """The same fp16 base tensor with each kind of delta."""
    weight = torch.randn(rows, cols, generator=gen).half()

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.02

    (a, c), (b, d) = balanced_factors(rows), balanced_factors(cols)
    lora = ((rand(rows, rank), rand(rank, cols), 0.5),)
    kinds = {
        "none": {},
        "LoRA": {"deltas": lora},
        "LoHa": {"products": (("loha", (rand(rows, rank), rand(rank, cols), rand(rows, rank), rand(rank, cols)), 0.5),)},
        "LoKr": {"products": (("lokr", (rand(a, b), rand(c, rank) @ rand(rank, d)), 0.5),)},
        "LoRA + diff": {"deltas": lora, "diffs": ((rand(rows, cols), 1.0),)},
    }
    return {name: Source(weight, None, parts.get("deltas", ()), torch.float16, "cast", name,
                         parts.get("diffs", ()), parts.get("products", ())) for name, parts in kinds.items()}


def time_merge(src: Source) -> float:
    """Seconds to produce every row range of ``src``'s merged tensor, as a merge worker does."""
    chunks = Chunks()
    start = time.perf_counter()
    for r0, r1 in row_ranges(*src.weight.shape, JOB_ELEMS):
        chunks.release(chunks.encoded(src, None, r0, r1))
    return time.perf_counter() - start


def run(rank: int, repeat: int, timer: Callable[[Source], float] = time_merge) -> Dict[Tuple[int, int], Dict[str, float]]:
    """Median seconds per (tensor shape, kind)."""
    d, f = I2V_A14B.dim, I2V_A14B.ffn_dim
    gen = torch.Generator().manual_seed(0)
    out: Dict[Tuple[int, int], Dict[str, float]] = {}
    with torch_threads(1):
        for shape in ((d, d), (f, d), (d, f)):
            srcs = sources(*shape, rank, gen)
            times: Dict[str, List[float]] = {name: [] for name in srcs}
            for _ in range(repeat):
                for name, src in srcs.items():
                    times[name].append(timer(src))
            out[shape] = {name: statistics.median(t) for name, t in times.items()}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="circle-rotate bench merge-kinds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank", type=whole_number(1), default=32, help="rank of the LoRA, LoHa and LoKr factors (default 32)")
    parser.add_argument("--repeat", type=whole_number(1), default=3, help="rounds (medians are reported)")
    args = parser.parse_args(argv)
    results = run(args.rank, args.repeat)
    print(f"per-tensor merge arithmetic, fp16 -> fp16, one thread, rank {args.rank}; median of {args.repeat}")
    for (rows, cols), row in results.items():
        lora = row["LoRA"]
        cells = ", ".join(f"{name} {t * 1e3:.0f} ms" + ("" if name in ("none", "LoRA") else f" ({t / lora:.2f}x LoRA)")
                          for name, t in row.items())
        print(f"  [{rows} x {cols}]: {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
