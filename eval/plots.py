"""Matplotlib figures for eval results and baseline-vs-LoRA comparisons (PNG, headless)."""

from __future__ import annotations

import io
import os
import warnings
from typing import Any, Dict, Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from circle_rotate.kernel.atomic import write_bytes  # noqa: E402

BASE_COLOUR, LORA_COLOUR = "#9a9a9a", "#d9480f"


def png_bytes(fig) -> bytes:
    """``fig`` as PNG bytes (closed afterwards): the one way every figure here is saved."""
    buf = io.BytesIO()
    with warnings.catch_warnings():  # a CJK file name in a title: drawn as boxes, not a warning per glyph
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _centroids(row: Mapping[str, Any]) -> Optional[np.ndarray]:
    pts = row.get("series", {}).get("subject_drift", {}).get("centroids")
    return np.asarray(pts, float) if pts else None


def _trajectory(ax, pts: np.ndarray, colour: str, label: str) -> None:
    rel = pts - pts.mean(axis=0)
    ax.plot(rel[:, 0], rel[:, 1], "-o", ms=2.5, lw=1.2, color=colour, label=label)
    ax.plot(rel[0, 0], rel[0, 1], "s", ms=5, color=colour)


def results_figure(rows: Sequence[Mapping[str, Any]]) -> Optional[bytes]:
    """Drift per video (bars) and each video's centroid path around its mean; None without drift."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("drift") is not None]
    if not ok:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.bar(range(len(ok)), [r["drift"] for r in ok], color=LORA_COLOUR)
    ax1.set_xticks(range(len(ok)), [r["video"] for r in ok], rotation=60, ha="right", fontsize=7)
    ax1.set_ylabel("subject drift (px)")
    ax1.set_title("subject drift per video")
    cmap = plt.get_cmap("tab10")
    for i, r in enumerate(ok):
        pts = _centroids(r)
        if pts is not None:
            _trajectory(ax2, pts, cmap(i % 10), r["video"] if len(ok) <= 10 else None)
    ax2.invert_yaxis()  # image coordinates: y down
    ax2.set_aspect("equal", adjustable="datalim")
    ax2.set_xlabel("x - mean (px)")
    ax2.set_ylabel("y - mean (px)")
    ax2.set_title("subject centroid paths (square = first frame)")
    if len(ok) <= 10:
        ax2.legend(fontsize=7)
    return png_bytes(fig)


def plot_results(rows: Sequence[Mapping[str, Any]], path: os.PathLike | str) -> bool:
    """Write :func:`results_figure` to ``path``; False when there was nothing to plot."""
    data = results_figure(rows)
    if data is None:
        return False
    write_bytes(path, data)
    return True


def trajectories_figure(pairs: Sequence[Any]) -> Optional[bytes]:
    """One small panel per paired video: baseline and LoRA centroid paths on common axes (the
    caller passes the pairs the drift statistics hold; the title counts those drawn)."""
    pairs = [p for p in pairs if _centroids(p.baseline) is not None and _centroids(p.lora) is not None]
    if not pairs:
        return None
    cols = min(4, len(pairs))
    rows_n = int(np.ceil(len(pairs) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 3.0 * rows_n), squeeze=False)
    for ax, p in zip(axes.ravel(), pairs):
        _trajectory(ax, _centroids(p.baseline), BASE_COLOUR, f"baseline {p.baseline.get('drift', 0):.1f}px")
        _trajectory(ax, _centroids(p.lora), LORA_COLOUR, f"LoRA {p.lora.get('drift', 0):.1f}px")
        ax.invert_yaxis()
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(p.name, fontsize=8)
        ax.legend(fontsize=6)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(pairs):]:
        ax.axis("off")
    fig.suptitle(f"subject centroid around its mean (px, y down), n={len(pairs)}")
    return png_bytes(fig)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def paired_bars_figure(pairs: Sequence[Any], column: str, label: str) -> Optional[bytes]:
    """Baseline and LoRA values of one column side by side for each paired video with a number
    on both sides (the title counts them)."""
    pairs = [p for p in pairs if _number(p.baseline.get(column)) and _number(p.lora.get(column))]
    if not pairs:
        return None
    x = np.arange(len(pairs))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(pairs) + 2), 4))
    ax.bar(x - 0.2, [p.baseline[column] for p in pairs], 0.4, color=BASE_COLOUR, label="baseline")
    ax.bar(x + 0.2, [p.lora[column] for p in pairs], 0.4, color=LORA_COLOUR, label="LoRA")
    ax.set_xticks(x, [p.name for p in pairs], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(label)
    ax.set_title(f"{label} per video, n={len(pairs)}")
    ax.legend()
    return png_bytes(fig)


def distributions_figure(comparisons: Sequence[Any], held: Mapping[str, Sequence[Any]]) -> Optional[bytes]:
    """Per numeric column, the baseline and LoRA distributions (box + points) over ``held[column]``,
    the pairs its statistics hold (the panel's title gives their n)."""
    comps = [c for c in comparisons if c.n >= 1]
    if not comps:
        return None
    cols = min(3, len(comps))
    rows_n = int(np.ceil(len(comps) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 3.2 * rows_n), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, c in zip(axes.ravel(), comps):
        pairs = [p for p in held.get(c.column, ()) if _number(p.baseline.get(c.column)) and _number(p.lora.get(c.column))]
        data = [[p.baseline[c.column] for p in pairs], [p.lora[c.column] for p in pairs]]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks([1, 2], ["baseline", "LoRA"])
        for i, (vals, colour) in enumerate(zip(data, (BASE_COLOUR, LORA_COLOUR)), start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(vals)), vals, s=10, color=colour, zorder=3)
        ax.set_title(f"{c.label}, n={len(pairs)}", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(comps):]:
        ax.axis("off")
    return png_bytes(fig)


def compare_figures(comparisons: Sequence[Any], held: Mapping[str, Sequence[Any]]) -> Dict[str, bytes]:
    """All comparison figures by file name (only those with something to show).

    Args:
        comparisons: :class:`circle_rotate.eval.compare.Comparison` list.
        held: per column, the pairs its statistics hold (:func:`circle_rotate.eval.compare.held_pairs`):
            a figure draws those and no others (the drift panels the pairs whose drift is reliable
            on both sides), so the n in its title is the table's.
    """
    drift = held.get("drift", ())
    figs: Dict[str, Optional[bytes]] = {
        "trajectories.png": trajectories_figure(drift),
        "drift_per_video.png": paired_bars_figure(drift, "drift", "subject drift (px)"),
        "distributions.png": distributions_figure(comparisons, held),
    }
    return {k: v for k, v in figs.items() if v is not None}
