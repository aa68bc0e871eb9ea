"""Which Wan2.2 expert a name says a file is for (names only: nothing opened, nothing heavy imported,
so ``workflow`` and the CLI's parsers can use them)."""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Optional

# "high_noise", "high-noise", "HighNoise", "high noise" (and low); not "highres".
_EXPERT_TEXT = re.compile(r"(high|low)[ _\-]?noise", re.IGNORECASE)
#: The released pair's suffix (``circle_rotate_h``, ``..._low``) at the end of a file stem.
_SHORT_EXPERT = re.compile(r"(?:^|[_\-. ])(h|high|l|low)$", re.IGNORECASE)


def expert_from_text(text: str) -> Optional[str]:
    """'high' / 'low' if ``text`` names exactly one of the two noise experts, else None."""
    found = {m.group(1).lower() for m in _EXPERT_TEXT.finditer(text)}
    return found.pop() if len(found) == 1 else None


def expert_from_file_name(name: str) -> Optional[str]:
    """'high' / 'low' by a file name alone: ``high_noise``/``low_noise`` in it, or a LoRA's ``_h``/``_l``
    (``_high``/``_low``) suffix."""
    found = expert_from_text(name)
    short = _SHORT_EXPERT.search(PurePath(name).stem)
    if not found and short:
        found = "high" if short.group(1).lower().startswith("h") else "low"
    return found
