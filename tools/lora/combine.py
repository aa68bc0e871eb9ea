"""Combine several LoRAs with strengths into one, exactly, by concatenating ranks.

``sum_i s_i * (alpha_i / r_i) * up_i @ down_i  ==  [s_1 a_1/r_1 up_1, ...] @ [down_1; ...]``,
so the combined module has rank ``sum r_i`` and scale 1 (``alpha = rank``). Each factor
``s_i a_i / r_i`` is split between ``up_i`` and ``down_i`` (a power of two on ``up``, see
:func:`circle_rotate.tools.lora.files.fold_factors`), so that the stored blocks keep magnitudes
alike: all of a musubi LoRA's 1/32 on ``up`` (about 2e-3 trained) would put fp16's into its
subnormals. The only rounding is storing the scaled blocks: in fp32 (the default) one fp32
rounding of the ``down`` blocks, none at all when each factor is a power of two. The report
gives the measured relative error of each stored delta against the exact sum (the largest),
from the factors (``rank x rank`` products, never the ``out x in`` delta); ``exact`` is an
error of 0.

Whole-tensor differences (:mod:`circle_rotate.tools.lora.diffs`) combine as ``sum_i s_i * diff_i``,
summed in fp32; the error and ``exact`` then also count storing those sums.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import torch

from circle_rotate.kernel.atomic import check_output_path
from circle_rotate.kernel.checkpoint_identity import EXPERT_METADATA_KEY
from circle_rotate.kernel.errors import NonFiniteError, UserError
from circle_rotate.kernel.safetensors_io import DTYPES
from circle_rotate.tools.lora.inspect import lora_expert
from circle_rotate.tools.lora.files import (AlphaIfMissing, LoraModule, fold_factors, load_diffs, module_scales,
                                         read_lora_index, require_layout, require_lora_only, require_wan_lora,
                                         resolved_modules, write_lora)
from circle_rotate.tools.lora.keys import FORMATS, module_sort_key
from circle_rotate.tools.option_values import COMBINE_DTYPE_NAMES, FLOAT_DTYPES, check_scale_fits

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
COMBINE_DTYPES = {name: DTYPES[FLOAT_DTYPES[name]] for name in COMBINE_DTYPE_NAMES}


@dataclass(frozen=True)
class CombineReport:
    out: str
    format: str
    dtype: str
    inputs: List[Dict[str, object]]
    modules: int
    ranks: Dict[int, int]
    exact: bool  # every stored delta is the exact strength-weighted sum (max_rel_error 0)
    diffs: int = 0  # whole-tensor differences written
    max_rel_error: float = 0.0  # largest ||stored - exact|| / ||exact|| over modules and differences

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def _rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt()) if t.numel() else 0.0


def _split(factor: float, mod: LoraModule) -> Tuple[float, float]:
    """(down factor, up factor) whose product is ``factor``, balancing the scaled blocks' magnitudes."""
    ru, rd = _rms(mod.up), _rms(mod.down)
    f_down, f_up = fold_factors(abs(factor), rd / ru if ru > 0 and rd > 0 else 1.0)
    return f_down, math.copysign(f_up, factor)  # (a sign is exact too)


