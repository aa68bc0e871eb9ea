"""``bench_accuracy``: readings paired with the generator's truth, with the subject found or,
with ``--first-mask``, given as the generator's exact first-frame mask (the follower alone)."""

from __future__ import annotations

import numpy as np
import pytest

from circle_rotate.eval.subject_find import BASES
from circle_rotate.selfcheck.bench_accuracy import measure, report, score
from circle_rotate.selfcheck.synthetic.turntable import DriftPath, TurntableSpec

SPECS = (
    TurntableSpec(name="still", width=256, height=160, frames=17, camera="static", subject="stack", seed=3),
    TurntableSpec(name="orbit", width=256, height=160, frames=17, subject="box", seed=4, total_angle_deg=45.0,
                  drift=DriftPath("linear", 10.0, angle_deg=0.0)),
)


@pytest.fixture(scope="module")
def readings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("acc")
    found = measure(SPECS, folder, jobs=1, metrics=["subject_drift"], column="drift")
    given = measure(SPECS, folder, jobs=1, metrics=["subject_drift"], column="drift", given="mask")
    boxed = measure(SPECS, folder, jobs=1, metrics=["subject_drift"], column="drift", given="box")
    return found, given, boxed


def test_the_first_mask_or_box_reaches_the_evaluation(readings):
    found, given, boxed = readings
    assert [r.found_by for r in given] == ["user_mask", "user_mask"]
    assert [r.found_by for r in boxed] == ["user_box", "user_box"]
    assert all(r.found_by in BASES and r.found_by not in ("user_mask", "user_box") for r in found)


def test_readings_are_paired_with_their_truth(readings):
    found, given, boxed = readings
    for rs in (found, given, boxed):
        still, orbit = rs
        assert still.truth <= 1e-9 and still.measured <= 1e-9  # a static shot reads 0, found or given
        assert orbit.truth > 1.0 and orbit.measured is not None and np.isfinite(orbit.measured)
    assert given[1].within  # the exact first mask, followed over a 45-degree turn (measured 0.1 px off)
    assert boxed[1].within  # its tight box, cut and followed (measured 0.04 px off)
    s = score(given)
    assert s.count == 2 and s.static_max <= 1e-9
    text = report(given, s, "title")
    assert "still" in text and "orbit" in text and "median |error|" in text
