"""musubi-tuner's bucket sizes, so that prepared clips are never resized again at caching.

musubi-tuner's video latent caching scales every clip to the bucket of the dataset's
``resolution`` area whose aspect ratio is nearest the clip's, whatever ``enable_bucket``
and ``bucket_no_upscale`` say (those only group cached items at training time). The
buckets of an area A (step 16) are (w, floor16(A // w)) and its transpose for w from
floor16(sqrt(A) / 2) to sqrt(A). A clip prepared at exactly its bucket passes through
unchanged. Checked against musubi-tuner's ``BucketSelector`` by the tests.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Tuple

STEP = 16  # Wan: VAE stride 8 x patch 2


@lru_cache(maxsize=64)
def bucket_sizes(width: int, height: int, step: int = STEP) -> Tuple[Tuple[int, int], ...]:
    """All (w, h) buckets of the area ``width * height``, sorted."""
    area = width * height
    side = int(math.sqrt(area))
    low = max(step, (side // 2) // step * step)
    sizes = set()
    for w in range(low, side + step, step):
        h = (area // w) // step * step
        if h >= step:
            sizes.update({(w, h), (h, w)})
    return tuple(sorted(sizes))


def nearest_bucket(size: Tuple[int, int], resolution: Tuple[int, int], step: int = STEP) -> Tuple[int, int]:
    """The bucket musubi-tuner scales a ``size`` (w, h) frame to for ``resolution``
    (the first of equally near aspects, in sorted order, as musubi's argmin picks)."""
    aspect = size[0] / size[1]
    return min(bucket_sizes(*resolution, step), key=lambda wh: abs(wh[0] / wh[1] - aspect))
