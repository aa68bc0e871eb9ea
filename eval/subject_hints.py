"""Where the user says the subject is: ``--subject-box``, ``--subject-mask``, ``--subject-boxes``.

Read and checked at the edge (the CLI), before any video is decoded; every problem is a
:class:`~circle_rotate.kernel.errors.UserError` naming the flag or file, the key and the fix.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import cv2
import numpy as np

from circle_rotate.eval.subject_mask import SubjectHint
from circle_rotate.kernel.errors import UserError


def parse_box(text: str, *, where: str = "--subject-box",
              fix: str = "give the subject's box on the first frame in pixels, e.g. --subject-box 40,60,140,300"
              ) -> SubjectHint:
    """``"x0,y0,x1,y1"`` (first-frame pixels) as a hint."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        box = tuple(float(p) for p in parts)
    except ValueError:
        box = ()
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1] or min(box) < 0:
        raise UserError(f"{where} {text!r}: expected x0,y0,x1,y1 with x1 > x0 >= 0 and y1 > y0 >= 0", fix=fix)
    return SubjectHint(box=box)  # type: ignore[arg-type]


#: Share of the image's border pixels a subject may cover: a mask over more of it has its
#: background painted white (inverted), as no subject framed in a video fills all four edges.
MASK_BORDER_MAX = 0.75


def read_mask(path: os.PathLike | str) -> SubjectHint:
    """The subject on the first frame from an image: white (over half-bright) on black, or, in an
    image with transparency, its opaque pixels (a cut-out, as background removers save them).
    Half-bright, not non-zero: a JPEG or an anti-aliased brush leaves faint pixels around the subject."""
    p = Path(path)
    if not p.is_file():
        raise UserError("subject mask not found", path=p, fix="pass a PNG the size of the video's frames")
    image = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UserError("not a readable image", path=p, fix="save the mask as a PNG (white subject on black)")
    full = float(np.iinfo(image.dtype).max) if image.dtype.kind in "ui" else 1.0
    channels = 1 if image.ndim == 2 else image.shape[2]
    alpha = image[..., -1] if channels in (2, 4) else None
    if alpha is not None and alpha.min() < full:  # transparency: the opaque part is the subject
        subject = alpha > full / 2
        what = "opaque"
    else:
        grey = image if channels == 1 else image[..., 0] if channels == 2 else image[..., :3].max(axis=2)
        subject = grey > full / 2
        what = "white"
    if not subject.any():
        raise UserError(f"the mask is empty (no {what} pixel over half-bright)", path=p,
                        fix="paint the subject white on black (or save a cut-out with a transparent background)")
    border = np.concatenate([subject[0], subject[-1], subject[:, 0], subject[:, -1]])
    if border.mean() > MASK_BORDER_MAX and not subject.all():  # all of it: said with the frame's size, later
        raise UserError(f"the mask's {what} part covers {border.mean():.0%} of the image's border: its background is "
                        f"painted, not its subject", path=p, fix="invert it: the subject white, the background black")
    return SubjectHint(mask=subject)


def _labelled_boxes(name: str, boxes: Any, path: Path) -> SubjectHint:
    """A labelled set's ``{"0": [...], "12": [...]}``: the first frame's box seeds the subject, the
    later ones bound it (:mod:`circle_rotate.eval.keyframe_boxes`)."""
    example = 'e.g. "boxes": {"0": [x0, y0, x1, y1], "12": [x0, y0, x1, y1]}'
    if not isinstance(boxes, Mapping) or not boxes:
        raise UserError(f"key {name!r}: 'boxes' holds no box", path=path, fix=example)
    frames = {}
    for key in boxes:
        try:
            frames[int(key)] = key
        except ValueError:
            raise UserError(f"key {name!r}: 'boxes' key {key!r} is not a frame number", path=path, fix=example) from None
    first = min(frames)
    if first != 0:
        raise UserError(f"key {name!r}: the first labelled frame is {first}, not 0", path=path,
                        fix="label the subject on frame 0 (the subject is found on the first frame)")
    return SubjectHint.from_boxes({f: _box_of(name, boxes[key], path, frame=f).box for f, key in frames.items()})


def _box_of(name: str, value: Any, path: Path, *, frame: Optional[int] = None) -> SubjectHint:
    if frame is None and isinstance(value, Mapping) and "boxes" in value:  # {"boxes": {"0": [...], "12": [...]}}
        return _labelled_boxes(name, value["boxes"], path)
    label = f"key {name!r}" + ("" if frame is None else f", frame {frame}")
    if not isinstance(value, (list, tuple)):
        raise UserError(f"{label}: expected [x0, y0, x1, y1]", path=path, fix='e.g. {"demo1.mp4": [40, 60, 140, 300]}')
    if frame is None:
        return parse_box(",".join(str(v) for v in value), where=f"{path}: {label}:")
    return parse_box(",".join(str(v) for v in value), where=f"{path}: {label}:",
                     fix=f"give the subject's box on frame {frame} as [x0, y0, x1, y1] in pixels")


class _RepeatedKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_repeats(pairs):
    keys = [k for k, _ in pairs]
    for k in keys:
        if keys.count(k) > 1:
            raise _RepeatedKey(k)
    return dict(pairs)


def read_boxes(path: os.PathLike | str) -> Dict[str, SubjectHint]:
    """A JSON of first-frame boxes keyed by video file name (or stem): ``{"a.mp4": [x0, y0, x1, y1]}``;
    ``{"videos": {...}}`` and per-video ``{"boxes": {"0": [...], "12": [...]}}`` (a labelled set:
    the later frames' boxes bound the subject there) are read too."""
    p = Path(path)
    if not p.is_file():
        raise UserError("subject boxes file not found", path=p, fix='pass a JSON like {"demo1.mp4": [x0, y0, x1, y1]}')
    try:
        data = json.loads(p.read_text(encoding="utf-8"), object_pairs_hook=_no_repeats)
    except _RepeatedKey as exc:
        raise UserError(f"key {exc.key!r} appears twice (JSON keeps only the last)", path=p,
                        fix="give each video (and each frame) one box") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"not valid JSON ({exc})", path=p, fix='e.g. {"demo1.mp4": [x0, y0, x1, y1]}') from None
    if isinstance(data, Mapping) and isinstance(data.get("videos"), Mapping):
        data = data["videos"]
    if not isinstance(data, Mapping) or not data:
        raise UserError("expected an object keyed by video file name", path=p, fix='e.g. {"demo1.mp4": [x0, y0, x1, y1]}')
    return {str(k): _box_of(str(k), v, p) for k, v in data.items()}


def _matching_key(name: str, boxes: Mapping[str, SubjectHint]) -> Optional[str]:
    for key in (name, Path(name).stem):
        if key in boxes:
            return key
    return None


def only_for(name: str, boxes: Mapping[str, SubjectHint]) -> Dict[str, SubjectHint]:
    """The entry of ``boxes`` that :func:`hint_for` would pick for ``name``, alone (empty when
    none): a worker evaluating one video is sent its own hint, not every video's mask."""
    key = _matching_key(name, boxes)
    return {} if key is None else {key: boxes[key]}


def hint_for(name: str, *, boxes: Optional[Mapping[str, SubjectHint]], default: Optional[SubjectHint]
             ) -> Optional[SubjectHint]:
    """The hint for the video file ``name``: by file name, then by stem, else ``default``."""
    key = _matching_key(name, boxes) if boxes else None
    return default if key is None else boxes[key]
