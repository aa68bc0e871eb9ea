"""The picture next to ``prepare_summary.json``: what QC measured and what it kept."""

from __future__ import annotations

from pathlib import Path
from typing import List

from circle_rotate.kernel.atomic import atomic_path

_COLOURS = {"accept": "#2a9d3f", "reject": "#d1495b"}


def plot_summary(clips: List[dict], sources: List[dict], path: Path) -> Path:
    """Scatter of each clip's turning speed against its speed steadiness (colour: verdict,
    marker: motion), and a bar per source status. Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [2, 1]})
    markers = {"orbit": "o", "pan": "s", "static": "x", "shaky": "^", "cut": "D"}
    for verdict, colour in _COLOURS.items():
        for motion, marker in markers.items():
            sel = [c for c in clips if c.get("verdict") == verdict and (c.get("orbit") or {}).get("motion") == motion]
            if sel:
                ax.scatter([(c["orbit"].get("angular_speed_deg_s") or 0) for c in sel],
                           [(c["orbit"].get("speed_cv") or 0) for c in sel], c=colour, marker=marker, alpha=0.8,
                           label=f"{verdict}: {motion} ({len(sel)})")
    ax.set_xlabel("turning speed (deg/s)")
    ax.set_ylabel("speed_cv (lower = steadier)")
    ax.set_title(f"{len(clips)} clips")
    if clips:
        ax.legend(fontsize=8)
    counts = {}
    for s in sources:
        counts[s.get("status", "?")] = counts.get(s.get("status", "?"), 0) + 1
    bx.bar(list(counts), list(counts.values()), color=["#2a9d3f" if k == "ok" else "#888888" for k in counts])
    bx.set_title(f"{len(sources)} sources")
    bx.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return path
