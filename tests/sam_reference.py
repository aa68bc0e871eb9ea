"""Record what the reference's YOLO + SAM subject drift does on the stand-in clip, for
``test_sam_drift.py`` to hold our implementation to it.

Runs the reference's own file (``circle_rotate/metrics/subject_drift.py`` of a
``Jklaity/Circle-Rotate`` checkout, imported from there, nothing copied) on the clip of
:mod:`sam_fakes` written as lossless PNG frames: its ``extract_frames`` decodes and samples
them, its ``calculate_subject_drift`` runs with the stand-in YOLO and, in a second run, with
a tiny random-weight SAM through segment-anything's real ``SamPredictor``. Every array the
models were handed is recorded as a digest, with the results.

    python tests/sam_reference.py PATH/TO/Circle-Rotate [--out tests/data/sam_reference.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sam_fakes import FakePredictor, FakeYolo, clip_frames, digest, write_frame_folder  # noqa: E402
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", type=Path, help="a Jklaity/Circle-Rotate checkout")
    ap.add_argument("--out", type=Path, default=HERE / "data" / "sam_reference.json")
    ap.add_argument("--commit", help="the checkout's commit, when it is not a git work tree")
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
        record["tiny_sam"] = {"result": ref.calculate_subject_drift(sampled, yolo, sam), "detector": yolo.calls,
                              "segmenter": sam.calls}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k]["result"] for k in ("fake", "tiny_sam")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