def stored_error(up: torch.Tensor, down: torch.Tensor, up_c: torch.Tensor, down_c: torch.Tensor) -> float:
    """``||up_c @ down_c - up @ down|| / ||up @ down||`` (2-D; ``up``/``down`` exact, float64) from the factors.

    The difference is taken as ``du @ down + up_c @ dd`` (``du = up - up_c``, ``dd = down - down_c``), whose
    terms are all as small as the rounding, rather than ``||a||^2 + ||b||^2 - 2<a, b>``, which would cancel to
    float64's noise (about 1e-8 relative) at fp32's error. ``||x @ y||^2 = sum((x^T x) * (y y^T))``: rank x rank
    products only, in fp32 (the error needs a few digits), and none for a factor stored exactly (``up`` in fp32:
    its share of the scale is a power of two).
    """
    du, dd = up - up_c.double(), down - down_c.double()
    if not (du.any() or dd.any()):
        return 0.0
    uc, d = up_c.float(), down.float()
    gram_c, gram_d = uc.T @ uc, d @ d.T
    gram_u = gram_c  # (up^T up)
    err2 = 0.0
    if du.any():
        du = du.float()
        cross = du.T @ uc
        gram_dudu = du.T @ du
        gram_u = gram_c + cross + cross.T + gram_dudu
        err2 += float((gram_dudu * gram_d).sum())
        if dd.any():
            err2 += 2 * float((cross * (d @ dd.float().T)).sum())
    if dd.any():
        dd = dd.float()
        err2 += float((gram_c * (dd @ dd.T)).sum())
    total2 = float((gram_u * gram_d).sum())
    if total2 <= 0:  # the parts cancel: nothing to measure against
        return math.inf
    return (max(err2, 0.0) / total2) ** 0.5


def concat_modules(parts: Sequence[Tuple[float, LoraModule]], dtype: torch.dtype) -> Tuple[LoraModule, float]:
    """One module from ``(factor, module)`` parts (factor = strength * alpha / rank).

    Returns:
        The combined module (alpha = its rank) and the relative error of storing it in ``dtype``
        (:func:`stored_error`).
    """
    ups, downs = [], []
    for f, m in parts:
        f_down, f_up = _split(f, m)
        ups.append(f_up * m.up.double().reshape(m.up.shape[0], m.rank, *m.up.shape[2:]))
        downs.append(f_down * m.down.double())
    up, down = torch.cat(ups, dim=1), torch.cat(downs, dim=0)
    up_c, down_c = up.to(dtype), down.to(dtype)  # (one rounding, from float64)
    rank = down.shape[0]
    err = stored_error(up.reshape(up.shape[0], rank), down.reshape(rank, -1),
                       up_c.reshape(up.shape[0], rank), down_c.reshape(rank, -1))
    name = parts[0][1].module
    return LoraModule(name, down_c.contiguous(), up_c.contiguous(), float(rank)), err


def _check_shapes(name: str, parts: Sequence[Tuple[Path, LoraModule]]) -> None:
    shapes = {(tuple(m.up.shape[:1]), tuple(m.down.shape[1:])) for _, m in parts}
    if len(shapes) > 1:
        shown = ", ".join(f"{p.name}: [{m.up.shape[0]}, {list(m.down.shape[1:])}]" for p, m in parts)
        raise UserError(f"module '{name}' has different shapes in the inputs ({shown})",
                        fix="combine only LoRAs made for the same model")


def _check_diff_shapes(param: str, parts: Sequence[Tuple[float, torch.Tensor, Path]]) -> None:
    if len({tuple(d.shape) for _, d, _ in parts}) > 1:
        shown = ", ".join(f"{p.name}: {list(d.shape)}" for _, d, p in parts)
        raise UserError(f"the difference of '{param}' has different shapes in the inputs ({shown})",
                        fix="combine only LoRAs made for the same model")


