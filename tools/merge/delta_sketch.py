"""A LoRA's delta in 16 numbers, the same whatever its file name, key layout, alpha spelling or dtype.

A merged expert records the LoRAs it holds (:mod:`circle_rotate.tools.merge.provenance`) so that a
second merge of one of them is refused. File name and size alone miss the commonest way to have it
twice: ``convert --format comfy`` (for ComfyUI) gives the same delta another name and size, and the
diffusers layout even folds alpha into the factors. So each record also keeps this sketch of what
the LoRA adds to the weights, taken from the weights themselves:

    ``sketch[j] = sum over changed parameters P of  r_P[:, j] . (delta_P @ x_P[:, j])``

where ``delta_P`` is the unscaled change (``alpha / rank * up @ down``, a LoHa/LoKr module's scaled
product, a whole-tensor difference; never the merge strength) under the canonical Wan name that every
layout maps to, and ``x_P`` (in_features x 16) and ``r_P`` (out_features x 16) are +-1 probes drawn
from the name alone (a counter hash, exact integer arithmetic, so any machine draws the same ones).
It is a random projection of the whole delta: the same delta gives the same sketch, rounding aside,
and unrelated deltas give unrelated sketches.

Two sketches are one delta when their directions agree to within 2% (:func:`same_delta`). Direction,
not length (nor sign): the same LoRA at another strength, or a copy whose alpha was rescaled or
negated, is the same change. How much of it a merged expert holds is then the recorded strengths
times the sketches' signed ratio, so the record tells a merge that adds it again (refused: merge into
the original expert at the strength wanted, strengths add: 0.8 then 0.5 is 1.3) from one that undoes
it (a strength of the other sign; :mod:`circle_rotate.tools.merge.provenance`).
2% is far above what a layout conversion or a bf16/fp16 copy moves a sketch (rounding of about 0.4%
per element at most), and far below the difference of two trainings: unrelated deltas give sketches
about 90 degrees apart, and the chance that 16 independent probes line up within 2% is negligible.

Cost: a LoRA pair never forms its ``out x in`` product: ``r . (up @ (down @ x)) = (up^T r) . (down @ x)``,
about ``16 * rank * (in + out)`` multiply-adds per module, module by module as the merge streams them
(a 14B rank-32 LoRA: a few hundred MFLOP, well under the time to read it). LoHa/LoKr modules, whose
products do not factor, are expanded in row chunks as the merge itself does.
"""

from __future__ import annotations

import hashlib
import math
from typing import List, Mapping, Optional, Sequence

import numpy as np
import torch

from circle_rotate.tools.lora.files import LoraIndex, load_diff, load_module, load_product
from circle_rotate.tools.lora.lycoris import add_rows, factors
from circle_rotate.tools.merge.chunks import JOB_ELEMS, row_ranges

#: Probes per sketch, and how far apart (sine of the angle) two sketches of one delta may be.
PROBES = 16
SAME = 0.02
#: The metadata field of a merged-LoRA record that holds this sketch; a new sketch scheme takes a new
#: name, and a record without the field is matched by file name and size as before.
FIELD = "delta_sketch_v1"

_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _signs(domain: str, name: str, n: int) -> torch.Tensor:
    """``(n, PROBES)`` float64 of +-1 from SplitMix64 over a counter seeded by ``domain:name``."""
    seed = np.uint64(int.from_bytes(hashlib.blake2b(f"{domain}:{name}".encode(), digest_size=8).digest(), "little"))
    z = np.arange(n * PROBES, dtype=np.uint64) * _GOLDEN + seed  # uint64 arrays wrap, as SplitMix64 wants
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z ^= z >> np.uint64(31)
    bits = (z >> np.uint64(63)).astype(np.float64)
    return torch.from_numpy(1.0 - 2.0 * bits).reshape(n, PROBES)


def delta_sketch(index: LoraIndex, scales: Mapping[str, float]) -> List[float]:
    """The sketch of ``index``'s delta (module docstring), ``scales`` its modules' ``alpha / rank``
    as the merge resolves them (:func:`circle_rotate.tools.lora.files.module_scales`)."""
    total = torch.zeros(PROBES, dtype=torch.float64)
    with open(index.path, "rb") as fh:
        for name in index.modules:
            mod = load_module(index, name, fh=fh)
            down = mod.down.reshape(mod.rank, -1).double()  # (rank, in): a conv's kernel flattened, as merged
            up = mod.up.reshape(mod.up.shape[0], -1).double()  # (out, rank)
            x, r = _signs("in", name, down.shape[1]), _signs("out", name, up.shape[0])
            total += scales[name] * ((down @ x) * (up.T @ r)).sum(0)
        for name, info in index.products.items():
            parts = factors(info.kind, load_product(index, name, fh=fh))
            rows, cols = info.delta_shape
            x, r = _signs("in", name, cols), _signs("out", name, rows)
            buf = torch.empty(0, dtype=torch.float32)
            for r0, r1 in row_ranges(rows, cols, JOB_ELEMS):
                buf = buf.new_zeros((r1 - r0, cols)) if buf.shape != (r1 - r0, cols) else buf.zero_()
                add_rows(buf, info.kind, parts, r0, r1, 1.0)
                total += info.scale * ((buf.double() @ x) * r[r0:r1]).sum(0)
        for param in index.diffs:
            d = load_diff(index, param, fh=fh).double().reshape(-1)
            total += d @ _signs("diff", param, d.numel())
    return [float(f"{v:.6g}") for v in total.tolist()]


def same_delta(a: Optional[Sequence[float]], b: Optional[Sequence[float]]) -> bool:
    """Whether two sketches are one delta, up to its strength (module docstring). False when either is
    missing, malformed or zero (a LoRA that changes nothing is no danger twice)."""
    try:
        u, v = torch.tensor([float(x) for x in a], dtype=torch.float64), torch.tensor([float(x) for x in b],
                                                                                       dtype=torch.float64)
    except (TypeError, ValueError):
        return False
    if u.shape != (PROBES,) or v.shape != (PROBES,):
        return False
    nu, nv = float(u.norm()), float(v.norm())
    if not (nu > 0 and nv > 0 and math.isfinite(nu) and math.isfinite(nv)):
        return False
    cos = float(u @ v) / (nu * nv)  # either sign: a negated copy is the same LoRA at a negative strength
    return math.sqrt(max(0.0, 1.0 - cos * cos)) <= SAME
