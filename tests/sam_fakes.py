"""Stand-ins with the call interfaces of ultralytics ``YOLO`` and segment-anything's
``SamPredictor``, and a clip whose pictures tell them what to find.

Each subject in the clip is a rectangle whose first channel is exactly 255 (nothing else
is); its second channel names its confidence and its third its COCO class. The stand-ins
read the array exactly as they are given it, so passing BGR where the reference passes RGB,
another frame, a copy with other values or a box in another type changes what they answer.
Every call is recorded (a digest of each array) so two pipelines can be compared call by call.

Written for the subject_drift_sam tests and for ``tests/sam_reference.py``, which runs the
reference's own code with them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np
import torch

# second channel -> confidence (float32, as YOLO's tensors): 0.25 and 0.2 sit exactly on the thresholds
CONFIDENCE = {10: 0.25, 20: 0.2, 30: 0.6, 40: 0.5, 50: 0.7, 60: 0.9, 70: 0.3, 80: 0.26}
PERSON, DOG, CAR, BUS, TRUCK = 0, 16, 2, 5, 7
FRAMES, HEIGHT, WIDTH = 20, 120, 160
TINY_SAM_FRAMES = 8  # the tiny-SAM comparison runs on the first 8 sampled frames: a real SAM costs ~1 s a frame


def digest(a: np.ndarray) -> str:
    a = np.asarray(a)
    return hashlib.sha1(f"{a.dtype}{a.shape}".encode() + np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def _scene(t: int) -> List[tuple]:
    """(x, y, w, h, confidence key, class) of the rectangles in frame ``t``: one case per t % 5."""
    dx, dy = 2 * t, (t * 3) % 7
    case = t % 5
    if case == 0:  # a car, a less confident bus and a large, more confident person: the car wins
        return [(20 + dx, 30 + dy, 24, 16, 30, CAR), (80, 20, 50, 70, 60, PERSON), (10, 95, 30, 20, 80, BUS)]
    if case == 1:  # two trucks of equal confidence: the first (top-left) wins; a bus exactly at 0.25 does not count
        return [(10 + dx, 10 + dy, 30, 20, 40, TRUCK), (90, 60, 40, 30, 40, TRUCK), (40, 97, 40, 18, 10, BUS)]
    if case == 2:  # no vehicle above 0.25: the largest box, whatever its class
        return [(30 + dx, 25 + dy, 60, 50, 50, PERSON), (135, 5, 20, 15, 10, CAR), (5, 90, 20, 15, 60, DOG)]
    if case == 3:  # the largest box has confidence exactly 0.2: no subject in this frame
        return [(40 + dx, 30 + dy, 70, 60, 20, DOG), (5, 5, 20, 15, 60, PERSON)]
    return []  # nothing detected at all


def clip_frames(seed: int = 0) -> np.ndarray:
    """(FRAMES, HEIGHT, WIDTH, 3) uint8 RGB: textured background, the rectangles of each frame."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.integers(0, 230, (HEIGHT, WIDTH, 3)).astype(np.uint8), (5, 5), 0)
    out = []
    for t in range(FRAMES):
        img = np.roll(base, 3 * t, axis=1).copy()  # the background slides: the flows are not zero
        for x, y, w, h, key, cls in _scene(t):
            img[y:y + h, x:x + w] = (255, key, cls * 10)
            img[y + h // 3:y + h // 2, x + 2:x + w // 2, 1:] = (key, 200)  # texture inside, same key in channel 1
        out.append(img)
    return np.stack(out)


def write_frame_folder(frames: np.ndarray, folder: Path) -> str:
    """PNG frames (lossless, so the rectangles keep their exact values); returns the
    ``cv2.VideoCapture`` pattern for them."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"frame_{i:04d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    return str(folder / "frame_%04d.png")


class _Boxes:
    def __init__(self, xyxy, cls, conf):
        self.xyxy = torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4)
        self.cls = torch.tensor(cls, dtype=torch.float32)
        self.conf = torch.tensor(conf, dtype=torch.float32)

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])


class _Result:
    def __init__(self, boxes: _Boxes):
        self.boxes = boxes


class FakeYolo:
    """``YOLO(...)(image, verbose=False)[0].boxes``: the marked rectangles of ``image``."""

    def __init__(self):
        self.calls: List[str] = []

    def __call__(self, image: np.ndarray, verbose: bool = True):
        self.calls.append(digest(image))
        marked = (image[..., 0] == 255).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(marked, connectivity=4)
        xyxy, cls, conf = [], [], []
        for k in range(1, n):
            x, y, w, h, _ = stats[k]
            key, c = int(image[y, x, 1]), int(image[y, x, 2]) // 10
            xyxy.append([x, y, x + w, y + h])
            cls.append(c)
            conf.append(CONFIDENCE.get(key, 0.01))
        return [_Result(_Boxes(xyxy, cls, conf))]


class ReplayYolo:
    """Answers each call with the next recorded set of detections (a real YOLO's, recorded by
    ``sam_reference.py``), as the same tensors."""

    def __init__(self, path: Path):
        with np.load(path) as data:
            rows, counts = data["detections"], data["counts"]
        self._recorded = np.split(rows, np.cumsum(counts)[:-1])
        self.calls: List[str] = []

    def __call__(self, image: np.ndarray, verbose: bool = True):
        self.calls.append(digest(image))
        r = self._recorded[len(self.calls) - 1]
        return [_Result(_Boxes(r[:, :4], r[:, 4], r[:, 5]))]


class FakePredictor:
    """``SamPredictor``: ``set_image`` then ``predict(box=..., multimask_output=True)`` -> three
    masks drawn from the box and the image's content, and their scores."""

    def __init__(self):
        self.calls: List[Dict[str, str]] = []
        self._image = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        assert image_format == "RGB"
        self._image = image
        self.calls.append({"image": digest(image)})

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True,
                return_logits=False):
        assert multimask_output and isinstance(box, np.ndarray)
        self.calls[-1]["box"] = digest(box)  # dtype and values: float32 (4,) as YOLO's tensor gives it
        img = self._image.astype(np.float32)
        h, w = img.shape[:2]
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        region = np.zeros((h, w), bool)
        region[max(y0, 0):y1, max(x0, 0):x1] = True
        inner = region & (img[..., 1] > img[..., 2])  # the texture band, or the box itself
        top = region & (np.arange(h)[:, None] < (y0 + y1) / 2)
        masks = np.stack([inner, region, top])
        scores = np.array([img[..., 1][region].mean() / 255, 0.35, img[..., 2][region].mean() / 255], np.float32)
        return masks, scores, np.zeros((3, 8, 8), np.float32)
