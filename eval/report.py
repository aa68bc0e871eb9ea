"""One self-contained HTML report of a baseline-vs-LoRA comparison (PNGs embedded as base64)."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple
from urllib.parse import quote

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l{text-align:left}.better{color:#1a7f37;font-weight:600}.worse{color:#c92a2a;font-weight:600}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}.note{color:#666;font-size:13px}
"""


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return html.escape(str(v))


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:+.1%}"


def _sheet_link(row: Mapping[str, Any], base_dir: Optional[Path], label: str) -> str:
    """A link to the row's contact sheet, relative to the report's folder."""
    path = row.get("contact_sheet")
    if not path:
        return ""
    href = os.path.relpath(path, base_dir) if base_dir is not None else path
    # a file name is not a URL: "#", "%", "?" or a space in it would end or bend the link
    return f" <a href='{html.escape(quote(Path(href).as_posix()))}'>{label}</a>"


def _interval(low: Any, high: Any) -> str:
    """``[low, high]``; "-" where there is none (under 3 pairs, or no spread in the differences)."""
    return "-" if low is None or high is None else f"[{_fmt(low)}, {_fmt(high)}]"


def _confidence(row: Mapping[str, Any]) -> str:
    c = row.get("drift_confidence")
    text = _fmt(c, 2)
    return f"<span class=worse title='{html.escape(str(row['drift_unreliable']))}'>{text} unreliable</span>" \
        if row.get("drift_unreliable") else text


