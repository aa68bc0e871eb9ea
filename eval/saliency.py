"""What a still image is about, without weights: background-weighted colour contrast.

The background of a photograph is mostly connected to the image's border; the subject is
mostly not, even when it touches it (a car cut by the frame's sides meets the border along
a short stretch of its outline). Following Zhu et al., "Saliency Optimization from Robust
Background Detection" (CVPR 2014), on a grid of cells:

1. Geodesic distances between cells, an edge between neighbours costing their colour
   difference (Lab): a region is the set of cells reachable cheaply.
2. Boundary connectivity of a cell: the soft length of its region along the border over
   the square root of its soft area. Background regions have a high one.
3. Saliency of a cell: its colour contrast to every other cell, each weighted by how near
   it lies and by how surely it is background.

scipy's Dijkstra gives the all-pairs geodesic distances; a grid of about 600 cells keeps
it to a few tens of milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra


@dataclass(frozen=True)
class SaliencyParams:
    """Tuning (the paper's values where it gives them).

    Attributes:
        cells: about how many grid cells cover the image.
        sigma_clr: colour distance (Lab, 0-100 scale) at which a geodesic step counts fully.
        sigma_bnd: boundary connectivity at which a cell is background with probability 1 - e^-0.5.
        sigma_spa: spatial reach of the contrast, as a fraction of the image diagonal.
    """

    cells: int = 600
    sigma_clr: float = 10.0
    sigma_bnd: float = 1.0
    sigma_spa: float = 0.25


def _grid(h: int, w: int, cells: int) -> tuple[int, int]:
    side = np.sqrt(h * w / cells)
    return max(2, int(round(h / side))), max(2, int(round(w / side)))


def saliency(image: np.ndarray, params: SaliencyParams = SaliencyParams()) -> np.ndarray:
    """Per-pixel saliency of ``image`` (RGB uint8), 0-1, float32 of the image's size."""
    h, w = image.shape[:2]
    gy, gx = _grid(h, w, params.cells)
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab[..., 0] *= 100.0 / 255.0
    lab[..., 1:] -= 128.0
    colour = cv2.resize(lab, (gx, gy), interpolation=cv2.INTER_AREA).reshape(-1, 3)
    n = gy * gx
    ys, xs = np.divmod(np.arange(n), gx)
    pos = np.stack([(ys + 0.5) / gy, (xs + 0.5) / gx], -1)

    # 8-neighbour grid graph weighted by colour difference
    index = np.arange(n).reshape(gy, gx)
    pairs = [(index[:, :-1], index[:, 1:]), (index[:-1, :], index[1:, :]),
             (index[:-1, :-1], index[1:, 1:]), (index[:-1, 1:], index[1:, :-1])]
    a = np.concatenate([p[0].ravel() for p in pairs])
    b = np.concatenate([p[1].ravel() for p in pairs])
    cost = np.linalg.norm(colour[a] - colour[b], axis=1) + 1e-3
    graph = coo_matrix((cost, (a, b)), shape=(n, n)).tocsr()
    geo = dijkstra(graph, directed=False)

    near = np.exp(-geo ** 2 / (2 * params.sigma_clr ** 2))
    area = near.sum(axis=1)
    border = np.zeros((gy, gx), bool)
    border[0], border[-1], border[:, 0], border[:, -1] = True, True, True, True
    length = near[:, border.ravel()].sum(axis=1)
    connectivity = length / np.sqrt(area)
    background = 1.0 - np.exp(-connectivity ** 2 / (2 * params.sigma_bnd ** 2))

    diff = np.linalg.norm(colour[:, None, :] - colour[None, :, :], axis=-1)
    dist2 = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1) / 2.0  # unit diagonal
    weight = np.exp(-dist2 / (2 * params.sigma_spa ** 2))
    contrast = (diff * weight * background[None, :]).sum(axis=1)
    contrast = contrast / max(float(contrast.max()), 1e-6)
    sal = contrast.reshape(gy, gx).astype(np.float32)
    return cv2.resize(sal, (w, h), interpolation=cv2.INTER_LINEAR)
