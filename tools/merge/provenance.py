"""What a merged expert records of its LoRAs, and the two mistakes that record and the names catch.

The two Wan2.2 experts have identical shapes and a merged expert looks like any other, so neither
a LoRA put into the wrong expert nor a LoRA merged a second time fails anywhere: both give worse
videos without a word. A merge therefore checks, before anything is written, that

- a LoRA that says which expert it was trained for (its metadata, else its ``_h``/``high_noise``
  name: :func:`circle_rotate.tools.lora.inspect.lora_expert`) goes into that expert, when the
  expert says which it is too; and
- the expert's ``circle_rotate.merged_loras`` does not already hold it: merging it again at a strength
  of the same sign adds it twice. A record is matched by the sketch of its delta where it has one
  (:mod:`circle_rotate.tools.merge.delta_sketch`): that finds the LoRA under any file name, key layout
  (``convert --format comfy`` of it), alpha spelling or dtype, at any strength, and lets a different
  LoRA that happens to share a name and size through. A record from before sketches is matched by
  file name and, where recorded, size, as it was. A strength of the opposite sign to what the record
  holds (every entry of it, summed: a negated copy counts negative) undoes it rather than doubling it,
  and merges: that is how a LoRA comes out of a merged expert when the unmerged one is not at hand;
  once its entries sum to nothing it may go in again.

The record is a history: each merge appends its LoRAs (file name, size, strength, output dtype,
delta sketch) to what the base listed, so a chain of merges and conversions keeps every LoRA it holds,
an undone one with both its entries.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from circle_rotate.kernel.checkpoint_identity import EXPERT_METADATA_KEY, CheckpointIdentity
from circle_rotate.kernel.errors import UserError
from circle_rotate.tools.lora.files import LoraIndex
from circle_rotate.tools.lora.inspect import lora_expert
from circle_rotate.tools.merge.delta_sketch import FIELD, SAME, same_delta

logger = logging.getLogger(__name__)
MERGED_LORAS_KEY = "circle_rotate.merged_loras"


def merged_before(metadata: Mapping[str, str]) -> List[Dict[str, object]]:
    """The LoRAs a checkpoint's metadata says were merged into it (none when absent or unreadable)."""
    try:
        entries = json.loads(metadata.get(MERGED_LORAS_KEY, "[]"))
    except ValueError:
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("file"), str)] if isinstance(entries, list) else []


def merged_history(metadata: Mapping[str, str], loras: Sequence[Tuple[LoraIndex, float]], dtype: str,
                   sketches: Optional[Sequence[Optional[List[float]]]] = None, *,
                   base_name: Optional[str] = None) -> str:
    """``circle_rotate.merged_loras`` for the output: the base's entries, then this merge's (LoRA, strength)s,
    each with its delta sketch where ``sketches`` (one per LoRA, from
    :func:`circle_rotate.tools.merge.delta_sketch.delta_sketch`) has one.

    Every merge's record is made here, with each LoRA's strength, so here is where a LoRA the base holds is
    refused (:func:`check_not_merged_again` with the strengths; ``base_name`` names the base in its message).

    Raises:
        UserError: a LoRA the base already holds, at a strength that would add to it rather than undo it.
    """
    sketches = list(sketches) if sketches is not None else [None] * len(loras)
    check_not_merged_again(metadata, [index for index, _ in loras], base_name or _base_text(metadata), sketches,
                           strengths=[strength for _, strength in loras])
    new = [{"file": index.path.name, "bytes": index.header.file_size, "strength": strength, "dtype": dtype,
            **({FIELD: sketch} if sketch is not None else {})}
           for (index, strength), sketch in zip(loras, sketches)]
    return json.dumps(merged_before(metadata) + new)


def _base_text(metadata: Mapping[str, str]) -> str:
    """The base, for a message that has no name of it (its metadata may say which expert it is)."""
    expert = metadata.get(EXPERT_METADATA_KEY)
    return f"the {expert}-noise expert" if expert in ("high", "low") else "the expert"


