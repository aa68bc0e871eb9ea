"""An ordered compute pipeline: jobs run on a thread pool ahead of a single in-order consumer.

The merge's consumer is the file writer: it must see chunks in file order, while the chunks
are computed a few at a time in parallel (torch kernels and file writes release the GIL, so
threads overlap computing with writing). The look-ahead is bounded, so memory stays at a few
chunks whatever the model size.
"""

from __future__ import annotations

import contextlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Tuple, TypeVar, Union

import torch

K = TypeVar("K")
T = TypeVar("T")


def pipelined(pieces: Iterable[Tuple[K, Union[T, Callable[[], T]]]], pool: ThreadPoolExecutor, depth: int
              ) -> Iterator[Tuple[K, T]]:
    """Yield ``(key, value)`` in input order; a callable piece is run on ``pool``, up to ``depth``
    pieces ahead of the consumer, any other value passes through as it is."""
    queue: deque = deque()
    it = iter(pieces)

    def fill() -> None:
        while len(queue) < depth:
            nxt = next(it, None)
            if nxt is None:
                return
            key, work = nxt
            queue.append((key, pool.submit(work) if callable(work) else work))

    fill()
    while queue:
        key, item = queue.popleft()
        data = item.result() if isinstance(item, Future) else item
        fill()
        yield key, data


@contextlib.contextmanager
def torch_threads(n: int):
    """Run torch kernels with ``n`` intra-op threads inside the block, then restore the setting."""
    # Each pool worker runs single-threaded kernels; intra-op threads on top would oversubscribe.
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
