"""Record what the reference's YOLO + SAM subject drift does on the stand-in clip, for
``test_sam_drift.py`` to hold our implementation to it.

Runs the reference's own file (``circle_rotate/metrics/subject_drift.py`` of a
``Jklaity/Circle-Rotate`` checkout, imported from there, nothing copied) on the clip of
:mod:`sam_fakes` written as lossless PNG frames: its ``extract_frames`` decodes and samples
them, its ``calculate_subject_drift`` runs with the stand-in YOLO and, in a second run, with
a tiny random-weight SAM through segment-anything's real ``SamPredictor``, and (with
``--ultralytics``) with a random-weight YOLOv8n whose detections are recorded too. Every array
the models were handed is recorded as a digest, with the results.

    python tests/sam_reference.py PATH/TO/Circle-Rotate [--ultralytics] [--out tests/data/sam_reference.json]

ultralytics cannot be installed next to this project's CPU torch (it requires torchvision); for
``--ultralytics`` it was installed with ``pip install --no-deps --target DIR ultralytics
ultralytics-thop`` and put on PYTHONPATH with a ``torchvision`` dist-info stub (ultralytics asks
for the installed version), under the import shim of ``tiny_sam.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sam_fakes import (TINY_SAM_FRAMES, FakePredictor, FakeYolo, clip_frames, digest,  # noqa: E402
                       write_frame_folder)
from tiny_sam import torchvision_shim, tiny_sam  # noqa: E402


class Recording:
    """Wraps a predictor and digests what it is handed (as FakePredictor does itself)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def set_image(self, image, image_format="RGB"):
        self.calls.append({"image": digest(image)})
        return self.inner.set_image(image, image_format)

    def predict(self, **kw):
        self.calls[-1]["box"] = digest(kw["box"])
        return self.inner.predict(**kw)


class Recorded:
    """Wraps a YOLO: digests each image it is handed and keeps the detections it returned."""

    def __init__(self, inner):
        self.inner, self.calls, self.boxes = inner, [], []

    def __call__(self, image, verbose=True):
        self.calls.append(digest(image))
        results = self.inner(image, verbose=verbose)
        b = results[0].boxes
        self.boxes.append({"xyxy": b.xyxy.tolist(), "cls": b.cls.tolist(), "conf": b.conf.tolist()})
        return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", type=Path, help="a Jklaity/Circle-Rotate checkout")
    ap.add_argument("--out", type=Path, default=HERE / "data" / "sam_reference.json")
    ap.add_argument("--commit", help="the checkout's commit, when it is not a git work tree")
    ap.add_argument("--ultralytics", action="store_true",
                    help="also run a random-weight YOLOv8n (ultralytics must be importable) and record its detections")
    args = ap.parse_args()
    source = args.reference / "circle_rotate" / "metrics" / "subject_drift.py"
    spec = importlib.util.spec_from_file_location("reference_subject_drift", source)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    commit = args.commit or subprocess.run(["git", "-C", str(args.reference), "rev-parse", "HEAD"], capture_output=True,
                                           text=True).stdout.strip() or "unknown"
    frames = clip_frames()
    with tempfile.TemporaryDirectory() as tmp:
        sampled = ref.extract_frames(write_frame_folder(frames, Path(tmp) / "clip"), num_frames=16)
    record = {"reference": f"Jklaity/Circle-Rotate@{commit} circle_rotate/metrics/subject_drift.py",
              "clip": digest(frames), "sampled": [digest(f) for f in sampled]}
    yolo, fake = FakeYolo(), FakePredictor()
    record["fake"] = {"result": ref.calculate_subject_drift(sampled, yolo, fake), "detector": yolo.calls,
                      "segmenter": fake.calls}
    with torchvision_shim():
        from segment_anything import SamPredictor

        yolo, sam = FakeYolo(), Recording(SamPredictor(tiny_sam(0)))
        record["tiny_sam"] = {"result": ref.calculate_subject_drift(sampled[:TINY_SAM_FRAMES], yolo, sam),
                              "detector": yolo.calls,
                              "segmenter": sam.calls}
    if args.ultralytics:
        with torchvision_shim():
            from tiny_yolo import random_yolov8n

            yolo, fake = Recorded(random_yolov8n(0)), FakePredictor()
            record["yolov8n"] = {"result": ref.calculate_subject_drift(sampled, yolo, fake), "detector": yolo.calls,
                                 "segmenter": fake.calls}
        # 16 x 300 float32 detections: a compressed array, not JSON text.
        rows = [np.concatenate([np.float32(b["xyxy"]).reshape(-1, 4), np.float32(b["cls"])[:, None],
                                np.float32(b["conf"])[:, None]], axis=1) for b in yolo.boxes]
        np.savez_compressed(args.out.with_name(args.out.stem + "_yolov8n.npz"), detections=np.concatenate(rows),
                            counts=np.array([len(r) for r in rows]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v["result"] for k, v in record.items() if isinstance(v, dict)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
