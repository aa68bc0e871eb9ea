"""Extra musubi-tuner ``--task`` names, added by code outside the product.

The product knows only musubi's own tasks. The CPU self-check (:mod:`circle_rotate.selfcheck.tiny_task`)
adds its tiny task here when it is imported, with the function that puts the task into musubi's
``WAN_CONFIGS``; the command parser and preflight ask this registry and never name the
self-check. A task that is not here is musubi's own (or a typo musubi's parser reports).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional


@dataclass(frozen=True)
class ExtraTask:
    """A ``--task`` musubi does not ship.

    Attributes:
        name: the ``--task`` value.
        register: adds it to musubi's ``WAN_CONFIGS`` (idempotent; called before any parse).
        runs_on_cpu: a run of it needs no CUDA GPU (preflight skips the GPU machine's checks).
    """

    name: str
    register: Callable[[], None]
    runs_on_cpu: bool = False


_EXTRA: Dict[str, ExtraTask] = {}


def add_task(task: ExtraTask) -> None:
    """Make ``task`` known to the parser and preflight (the last one added under a name wins)."""
    _EXTRA[task.name] = task


def extra_task(name: Optional[str]) -> Optional[ExtraTask]:
    """The extra task called ``name``, or None for musubi's own tasks."""
    return _EXTRA.get(name or "")


def register_named(args: Iterable[str]) -> None:
    """Register in musubi every extra task that ``args`` (a command's arguments) names."""
    for arg in args:
        task = _EXTRA.get(arg)
        if task is not None:
            task.register()
