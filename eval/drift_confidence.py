"""How far a drift reading can be trusted: ``drift_confidence`` (0-1) and what it rests on.

The confidence is the smallest of five checks, each 0-1 (the weakest link decides, so one
failed check is enough to doubt the reading):

- ``found``: what the first frame's subject rests on. The user's box or mask: 1. Saliency,
  with or without motion evidence: its outline contrast (how much more salient the found
  mask is than a ring just outside it, :func:`circle_rotate.eval.subject_find.find_subject`),
  full at ``OUTLINE_FULL``. The image centre alone (nothing stood out): ``CENTRE_ONLY``, a
  prior and nothing more.
- ``rigid``: a rigid subject's area changes little over a clip; a mask that grew or shrank
  by a factor ``r`` (largest over smallest area) took in background or lost the subject:
  ``1 - (r - 1) / AREA_SPAN``.
- ``passes``: the tracker follows the subject forward and then backward; the mean IoU of the
  two passes' masks. Two passes that disagree followed different things.
- ``extent``: an orbit's subject stands in a scene; a mask that covers most of the frame
  took in the floor or the backdrop: 1 up to ``EXTENT_FULL`` of the frame, falling to 0 at
  ``EXTENT_NONE`` (mean mask area over the frame's). A subject the user gave (box or mask) is
  not doubted for its size: a close-up fills the frame.
- ``refined``: the share of sampled frames whose mask the image confirmed (the refinement
  stood, or nothing moved and the mask was held) times the mean IoU of refinement and
  propagation.

Below ``THRESHOLD`` the row gets ``drift_unreliable`` with the weakest check named.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from circle_rotate.eval.subject_mask import SubjectMasks

#: Confidence under which a drift reading is marked unreliable.
THRESHOLD = 0.5
#: Outline contrast at which the ``found`` check is full (see ``FoundSubject.contrast``).
OUTLINE_FULL = 0.4
#: The ``found`` check when only the centre prior found the subject.
CENTRE_ONLY = 0.6
#: Area growth factor (minus one) at which ``rigid`` reaches 0.
AREA_SPAN = 0.6
#: Share of the frame a subject mask may cover with full confidence, and where it reaches 0.
EXTENT_FULL, EXTENT_NONE = 0.35, 0.6

_WHY = {
    "found": "the subject was found with little evidence on the first frames",
    "rigid": "the mask's area changed by more than a rigid subject's would",
    "passes": "following the subject forward and backward gave different masks",
    "refined": "the image did not confirm the tracked mask on many frames",
    "extent": "the mask covers most of the frame (the floor or the backdrop, not a subject)",
}


@dataclass(frozen=True)
class DriftVerdict:
    confidence: float
    checks: Dict[str, float]
    unreliable: Optional[str]  # the reason, or None when the reading stands


def drift_verdict(masks: SubjectMasks) -> DriftVerdict:
    """The confidence of the drift measured on ``masks`` (see the module docstring)."""
    found = masks.found
    given = found.given
    if given:
        basis = 1.0
    elif found.basis in ("motion", "saliency"):
        basis = float(np.clip(found.contrast / OUTLINE_FULL, 0.0, 1.0))
    else:
        basis = CENTRE_ONLY
    areas = np.array([m.sum() for m in masks.masks], np.float64)
    growth = float(areas.max() / max(areas.min(), 1.0))
    steps = masks.steps[1:] or masks.steps
    refined = np.mean([s.source in ("refined", "held") for s in steps]) * np.mean([s.agreement for s in steps])
    checks = {
        "found": basis,
        "rigid": float(np.clip(1.0 - (growth - 1.0) / AREA_SPAN, 0.0, 1.0)),
        "passes": float(np.mean([s.passes_agree for s in masks.steps])),
        "refined": float(refined),
        # a subject the user gave may fill the frame (a close-up): only a found one is doubted for it
        "extent": 1.0 if given else float(np.clip((EXTENT_NONE - areas.mean() / masks.picture_area)
                                                  / (EXTENT_NONE - EXTENT_FULL), 0.0, 1.0)),
    }
    weakest = min(checks, key=checks.get)
    confidence = round(checks[weakest], 4)
    reason = None
    if confidence < THRESHOLD:
        reason = f"{_WHY[weakest]} ({weakest} {checks[weakest]:.2f} < {THRESHOLD})"
    return DriftVerdict(confidence, {k: round(v, 4) for k, v in checks.items()}, reason)
