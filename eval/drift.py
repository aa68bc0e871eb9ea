"""Subject drift, subject flow and global flow (``circle_rotate/metrics/subject_drift.py`` in the reference).

On the 16 frames sampled with ``np.linspace(0, n - 1, 16).astype(int)``:

- drift: population standard deviation of the subject mask's centroid, combined over the
  two axes, ``sqrt(std_x^2 + std_y^2)``, in pixels;
- subject flow: mean over consecutive sampled pairs of the mean Farneback magnitude inside
  the earlier frame's subject mask;
- global flow: the same over the whole frame.

The reference finds the mask with YOLO + SAM; here it comes from
:mod:`circle_rotate.eval.subject_mask` (no weights: found once on the first frames, then
followed), and every sampled frame has one. Each reading comes with
:mod:`circle_rotate.eval.drift_confidence`'s verdict.
"""

from __future__ import annotations

import numpy as np

from circle_rotate.media.borders import Bars, find_bars
from circle_rotate.eval.context import EvalContext, MetricResult
from circle_rotate.eval.drift_confidence import drift_verdict
from circle_rotate.eval.fades import Shown, find_shown
from circle_rotate.eval.flow import magnitude
from circle_rotate.eval.subject_find import FoundSubject
from circle_rotate.eval.subject_hints import hint_for
from circle_rotate.eval.subject_mask import SubjectMasks, segment_subject
from circle_rotate.kernel.errors import UserError


#: A drift at most this share of the centroids' magnitude is float round-off, read as exactly 0.
#: ``np.std`` of 16 equal coordinates (a static camera over a still subject: every mask held)
#: is not 0 but about one ulp of them (1.4e-14 to 3.2e-14 px at x = 129, one ulp there 2.8e-14:
#: the mean of 16 equal floats need not be that float), and against it any later drift read as
#: +1e16 %. Round-off of a 16-value mean and std stays within a few tens of ulps (one ulp is
#: 2.2e-16 relative); 1e-13 relative is 450 ulps. It is far under any drift a mask can make:
#: one pixel more in one sampled mask, half a pixel from its centroid, in a mask filling an 8K
#: frame (33 million pixels) moves the centroid 1.5e-8 px, a drift of 3.7e-9 px, where the
#: tolerance at x = 7680 is 7.7e-10 px.
ROUND_OFF = 1e-13


def drift_of(centroids: np.ndarray) -> float:
    """``sqrt(std_x^2 + std_y^2)`` of (K, 2) centroids (population std, pixels); round-off
    (:data:`ROUND_OFF`) is 0."""
    c = np.asarray(centroids, np.float64)
    if not c.size:
        return float("nan")
    # measured from the first centroid (the std is unchanged): equal centroids give exactly 0
    std = (c - c[0]).std(axis=0)
    drift = float(np.sqrt(np.sum(std ** 2)))
    return 0.0 if drift <= ROUND_OFF * max(1.0, float(np.abs(c).max())) else drift


def shown(ctx: EvalContext) -> Shown:
    """The clip's frames between a leading and a trailing fade (:mod:`circle_rotate.eval.fades`)."""
    return ctx.shared("shown", lambda c: find_shown(c.clip.levels))


def subject_masks(ctx: EvalContext) -> SubjectMasks:
    """The clip's subject masks on its sampled frames that show the picture (a fade's are left
    out, as the reference leaves out frames without a detection), computed once per clip."""
    def build(c: EvalContext) -> SubjectMasks:
        idx = shown(c).keep(c.clip.sampled())
        hint = hint_for(c.clip.name, boxes=c.options.get("subject_boxes"), default=c.options.get("subject"))
        if hint is not None and hint.mask is not None and hint.mask.shape != c.clip.frames.shape[1:3]:
            h, w = hint.mask.shape
            raise UserError(f"the subject mask is {w}x{h}, the video's frames {c.clip.size[0]}x{c.clip.size[1]}",
                            path=c.clip.path, fix="give a mask the size of the video's frames")
        problem = hint.problem_in(*c.clip.size) if hint is not None else None
        if problem:
            raise UserError(problem, path=c.clip.path, fix="draw the subject (box or mask) in this video's pixels "
                            f"({c.clip.size[0]}x{c.clip.size[1]}, as displayed), around the whole subject")
        last = max((f for f, _ in hint.later_boxes), default=0) if hint is not None else 0
        if last >= c.clip.count:
            raise UserError(f"a subject box is labelled on frame {last}, and the video has {c.clip.count} frames",
                            path=c.clip.path,
                            fix="key each box by a frame of this video (0 is the first); check the boxes JSON's entry")
        bars = find_bars(c.clip.grey)
        if not bars:
            return segment_subject(c.clip.frames, idx, c.flows.consecutive(), hint=hint)
        # the subject is looked for in the picture, not in black bars around it (whose straight,
        # still edges the search would take for evidence); the masks go back into the whole frame
        width, height = c.clip.size
        x0, y0, x1, y1 = bars.left, bars.top, width - bars.right, height - bars.bottom
        flows = [f[y0:y1, x0:x1] for f in c.flows.consecutive()]
        found = segment_subject(c.clip.frames[:, y0:y1, x0:x1], idx, flows,
                                hint=None if hint is None else hint.within(x0, y0, x1, y1))
        return found.placed(x0, y0, width, height)

    return ctx.shared("subject_masks", build)


