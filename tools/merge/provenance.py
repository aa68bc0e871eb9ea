"""What a merged expert records of its LoRAs, and the two mistakes that record and the names catch.

The two Wan2.2 experts have identical shapes and a merged expert looks like any other, so neither
a LoRA put into the wrong expert nor a LoRA merged a second time fails anywhere: both give worse
videos without a word. A merge therefore checks, before anything is written, that

- a LoRA that says which expert it was trained for (its metadata, else its ``_h``/``high_noise``
  name: :func:`circle_rotate.tools.lora.inspect.lora_expert`) goes into that expert, when the
  expert says which it is too; and
- the expert's ``circle_rotate.merged_loras`` does not already list it: merging it again doubles
  its strength. A record is matched by the sketch of its delta where it has one
  (:mod:`circle_rotate.tools.merge.delta_sketch`): that finds the LoRA under any file name, key layout
  (``convert --format comfy`` of it), alpha spelling or dtype, at any strength, and lets a different
  LoRA that happens to share a name and size through. A record from before sketches is matched by
  file name and, where recorded, size, as it was.

The record is a history: each merge appends its LoRAs (file name, size, strength, output dtype,
delta sketch) to what the base listed, so a chain of merges and conversions keeps every LoRA it holds.
"""

from __future__ import annotations

import json
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from circle_rotate.kernel.checkpoint_identity import CheckpointIdentity
from circle_rotate.kernel.errors import UserError
from circle_rotate.tools.lora.files import LoraIndex
from circle_rotate.tools.lora.inspect import lora_expert
from circle_rotate.tools.merge.delta_sketch import FIELD, same_delta

MERGED_LORAS_KEY = "circle_rotate.merged_loras"


def merged_before(metadata: Mapping[str, str]) -> List[Dict[str, object]]:
    """The LoRAs a checkpoint's metadata says were merged into it (none when absent or unreadable)."""
    try:
        entries = json.loads(metadata.get(MERGED_LORAS_KEY, "[]"))
    except ValueError:
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("file"), str)] if isinstance(entries, list) else []


def merged_history(metadata: Mapping[str, str], loras: Sequence[Tuple[LoraIndex, float]], dtype: str,
                   sketches: Optional[Sequence[Optional[List[float]]]] = None) -> str:
    """``circle_rotate.merged_loras`` for the output: the base's entries, then this merge's (LoRA, strength)s,
    each with its delta sketch where ``sketches`` (one per LoRA, from
    :func:`circle_rotate.tools.merge.delta_sketch.delta_sketch`) has one."""
    sketches = list(sketches) if sketches is not None else [None] * len(loras)
    new = [{"file": index.path.name, "bytes": index.header.file_size, "strength": strength, "dtype": dtype,
            **({FIELD: sketch} if sketch is not None else {})}
           for (index, strength), sketch in zip(loras, sketches)]
    return json.dumps(merged_before(metadata) + new)


def check_not_merged_again(metadata: Mapping[str, str], loras: Sequence[LoraIndex], base_name: str,
                           sketches: Optional[Sequence[Optional[List[float]]]] = None) -> None:
    """Refuse a LoRA the base already holds (by its record): the same delta where the record and
    ``sketches`` (one per LoRA) have sketches, else the same file name and size.

    Raises:
        UserError: naming the LoRA (and the file it was merged as, if another), the strength it was
            merged at, and the base.
    """
    sketches = list(sketches) if sketches is not None else [None] * len(loras)
    for index, sketch in zip(loras, sketches):
        name, size = index.path.name, index.header.file_size
        for entry in merged_before(metadata):
            if FIELD in entry and sketch is not None:
                # the content decides: a name is no evidence either way (a converted copy has another,
                # a retrained LoRA of the same settings keeps both name and size)
                again, by_name = same_delta(sketch, entry[FIELD]), False
            else:  # a record from before sketches
                again, by_name = entry["file"] == name and entry.get("bytes", size) == size, True
            if not again:
                continue
            what = f"'{name}'" if entry["file"] == name else f"'{name}' holds the same delta as '{entry['file']}', which"
            raise UserError(f"{what} is already merged into {base_name} (its metadata lists it at strength "
                            f"{entry.get('strength', '?')}); merging it again would double it",
                            path=index.path,
                            fix="merge into the original expert (with --lora FILE:2 for twice the effect)"
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

