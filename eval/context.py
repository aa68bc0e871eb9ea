"""What every metric receives (one decoded clip and its shared caches) and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from circle_rotate.eval.flow import FlowCache
from circle_rotate.eval.frames import Clip

Value = Optional[float | int | str | bool]


@dataclass(frozen=True)
class MetricResult:
    """One metric's output for one video.

    Attributes:
        values: the row's columns (scalars; ``None`` where a value does not exist).
        series: per-frame data kept for plots and reports (e.g. centroid trajectories).
        notes: things the user should know (fallback masks, skipped backends).
        skipped: why the metric did not run (learned backends without weights), else None.
    """

    values: Mapping[str, Value] = field(default_factory=dict)
    series: Mapping[str, Any] = field(default_factory=dict)
    notes: Tuple[str, ...] = ()
    skipped: Optional[str] = None


class EvalContext:
    """One clip, its flow cache, and intermediate results shared by metrics (computed once).

    Args:
        clip: the decoded video.
        options: backend settings (weight paths, device) passed through from the CLI.
        threads: how many flows are computed at once (the cores this clip has to itself).
    """

    def __init__(self, clip: Clip, *, options: Optional[Mapping[str, Any]] = None, threads: int = 1):
        self.clip = clip
        self.flows = FlowCache(clip.grey, threads=threads)
        self.options: Mapping[str, Any] = dict(options or {})
        self._shared: Dict[str, Any] = {}

    def peek(self, key: str) -> Any:
        """What ``key`` holds when something built it, else None."""
        return self._shared.get(key)

    def shared(self, key: str, build: Callable[["EvalContext"], Any]) -> Any:
        """``build(self)`` the first time ``key`` is asked for, the kept result afterwards."""
        if key not in self._shared:
            self._shared[key] = build(self)
        return self._shared[key]
