"""Measurement: how close to the exact merged weights each way of getting a LoRA into fp8 lands.

    python -m circle_rotate.selfcheck.bench_fp8_merge [--delta-rel 0.05] [--rank 32] [--seed 0]

On the real 14B Linear shapes (``self_attn.q`` 5120 x 5120, ``ffn.0`` 13824 x 5120, ``ffn.2``
5120 x 13824), with a weight ``W`` drawn heavy-tailed (Student t, 4 degrees of freedom: real
checkpoints have outliers, and the per-tensor scale follows the largest one) and a rank-``--rank``
LoRA delta ``D`` whose RMS is ``--delta-rel`` of ``W``'s, the exact merge is ``T = W + D`` (fp32).
Side by side:

- ``ours, fp16 base``: ``circle-rotate merge --dtype fp8_scaled`` from the fp16 expert: one
  round-to-nearest of ``T`` with a fresh per-tensor scale (``max |T| / 448``);
- ``ComfyUI load-time LoRA``: the Comfy-Org fp8_scaled expert (``W`` rounded to nearest with
  ``max |W| / 448``) plus the LoRA applied at load by ComfyUI 0.3.64: stochastic rounding with the
  stored scale (:mod:`circle_rotate.tools.merge.fp8_rounding`, bit-identical to ComfyUI's own);
- ``ours, fp8_scaled base``: ``circle-rotate merge`` into that same fp8_scaled expert: dequantize,
  add ``D``, round to nearest with a fresh scale.

Errors are RMS over the tensor, against ``T`` as a fraction of RMS(T) and of RMS(D) (how much of
the LoRA's own change is lost in noise); the last row is the fp8 expert's own rounding error
against ``W``, the floor of the paths that start from it.
"""

from __future__ import annotations

import argparse
from typing import List, Optional

import torch

from circle_rotate.kernel.arg_types import positive_number, whole_number
from circle_rotate.tools.merge.fp8 import FP8, FP8_MAX, scale_from_max
from circle_rotate.tools.merge.fp8_rounding import comfy_loadtime_lora

SHAPES = {"blocks.0.self_attn.q": (5120, 5120), "blocks.0.ffn.0": (13824, 5120), "blocks.0.ffn.2": (5120, 13824)}


def nearest(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Round-to-nearest scaled fp8, dequantized (what our merge writes, read back as ComfyUI does)."""
    return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).float() * scale


def rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


def measure(name: str, shape, *, rank: int, delta_rel: float, gen: torch.Generator) -> dict:
    rows, cols = shape
    w = torch.distributions.StudentT(4.0).sample(shape) / cols ** 0.5
    up, down = torch.randn(rows, rank, generator=gen), torch.randn(rank, cols, generator=gen)
    d = up @ down
    d *= delta_rel * rms(w) / rms(d)
    truth = w + d
    base_scale = scale_from_max(float(w.abs().max()))
    base = nearest(w, base_scale)  # the Comfy-Org fp8_scaled expert, dequantized
    q_base = (base / base_scale).to(FP8)
    ours16 = nearest(truth, scale_from_max(float(truth.abs().max())))
    comfy = comfy_loadtime_lora(q_base, base_scale, d, name=f"diffusion_model.{name}.weight").float() * base_scale
    merged8 = base + d
    ours8 = nearest(merged8, scale_from_max(float(merged8.abs().max())))
    rt, rd = rms(truth), rms(d)
    rows = {label: (rms(x - truth) / rt, rms(x - truth) / rd)
            for label, x in (("ours, fp16 base", ours16), ("ComfyUI load-time LoRA", comfy), ("ours, fp8_scaled base", ours8))}
    rows["fp8 expert alone vs W"] = (rms(base - w) / rms(w), rms(base - w) / rd)
    return {name: rows}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m circle_rotate.selfcheck.bench_fp8_merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--delta-rel", type=positive_number, default=0.05, help="RMS of the LoRA delta over RMS of the weight")
    parser.add_argument("--rank", type=whole_number(1), default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    print(f"RMS error vs the exact fp32 merge W + D (rank {args.rank}, RMS(D) = {args.delta_rel:g} RMS(W)); "
          "as % of RMS(W + D) | as % of RMS(D)")
    totals: dict = {}
    for name, shape in SHAPES.items():
        for layer, rows in measure(name, shape, rank=args.rank, delta_rel=args.delta_rel, gen=gen).items():
            print(f"{layer} {list(shape)}")
            for label, (of_t, of_d) in rows.items():
                print(f"  {label:<24} {100 * of_t:6.3f} % | {100 * of_d:7.2f} %")
                totals.setdefault(label, []).append(of_t)
    mean = {label: sum(v) / len(v) for label, v in totals.items()}
    print(f"mean over the layers: ComfyUI load-time / ours (fp16 base) = "
          f"{mean['ComfyUI load-time LoRA'] / mean['ours, fp16 base']:.2f}x; "
          f"ComfyUI load-time / ours (fp8_scaled base) = {mean['ComfyUI load-time LoRA'] / mean['ours, fp8_scaled base']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