def _number(value: object) -> Optional[float]:
    """A recorded strength as a number (None: absent or not one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _held(entries: Sequence[Dict[str, object]], index: LoraIndex, sketch: Optional[List[float]]
          ) -> Tuple[List[Dict[str, object]], Optional[float], bool]:
    """The ``entries`` of the record that are ``index``'s LoRA (by sketch, else by name and size), the strength
    they hold it at together in units of ``index``'s own delta (a negated or rescaled copy's entry counts at its
    sketch's ratio to this one; None: an entry without a strength), and whether any was matched by name."""
    name, size = index.path.name, index.header.file_size
    matched, held, by_name = [], 0.0, False
    for entry in entries:
        if FIELD in entry and sketch is not None:
            # the content decides: a name is no evidence either way (a converted copy has another,
            # a retrained LoRA of the same settings keeps both name and size)
            if not same_delta(sketch, entry[FIELD]):
                continue
            ratio = sum(float(a) * b for a, b in zip(entry[FIELD], sketch)) / sum(b * b for b in sketch)
        elif entry["file"] == name and entry.get("bytes", size) == size:  # a record from before sketches
            ratio, by_name = 1.0, True
        else:
            continue
        matched.append(entry)
        strength = _number(entry.get("strength"))
        held = None if held is None or strength is None else held + strength * ratio
    return matched, held, by_name


def check_not_merged_again(metadata: Mapping[str, str], loras: Sequence[LoraIndex], base_name: str,
                           sketches: Optional[Sequence[Optional[List[float]]]] = None,
                           strengths: Optional[Sequence[float]] = None) -> None:
    """Refuse a LoRA the base already holds (by its record: the same delta where the record and ``sketches``,
    one per LoRA, have sketches, else the same file name and size) at a strength (``strengths``, one per LoRA)
    that would add to what it holds. A strength of the opposite sign undoes it and merges (with a warning where
    it more than undoes it), as does any once the record's entries of it sum to nothing.

    Without ``strengths`` an undo cannot be told from a second merge, so nothing is refused here: the caller
    that has them decides (:func:`merged_history`, which every merge's record goes through).

    Raises:
        UserError: naming the LoRA (and the file it was merged as, if another), the strengths it was
            merged at, the base, and how to undo it.
    """
    if strengths is None:
        return
    sketches = list(sketches) if sketches is not None else [None] * len(loras)
    before = merged_before(metadata)
    given: List[Dict[str, object]] = []  # this merge's LoRAs so far: one given twice counts twice as well
    for index, sketch, strength in zip(loras, sketches, strengths):
        matched, held, by_name = _held(before + given, index, sketch)
        given.append({"file": index.path.name, "bytes": index.header.file_size, "strength": strength,
                      **({FIELD: sketch} if sketch is not None else {})})
        if not matched:
            continue
        name = index.path.name
        if held is not None:
            largest = max(abs(_number(e.get("strength"))) for e in matched)
            if abs(held) <= SAME * largest:  # merged and undone: not in the base any more
                continue
            if held * strength <= 0:  # (0 adds nothing)
                if abs(strength) > abs(held) * (1 + SAME):
                    logger.warning("%s: strength %g more than undoes the %g %s holds it at (the output holds it "
                                   "at %g)", index.path, strength, held, base_name, held + strength)
                continue
        if all(any(e is g for g in given) for e in matched):
            twins = ", ".join(f"'{f}'" for f in sorted({e["file"] for e in matched}))
            raise UserError(f"'{name}' is given twice in this merge (the same delta as {twins}): merged together they "
                            "would apply it twice", path=index.path,
                            fix="give it once, with --lora FILE:2 for twice the effect")
        others = ", ".join(f"'{f}'" for f in sorted({e["file"] for e in matched} - {name}))
        what = f"'{name}' holds the same delta as {others}, which" if others else f"'{name}'"
        said = ", ".join("?" if _number(e.get("strength")) is None else f"{e['strength']:g}" for e in matched)
        undo = f"; to take it out of this one, merge it at strength {-held:g}" if held is not None else ""
        raise UserError(f"{what} is already merged into {base_name} (its metadata lists it at strength"
                        f"{'s' if len(matched) > 1 else ''} {said}); merging it again at strength {strength:g} "
                        "would apply it twice", path=index.path,
                        fix="merge into the original expert (with --lora FILE:2 for twice the effect)" + undo
                            + ("; rename the LoRA file if it is a different one" if by_name else ""))


def check_experts_agree(identity: CheckpointIdentity, loras: Sequence[LoraIndex], base_name: str) -> None:
    """Refuse a LoRA that says it is for the other expert than the one the base says it is.

    Raises:
        UserError: naming both files and what says so.
    """
    if identity.expert is None:
        return
    for index in loras:
        expert, evidence = lora_expert(index)
        if expert is not None and expert != identity.expert:
            raise UserError(f"'{index.path.name}' is a {expert}-noise LoRA (by its {evidence}) and {base_name} "
                            f"the {identity.expert}-noise expert (by its {identity.expert_evidence})",
                            path=index.path,
                            fix=f"merge it into the {expert}-noise expert (merge-pair does both), or pass "
                                "--ignore-expert-evidence if a name misleads")

