"""What preflight reports: one problem per line, collected before anything is reported.

Kept apart from the checks so that the command checks (:mod:`circle_rotate.musubi.preflight`) and the
data checks (:mod:`circle_rotate.musubi.preflight_data`) both file into it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from circle_rotate.kernel.errors import UserError
from circle_rotate.musubi.recipe_reader import MusubiCommand


@dataclass(frozen=True)
class Problem:
    """One finding: ``severity`` is "error" (the run would fail or train wrongly) or "warning"."""

    severity: str
    path: str
    message: str
    fix: str = ""

    def one_line(self) -> str:
        text = f"{self.severity}: {self.path + ': ' if self.path else ''}{' '.join(self.message.split())}"
        return f"{text}; fix: {self.fix}" if self.fix else text


@dataclass
class Findings:
    """Collects problems; checks append to it and carry on."""

    problems: List[Problem] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def error(self, path, message: str, fix: str = "") -> None:
        self.problems.append(Problem("error", str(path or ""), message, fix))

    def warning(self, path, message: str, fix: str = "") -> None:
        self.problems.append(Problem("warning", str(path or ""), message, fix))


@dataclass(frozen=True)
class TrainTarget:
    """One expert's training command, as preflight sees it."""

    expert: str  # "low" or "high"
    command: MusubiCommand


@dataclass(frozen=True)
class PreflightReport:
    problems: Tuple[Problem, ...]
    notes: Tuple[str, ...]
    musubi_version: Optional[str]
    identities: Tuple[Tuple[str, Dict[str, object]], ...] = ()

    @property
    def errors(self) -> List[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        """Raise the first error as a UserError (the caller has printed them all)."""
        if self.errors:
            first = self.errors[0]
            more = f" (and {len(self.errors) - 1} more problem(s) listed above)" if len(self.errors) > 1 else ""
            raise UserError(f"preflight: {first.message}{more}", path=first.path or None, fix=first.fix or None)


def user_error_parts(exc: UserError) -> Tuple[str, str]:
    """(message without the file prefix and the fix, fix) of a UserError, to re-file it as a Problem."""
    text = exc.message
    if exc.fix:
        text = text[: -len(f"; fix: {' '.join(exc.fix.split())}")]
    if exc.path and text.startswith(f"{exc.path}: "):
        text = text[len(exc.path) + 2:]
    return text, exc.fix or ""
