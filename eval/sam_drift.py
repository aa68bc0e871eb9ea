"""The study's subject drift with YOLO + SAM (``circle_rotate/metrics/subject_drift.py`` in the
reference), with its pre- and post-processing reproduced exactly and shared with the default:

- frames: the clip's sampled frames (:meth:`Clip.sampled`, the default's sampling), RGB, decoded
  to the same pixels as the reference's ``cv2.VideoCapture``;
- detector input: that RGB array as it is. Ultralytics reads a numpy image as BGR, so the
  detector sees red and blue swapped; the reference does the same, and so do we, so that the
  numbers stay comparable with the study's;
- the box: among COCO car / bus / truck detections with confidence above 0.25 the most
  confident (the first of equals); without one, the largest box if its confidence is above
  0.2; else the frame has no subject. Compared in float32, as torch compares them;
- the mask: SAM on the RGB frame with that box, three masks, the one of highest score;
- the centroid: the mean x and y of the mask's pixels (:func:`mask_centroid`); frames without a
  box or with an empty mask are left out;
- drift: :func:`circle_rotate.eval.drift.drift_of` over the kept centroids (at least two);
- subject / global flow: the shared Farneback flows between consecutive sampled frames; the
  global mean over every pair, the subject mean inside the earlier frame's mask over the
  pairs whose earlier frame has one.

The models only need the call interfaces below, which is how the tests drive this module
with stand-ins and check it against the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from circle_rotate.eval.context import EvalContext, MetricResult
from circle_rotate.eval.drift import drift_of
from circle_rotate.eval.flow import magnitude
from circle_rotate.eval.learned_needs import Unavailable, _device, _need, _weights

VEHICLE_CLASSES = (2, 5, 7)  # COCO car, bus, truck
VEHICLE_CONF = np.float32(0.25)
ANY_CONF = np.float32(0.2)


class Detector(Protocol):
    """An ultralytics ``YOLO``: called on an image, returns results whose first has ``.boxes``
    with ``xyxy`` (N, 4), ``cls`` (N,) and ``conf`` (N,) tensors."""

    def __call__(self, image: np.ndarray, verbose: bool = ...) -> Sequence[Any]: ...


class Segmenter(Protocol):
    """A segment-anything ``SamPredictor``."""

    def set_image(self, image: np.ndarray) -> None: ...

    def predict(self, *, box: np.ndarray, multimask_output: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def _numpy(t: Any, dtype=np.float32) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=dtype)


def pick_box(xyxy: Any, cls: Any, conf: Any) -> Optional[np.ndarray]:
    """The subject's box among one frame's detections (see the module doc), float32 (4,), or None."""
    boxes, classes, scores = _numpy(xyxy).reshape(-1, 4), _numpy(cls), _numpy(conf)
    if len(boxes) == 0:
        return None
    vehicle = np.isin(classes.astype(np.int64), VEHICLE_CLASSES) & (scores > VEHICLE_CONF)
    if vehicle.any():
        ranked = np.where(vehicle, scores, -np.inf)
        return boxes[int(np.argmax(ranked))].copy()  # argmax: the first of equals
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # float32, as the tensors multiply
    j = int(np.argmax(areas))
    return boxes[j].copy() if scores[j] > ANY_CONF else None


def mask_centroid(mask: np.ndarray) -> Optional[Tuple[float, float]]:
    """(x, y): the mean column and row of a boolean mask's pixels; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return float(xs.mean()), float(ys.mean())


@dataclass(frozen=True)
class SamDrift:
    """The metric on one clip, with what each sampled frame contributed."""

    drift: Optional[float]  # None: fewer than two frames with a subject
    subject_flow: Optional[float]
    global_flow: float
    boxes: Tuple[Optional[Tuple[float, ...]], ...]  # per sampled frame: the box SAM was given
    centroids: Tuple[Optional[Tuple[float, float]], ...]  # per sampled frame

    @property
    def frames_with_subject(self) -> int:
        return sum(c is not None for c in self.centroids)


