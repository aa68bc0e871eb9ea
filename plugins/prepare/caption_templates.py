"""Caption templates in the Circle-Rotate structure: subject, context, viewpoint, shot scale,
trajectory; English and Chinese; tags or one sentence. Pure functions, no weights.

The Circle-Rotate tag sets read like "Urban Night View, Static Display, Side View (Right),
Medium Shot, Circle Right->Left". The trajectory tag is the one thing measured from the
pixels, and THE mapping from our direction convention to it lives here
(:data:`TRAJECTORY`): the camera travelling towards its own right ("right",
counter-clockwise seen from above) sweeps across the scene from left to right, so it is
"Circle Left->Right"; "left" (clockwise) is "Circle Right->Left".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

LANGS = ("en", "zh")
STYLES = ("tags", "sentence")

#: direction (project convention) -> trajectory tag, per language.
TRAJECTORY = {
    "en": {"right": "Circle Left->Right", "left": "Circle Right->Left"},
    "zh": {"right": "从左向右环绕", "left": "从右向左环绕"},
}

#: Common tag values and their Chinese; other values pass through unless a *_zh is given.
ZH = {
    "front view": "正面视角", "rear view": "背面视角", "back view": "背面视角", "side view": "侧面视角",
    "side view (left)": "左侧视角", "side view (right)": "右侧视角", "three-quarter view": "四分之三侧视角",
    "top view": "俯视视角", "low angle": "仰视视角", "high angle": "俯拍视角", "eye level": "平视视角",
    "close-up": "特写", "close up": "特写", "medium close-up": "中近景", "medium shot": "中景", "full shot": "全景",
    "wide shot": "全景", "long shot": "远景", "extreme long shot": "大远景",
    "urban night view": "城市夜景", "urban day view": "城市日景", "static display": "静态展示", "studio": "影棚",
    "indoor": "室内", "outdoor": "户外", "outdoor daylight": "户外日光", "showroom": "展厅", "street": "街道",
    "park": "公园", "white background": "白色背景", "turntable": "转台",
}


@dataclass(frozen=True)
class CaptionFields:
    """What a caption says. ``*_zh`` override the built-in Chinese of a value."""

    subject: str
    context: Tuple[str, ...] = ()
    viewpoint: Optional[str] = None
    shot_scale: Optional[str] = None
    direction: str = "none"  # measured: "right" | "left" | "none"
    subject_zh: Optional[str] = None
    context_zh: Tuple[str, ...] = ()
    viewpoint_zh: Optional[str] = None
    shot_scale_zh: Optional[str] = None
    speed_deg_s: Optional[float] = None
    steady: Optional[bool] = None


def zh(value: Optional[str], override: Optional[str] = None) -> Optional[str]:
    """Chinese for a tag value: the override, the built-in word, or the value itself."""
    if override:
        return override
    if value is None:
        return None
    return ZH.get(value.strip().lower(), value)


def _fields_in(f: CaptionFields, lang: str) -> Tuple[str, Tuple[str, ...], Optional[str], Optional[str], Optional[str]]:
    traj = TRAJECTORY[lang].get(f.direction)
    if lang == "en":
        return f.subject, f.context, f.viewpoint, f.shot_scale, traj
    ctx = f.context_zh or tuple(zh(c) for c in f.context)
    return (zh(f.subject, f.subject_zh), ctx, zh(f.viewpoint, f.viewpoint_zh), zh(f.shot_scale, f.shot_scale_zh), traj)


def _pace(f: CaptionFields, lang: str) -> str:
    words = []
    if f.steady:
        words.append({"en": "smoothly", "zh": "平稳地"}[lang])
    if f.speed_deg_s is not None and f.speed_deg_s > 0:
        if f.speed_deg_s < 12:
            words.append({"en": "slowly", "zh": "缓慢地"}[lang])
        elif f.speed_deg_s > 45:
            words.append({"en": "quickly", "zh": "快速地"}[lang])
    return (" and " if lang == "en" else "").join(words)


def _sentence_en(subject, ctx, view, shot, f: CaptionFields) -> str:
    first = subject[:1].upper() + subject[1:]
    parts = [first] + [c.lower() for c in ctx]
    text = ", ".join(parts) + "."
    framing = ", ".join(x for x in (view, shot) if x)
    if framing:
        text += f" {framing[:1].upper() + framing[1:]}."
    if f.direction in ("right", "left"):
        sweep = "from left to right" if f.direction == "right" else "from right to left"
        pace = _pace(f, "en")
        text += f" The camera {pace + ' ' if pace else ''}circles around the subject {sweep}."
    return text


def _sentence_zh(subject, ctx, view, shot, f: CaptionFields) -> str:
    text = "，".join([subject, *ctx, *(x for x in (view, shot) if x)]) + "。"
    if f.direction in ("right", "left"):
        sweep = "从左向右" if f.direction == "right" else "从右向左"
        text += f"镜头{_pace(f, 'zh')}{sweep}环绕主体拍摄。"
    return text


def render_caption(fields: CaptionFields, *, lang: str = "en", style: str = "tags") -> str:
    """The caption text.

    Args:
        fields: what to say.
        lang: "en" or "zh".
        style: "tags" (comma-separated Circle-Rotate tags) or "sentence".

    Raises:
        ValueError: unknown ``lang`` or ``style``.
    """
    if lang not in LANGS or style not in STYLES:
        raise ValueError(f"lang must be one of {LANGS} and style one of {STYLES}, got {lang!r}, {style!r}")
    subject, ctx, view, shot, traj = _fields_in(fields, lang)
    if style == "tags":
        sep = ", " if lang == "en" else "，"
        return sep.join(x for x in (subject, *ctx, view, shot, traj) if x)
    return (_sentence_en if lang == "en" else _sentence_zh)(subject, ctx, view, shot, fields)