def combine_loras(loras: Sequence[Tuple[PathLike, float]], out: PathLike, *, to: str = "musubi", dtype: str = "fp32",
                  alpha_if_missing: AlphaIfMissing = None, force: bool = False,
                  ignore_expert_evidence: bool = False) -> CombineReport:
    """Write one LoRA equal to the strength-weighted sum of ``loras``.

    Args:
        loras: ``(path, strength)`` pairs (any layouts, ranks and dtypes).
        out: the combined LoRA (never one of the inputs).
        to: output layout.
        dtype: ``fp32`` (exact), ``fp16`` or ``bf16``.
        alpha_if_missing: see :func:`circle_rotate.tools.lora.files.module_scales`.
        force: replace an existing ``out``.
        ignore_expert_evidence: combine LoRAs whose metadata or names say they are for
            different experts (one high-noise, one low-noise).

    Raises:
        UserError: fewer than two inputs, unknown layout/dtype, a module whose shapes differ,
            not a Wan LoRA, ambiguous missing alpha, bad paths, LoRAs of the two experts.
    """
    if len(loras) < 2:
        raise UserError("combine needs at least two LoRAs", fix="pass --lora FILE[:STRENGTH] twice or more")
    if to not in FORMATS or dtype not in COMBINE_DTYPES:
        raise UserError(f"unknown layout/dtype {to!r}/{dtype!r}",
                        fix=f"layouts: {', '.join(FORMATS)}; dtypes: {', '.join(COMBINE_DTYPES)}")
    out_p = check_output_path(out, inputs=[p for p, _ in loras], force=force, suffix=".safetensors")
    grouped: Dict[str, List[Tuple[float, LoraModule, Path]]] = {}
    diff_parts: Dict[str, List[Tuple[float, torch.Tensor, Path]]] = {}
    experts = set()
    for path, strength in loras:
        index = read_lora_index(path)
        require_wan_lora(index)
        require_lora_only(index, "combine")
        require_layout(index, to)
        for param, diff in load_diffs(index).items():
            diff_parts.setdefault(param, []).append((float(strength), diff, index.path))
        scales = module_scales(index, alpha_if_missing=alpha_if_missing)
        expert, evidence = lora_expert(index)
        if expert is not None and not ignore_expert_evidence and experts - {None, expert}:
            raise UserError(f"'{index.path.name}' is a {expert}-noise LoRA (by its {evidence}) and an earlier one is "
                            f"for the other expert: their sum fits neither", path=index.path,
                            fix="combine LoRAs of one expert (and the other expert's apart), or pass "
                                "--ignore-expert-evidence if a name misleads")
        experts.add(expert)
        for name, mod in resolved_modules(index, scales).items():
            check_scale_fits(f"--lora {index.path.name} strength", float(strength), scales[name],
                             limit=torch.finfo(COMBINE_DTYPES[dtype]).max, dtype=dtype)
            grouped.setdefault(name, []).append((float(strength) * scales[name], mod, index.path))
    combined: Dict[str, LoraModule] = {}
    worst = 0.0
    for name in sorted(grouped, key=module_sort_key):
        _check_shapes(name, [(p, m) for _, m, p in grouped[name]])
        combined[name], err = concat_modules([(f, m) for f, m, _ in grouped[name]], COMBINE_DTYPES[dtype])
        worst = max(worst, err)
    diffs: Dict[str, torch.Tensor] = {}
    for param, parts in diff_parts.items():
        _check_diff_shapes(param, parts)
        total = sum(s * d.float() for s, d, _ in parts)
        diffs[param] = total.to(COMBINE_DTYPES[dtype])
        if not torch.equal(diffs[param].float(), total):
            norm = float(torch.linalg.vector_norm(total.double()))
            err = float(torch.linalg.vector_norm(diffs[param].double() - total.double()))
            worst = max(worst, err / norm if norm > 0 else math.inf)
    overflowed = [n for n, m in combined.items() if not (torch.isfinite(m.up).all() and torch.isfinite(m.down).all())]
    overflowed += [p for p, d in diffs.items() if not torch.isfinite(d).all()]
    if overflowed:
        raise NonFiniteError(out_p, key=overflowed[0], count=len(overflowed),
                             fix=f"lower the strengths, or --dtype fp32 (this is {dtype})")
    inputs = [{"file": str(p), "strength": float(s)} for p, s in loras]
    metadata = {"circle_rotate.combined_from": json.dumps(inputs)}
    if len(experts) == 1 and None not in experts:
        metadata[EXPERT_METADATA_KEY] = experts.pop()
    write_lora(out_p, combined, fmt=to, metadata=metadata, diffs=diffs)
    ranks: Dict[int, int] = {}
    for mod in combined.values():
        ranks[mod.rank] = ranks.get(mod.rank, 0) + 1
    logger.info("combined %d LoRAs into %s (%d modules)", len(loras), out_p, len(combined))
    return CombineReport(str(out_p), to, dtype, inputs, len(combined), dict(sorted(ranks.items())), worst == 0.0,
                         len(diffs), worst)