def sam_drift(frames: np.ndarray, indices: Sequence[int], detector: Detector, segmenter: Segmenter,
              flow: Callable[[int, int], np.ndarray]) -> SamDrift:
    """Subject drift, subject flow and global flow on the sampled ``indices`` of ``frames``.

    Args:
        frames: (T, H, W, 3) uint8 RGB.
        indices: the sampled frame numbers (the clip's :meth:`sampled`).
        detector, segmenter: YOLO and a SAM predictor (or anything with their call interface).
        flow: ``flow(i, j)`` -> (H, W, 2) Farneback flow from frame i to frame j (the shared cache).
    """
    boxes: List[Optional[Tuple[float, ...]]] = []
    centres: List[Optional[Tuple[float, float]]] = []
    subject, whole = [], []
    for k, i in enumerate(indices):
        frame = frames[int(i)]
        result = detector(frame, verbose=False)[0].boxes
        box = pick_box(result.xyxy, result.cls, result.conf) if len(result) else None
        mask = None
        if box is not None:
            segmenter.set_image(frame)
            masks, scores, _ = segmenter.predict(box=box, multimask_output=True)
            mask = np.asarray(masks[int(np.argmax(scores))], bool)
        boxes.append(None if box is None else tuple(float(v) for v in box))
        centres.append(mask_centroid(mask) if mask is not None else None)
        if k < len(indices) - 1:
            mag = magnitude(flow(int(i), int(indices[k + 1])))
            whole.append(float(np.mean(mag, dtype=np.float64)))
            if mask is not None and mask.any():
                subject.append(float(np.mean(mag[mask], dtype=np.float64)))
    kept = [c for c in centres if c is not None]
    return SamDrift(drift_of(np.array(kept)) if len(kept) >= 2 else None,
                    float(np.mean(subject)) if subject else None, float(np.mean(whole)), tuple(boxes), tuple(centres))


def weight_path(ctx: EvalContext, name: str) -> Optional[str]:
    """``--weights NAME=PATH``, ``CIRCLE_ROTATE_<NAME>_WEIGHTS``, else the file
    ``circle-rotate download eval-weights`` put in the Hugging Face cache (offline lookup)."""
    given = _weights(ctx, name)
    if given:
        return given
    from circle_rotate.musubi.downloads import cached_file

    found = cached_file("eval-weights", name)
    return str(found) if found else None


def load_models(yolo_path: str, sam_path: str, device: str) -> Tuple[Detector, Segmenter]:
    """YOLO and a SAM ViT-B predictor from local checkpoint files (the reference's models)."""
    from segment_anything import SamPredictor, sam_model_registry
    from ultralytics import YOLO

    return YOLO(yolo_path), SamPredictor(sam_model_registry["vit_b"](checkpoint=sam_path).to(device))


def compute_subject_drift_sam(ctx: EvalContext) -> MetricResult:
    """The study's subject drift: YOLOv8 box (vehicles first, else the largest box), SAM mask inside
    it, centroid std over the sampled frames (frames without a subject are left out, as in the reference)."""
    _need("ultralytics", "ultralytics")
    _need("segment_anything", "segment-anything")
    yolo_path, sam_path = weight_path(ctx, "yolo"), weight_path(ctx, "sam")
    missing = [n for n, p in (("yolo", yolo_path), ("sam", sam_path)) if not p or not Path(p).is_file()]
    if missing:
        raise Unavailable(f"no local {' and '.join(missing)} weights: run `circle-rotate download eval-weights` once "
                          "(or pass --weights yolo=yolov8n.pt --weights sam=sam_vit_b_01ec64.pth)")
    detector, segmenter = ctx.shared("yolo_sam", lambda _: load_models(yolo_path, sam_path, _device()))
    result = sam_drift(ctx.clip.frames, ctx.clip.sampled(), detector, segmenter, ctx.flows.get)
    notes = ()
    if result.drift is None:
        notes = (f"subject_drift_sam: only {result.frames_with_subject} sampled frame(s) with a detected subject; "
                 "the drift needs two",)
    values = {"drift_sam": result.drift, "subject_flow_sam": result.subject_flow,
              "sam_frames": result.frames_with_subject}
    series = {"frames": [int(i) for i in ctx.clip.sampled()], "boxes": [list(b) if b else None for b in result.boxes],
              "centroids": [list(c) if c else None for c in result.centroids]}
    return MetricResult(values, series=series, notes=notes)