def render_report(*, title: str, baseline: str, lora: str, pairs: Sequence[Any], comparisons: Sequence[Any],
                  figures: Mapping[str, bytes], notes: Sequence[str] = (), left_out: Sequence[Tuple[Any, str]] = (),
                  left_out_all: Sequence[Tuple[Any, str]] = (), unpaired: Sequence[Mapping[str, Any]] = (),
                  base_dir: Optional[os.PathLike | str] = None) -> str:
    """The report's HTML text.

    Args:
        title: page heading.
        baseline, lora: where each side came from (shown as given).
        pairs: :class:`circle_rotate.eval.pairing.Pair` list.
        comparisons: :class:`circle_rotate.eval.compare.Comparison` list.
        figures: PNG bytes by file name (embedded in that order).
        notes: extra lines (unpaired videos, failures).
        left_out: (pair, reason) of the pairs left out of the drift statistics.
        left_out_all: (pair, reason) of the pairs left out of every statistic (different first
            frames, not generated alike).
        unpaired: rows of the videos evaluated without a pair (their contact sheets are linked).
        base_dir: the report's folder (contact sheet links are made relative to it).
    """
    from circle_rotate.eval.paired_stats import relative_change

    base = Path(base_dir) if base_dir is not None else None
    head = ("<tr><th class=l>metric</th><th>n</th><th>baseline mean ± std</th><th>LoRA mean ± std</th><th>change</th>"
            "<th>95% CI of difference</th><th>paired t p</th><th>Wilcoxon p</th><th>Cohen's d</th><th>verdict</th></tr>")
    body = []
    for c in comparisons:
        cls = c.verdict if c.verdict in ("better", "worse") else ""
        body.append(
            f"<tr><td class=l>{html.escape(c.label)}</td><td>{c.n}</td>"
            f"<td>{_fmt(c.baseline_mean)} ± {_fmt(c.baseline_std, 3)}</td><td>{_fmt(c.lora_mean)} ± {_fmt(c.lora_std, 3)}</td>"
            f"<td>{_pct(c.relative_change)}</td><td>{_interval(c.ci_low, c.ci_high)}</td><td>{_fmt(c.p_value, 3)}</td>"
            f"<td>{_fmt(c.wilcoxon_p, 3)}</td><td>{_fmt(c.cohens_d, 3)}</td><td class='{cls}'>{html.escape(c.verdict)}</td></tr>")
    per_video = ["<tr><th class=l>video</th><th>baseline drift</th><th>confidence</th><th>LoRA drift</th>"
                 "<th>confidence</th><th>change</th><th class=l>what was measured</th></tr>"]
    for p in pairs:
        b, l_ = p.baseline.get("drift"), p.lora.get("drift")
        # as the table's: none from a baseline near 0 (a static camera's drift), where any change reads thousands of %
        change = relative_change(b, l_, max(abs(b), abs(l_))) \
            if isinstance(b, (int, float)) and isinstance(l_, (int, float)) else None
        links = _sheet_link(p.baseline, base, "baseline") + _sheet_link(p.lora, base, "LoRA")
        per_video.append(f"<tr><td class=l>{html.escape(p.name)}</td><td>{_fmt(b)}</td><td>{_confidence(p.baseline)}</td>"
                         f"<td>{_fmt(l_)}</td><td>{_confidence(p.lora)}</td><td>{_pct(change)}</td>"
                         f"<td class=l>{links or '-'}</td></tr>")
    dropped = "".join(f"<li>{html.escape(p.name)}: {html.escape(why)}</li>" for p, why in left_out)
    dropped_html = (f"<h2>Left out of the drift statistics</h2><p class=note>A drift reading below the confidence "
                    f"threshold (eval/METRICS.md) on either side leaves its pair out of the drift and subject-flow "
                    f"rows above.</p><ul>{dropped}</ul>") if left_out else ""
    dropped_all = "".join(f"<li>{html.escape(p.name)}: {html.escape(why)}</li>" for p, why in left_out_all)
    if dropped_all:
        dropped_html = (f"<h2>Left out of every statistic</h2><ul>{dropped_all}</ul>") + dropped_html
    alone = "".join(f"<li>{html.escape(r['video'])}{_sheet_link(r, base, 'contact sheet')}</li>" for r in unpaired)
    alone_html = (f"<h2>Unpaired videos</h2><p class=note>Evaluated, but with no video of the other side to compare "
                  f"with (the notes below say why).</p><ul>{alone}</ul>") if alone else ""
    counted = len(pairs) - len(left_out_all)
    paired_text = f"{len(pairs)} paired videos" + (f", {counted} in the statistics ({len(left_out_all)} left out of "
                                                   f"every statistic, below)" if left_out_all else "")
    images = "".join(f"<h3>{html.escape(name)}</h3><img alt='{html.escape(name)}' src='data:image/png;base64,"
                     f"{base64.b64encode(data).decode('ascii')}'>" for name, data in figures.items())
    headline = "".join(f"<li>{html.escape(c.headline())} <b>{html.escape(c.verdict)}</b></li>"
                       for c in comparisons if c.column in ("drift", "subject_flow"))
    note_html = "".join(f"<li class=note>{html.escape(n)}</li>" for n in notes)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_STYLE}</style>"
            f"</head><body><h1>{html.escape(title)}</h1><p>baseline: <code>{html.escape(baseline)}</code><br>"
            f"LoRA: <code>{html.escape(lora)}</code><br>{html.escape(paired_text)}</p><ul>{headline}</ul>"
            f"<h2>Metrics</h2><table>{head}{''.join(body)}</table>"
            "<p class=note>change: LoRA mean relative to baseline mean (- where the baseline mean is under 1% of the "
            "largest reading: from about 0, any change would read thousands of %). CI: the t interval of the mean "
            "paired difference (LoRA - baseline), the paired t-test's own; - under 3 pairs, where no column is called "
            "better or worse. Each video counts as an independent pair: several seeds of one prompt are not "
            "independent (average them per prompt first), and each of these columns is tested at 0.05 on its own, "
            "so one better/worse among many can be chance. Subject drift and subject flow: lower is better. "
            "The figures draw the pairs in the statistics only (n in their titles).</p>"
            f"<h2>Per video</h2><table>{''.join(per_video)}</table>"
            "<p class=note>Contact sheets: the 16 sampled frames with the subject mask's outline and the centroid path."
            f"</p>{dropped_html}{alone_html}<h2>Figures</h2>{images}"
            f"<ul>{note_html}</ul></body></html>\n")
