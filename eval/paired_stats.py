"""Paired statistics of one metric column, baseline vs LoRA: the paired t-test with its t
interval of the mean difference, Wilcoxon's signed-rank test, Cohen's d, the relative change of
the means, and the verdict (scipy.stats). Pure functions of the paired numbers; which pairs
count is :mod:`circle_rotate.eval.compare`'s business.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from circle_rotate.eval.pairing import Pair
from circle_rotate.eval.registry import COLUMNS


@dataclass(frozen=True)
class Comparison:
    """One column compared over the paired videos (LoRA minus baseline)."""

    column: str
    label: str
    better: Optional[str]
    n: int
    baseline_mean: float
    baseline_std: float
    lora_mean: float
    lora_std: float
    mean_diff: float
    relative_change: Optional[float]  # (lora - baseline) / |baseline| of the means; None from ~0
    ci_low: Optional[float]  # t interval of the mean difference (None under MIN_PAIRS pairs)
    ci_high: Optional[float]
    t_stat: Optional[float]
    p_value: Optional[float]  # paired t-test
    wilcoxon_p: Optional[float]  # Wilcoxon signed-rank test
    cohens_d: Optional[float]
    verdict: str

    def headline(self) -> str:
        """E.g. ``drift -81% (12.30 -> 2.34 px, p=0.003)``; ``drift from ~0 (0.0001 -> 2.87 px, ...)``
        where the baseline is too near 0 for a relative change (:func:`relative_change`)."""
        unit = COLUMNS[self.column].unit if self.column in COLUMNS else ""
        if self.relative_change is not None:
            change = f"{self.relative_change:+.0%}"
        elif self.lora_mean == self.baseline_mean:
            change = "unchanged"
        else:
            change = "from 0" if self.baseline_mean == 0 else "from ~0"
        p = f", p={self.p_value:.3g}" if self.p_value is not None else ""
        return f"{self.column} {change} ({self.baseline_mean:.4g} -> {self.lora_mean:.4g}{' ' + unit if unit else ''}{p})"

    def to_dict(self) -> Dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


#: Pairs a column needs before its interval is given and it is called better or worse. At n=2
#: the t-test has one degree of freedom (its p can read 0.01 where Wilcoxon's smallest possible p
#: is 0.5), and one pair has no spread at all: either reads chance as a change.
MIN_PAIRS = 3

#: The verdict of a column compared over fewer than :data:`MIN_PAIRS` pairs.
TOO_FEW = f"too few pairs (under {MIN_PAIRS})"


def t_interval(diff: Sequence[float], *, confidence: float = 0.95) -> Tuple[Optional[float], Optional[float]]:
    """The t interval of the mean of ``diff`` (the paired differences): ``mean ± t(n-1) sd / sqrt(n)``.

    The interval that goes with the paired t-test (it excludes 0 exactly when p < 1 - confidence),
    and, unlike a percentile bootstrap, holds its coverage at the few pairs a comparison has: the
    bootstrap's "95%" covered the true difference 73% of the time at n=3, 83% at n=5, 91% at n=12.
    ``(None, None)`` under :data:`MIN_PAIRS` differences, and where they have no spread (every
    pair changed by the same amount): an interval of width 0 would claim a certainty the sample
    cannot give.
    """
    d = np.asarray(diff, np.float64)
    if d.size < MIN_PAIRS:
        return None, None
    sd = float(d.std(ddof=1))
    if not sd > 0:
        return None, None
    half = float(stats.t.ppf(0.5 + confidence / 2, d.size - 1)) * sd / math.sqrt(d.size)
    mean = float(d.mean())
    return mean - half, mean + half


def _verdict(better: Optional[str], n: int, diff_mean: float, p: Optional[float],
             ci: Tuple[Optional[float], Optional[float]]) -> str:
    if n < MIN_PAIRS:
        return TOO_FEW
    if better is None:
        return "changed" if p is not None and p < 0.05 else "no clear change"
    improved = diff_mean < 0 if better == "lower" else diff_mean > 0
    excludes_zero = ci[0] is not None and ci[1] is not None and (ci[0] > 0 or ci[1] < 0)
    if p is not None and p < 0.05 and excludes_zero:
        return "better" if improved else "worse"
    return "no significant difference"


#: A baseline mean under this share of the column's typical reading (the larger side's median) is
#: taken as 0 for the relative change: against a near-zero baseline (a static camera's drift, its flow of
#: compression noise) any change reads as thousands of percent, which says how close to 0 the
#: baseline was, not what the LoRA did. Below 1% a change would read over +9900%.
RELATIVE_FLOOR = 0.01


def relative_change(base_mean: float, lora_mean: float, scale: float) -> Optional[float]:
    """``(lora - base) / |base|``; None where ``|base|`` is at most :data:`RELATIVE_FLOOR` x
    ``scale`` (the column's typical absolute reading), 0 included."""
    if not abs(base_mean) > RELATIVE_FLOOR * abs(scale):
        return None
    return float((lora_mean - base_mean) / abs(base_mean))


#: Two readings this close (relative) are the same reading.
SAME_VALUE_RTOL = 1e-9


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def paired_values(pairs: Sequence[Pair], column: str) -> Tuple[List[Pair], np.ndarray, np.ndarray]:
    """The pairs with a finite number for ``column`` on both sides, and those numbers (baseline,
    LoRA): what :func:`compare_column` compares and the figures draw."""
    kept = [p for p in pairs if _number(p.baseline.get(column)) and _number(p.lora.get(column))]
    return (kept, np.array([p.baseline[column] for p in kept], np.float64),
            np.array([p.lora[column] for p in kept], np.float64))


def compare_column(pairs: Sequence[Pair], column: str) -> Optional[Comparison]:
    """Paired statistics of ``column``; None when fewer than one pair has numbers for it."""
    _, base, lora = paired_values(pairs, column)
    if not base.size:
        return None
    # the same video measured twice differs by float round-off (1e-12 on a flow mean), which a
    # t-test would read as a difference with p 0.26 and an effect size of 1.6: it is none
    same = np.abs(lora - base) <= SAME_VALUE_RTOL * np.maximum(np.abs(lora), np.abs(base))
    lora = np.where(same, base, lora)
    diff = lora - base
    t = p = w = d = None
    if diff.size >= 2 and np.std(diff) > 0:
        t, p = (float(x) for x in stats.ttest_rel(lora, base))
        d = float(diff.mean() / diff.std(ddof=1))
        if np.count_nonzero(diff) >= 1:
            w = float(stats.wilcoxon(lora, base).pvalue)
    ci = t_interval(diff)
    info = COLUMNS.get(column)
    # medians, not maxima: one LoRA video that lost its subject (400 px) must not make a 3 px
    # baseline read as "~0"
    scale = float(max(np.median(np.abs(base)), np.median(np.abs(lora))))
    rel = relative_change(float(base.mean()), float(lora.mean()), scale)
    better = info.better if info else None
    return Comparison(column, info.label if info else column, better, int(diff.size),
                      float(base.mean()), float(base.std()), float(lora.mean()), float(lora.std()), float(diff.mean()),
                      rel, ci[0], ci[1], t, p, w, d, _verdict(better, int(diff.size), float(diff.mean()), p, ci))