def _fix_for(found: FoundSubject) -> str:
    """What a user can do about an unreliable reading, given what the subject rested on."""
    if found.given:
        return ("fix: look at its contact sheet (--save-masks DIR): the subject you gave was not followed "
                "with confidence; compare leaves the pair out of the drift statistics")
    return ("fix: look at its contact sheet (--save-masks DIR); where the mask is not the subject, give its "
            "first-frame box with --subject-box X0,Y0,X1,Y1 (--subject-boxes JSON for many videos)")


def compute_subject_drift(ctx: EvalContext) -> MetricResult:
    """Subject drift, subject flow and global flow on the 16 sampled frames."""
    idx = ctx.clip.sampled()
    masks = subject_masks(ctx)
    centroids = masks.centroids()
    # the masks are on a run of the sampled frames (a fade leaves out the rest); the subject
    # flow is over the pairs whose earlier frame has one, the global flow over every pair
    start = int(np.searchsorted(idx, masks.frames[0]))
    subject, whole = [], []
    ctx.flows.prefetch(zip(idx[:-1], idx[1:]))
    for k, (a, b) in enumerate(zip(idx[:-1], idx[1:])):
        mag = magnitude(ctx.flows.get(int(a), int(b)))
        whole.append(float(np.mean(mag, dtype=np.float64)))
        if start <= k < start + len(masks.frames):
            subject.append(float(np.mean(mag[masks.masks[k - start]], dtype=np.float64)))
    verdict = drift_verdict(masks)
    notes = []
    faded = shown(ctx)
    if faded:
        notes.append(f"subject_drift: {faded.describe()} left out of the drift, the subject looked for after "
                     f"them ({len(masks.frames)} of {len(idx)} sampled frames kept)")
    if masks.fallbacks:
        notes.append(f"subject_drift: on {masks.fallbacks} of {len(idx)} sampled frames the image did not confirm the "
                     "tracked mask; they keep the propagated one")
    if masks.picture is not None:
        width, height = ctx.clip.size
        x0, y0, x1, y1 = masks.picture
        bars = Bars(top=y0, bottom=height - y1, left=x0, right=width - x1)
        notes.append(f"subject_drift: black bars ({bars.describe()}) left out of the subject search; the other "
                     f"metrics measure the whole frame (to leave them out too: ffmpeg -i IN -vf "
                     f"{bars.crop(width, height)} OUT)")
    if verdict.unreliable:
        notes.append(f"subject_drift: unreliable: {verdict.unreliable}; {_fix_for(masks.found)}")
    values = {
        "drift": drift_of(centroids),
        "subject_flow": float(np.mean(subject)),
        "global_flow": float(np.mean(whole)),
        "mask_fallbacks": int(masks.fallbacks),
        "drift_confidence": verdict.confidence,
        "drift_unreliable": verdict.unreliable,
        "subject_found_by": masks.found.basis,
    }
    series = {
        "frames": [int(i) for i in masks.frames],
        "centroids": np.round(centroids, 3).tolist(),
        "mask_area": [int(m.sum()) for m in masks.masks],
        "mask_source": list(masks.sources),
        "confidence_checks": verdict.checks,
    }
    return MetricResult(values, series=series, notes=tuple(notes))
