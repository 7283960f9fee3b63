"""The outline of a region on one image, as the closed polyline an SR SCOORD carries.

Coordinates are DICOM image coordinates (PS3.3 C.18.6.1.1): column, row, with 0.0\\0.0 the top
left corner of the top left pixel, so a pixel (row r, column c) covers [c, c+1] x [r, r+1] and
the outline runs along pixel edges: it encloses exactly the pixels of the region.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def outline(mask: np.ndarray) -> np.ndarray:
    """Closed polyline (n, 2: column, row; first point = last point) around the largest
    4-connected part of the 2-D `mask`, holes filled; corners only (no point in the middle of a
    straight edge). ValueError when the mask is empty."""
    labels, n = ndimage.label(np.asarray(mask, bool))
    if n == 0:
        raise ValueError("outline of an empty mask")
    sizes = np.bincount(labels.ravel())[1:]
    region = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1)
    # With one 4-connected part and its 4-connected holes filled, every corner on the boundary
    # starts exactly one boundary edge: the edges chain into one loop.
    pad = np.pad(region, 1)
    inside = pad[1:-1, 1:-1]
    nxt: dict[tuple[int, int], tuple[int, int]] = {}
    r, c = np.nonzero(inside & ~pad[:-2, 1:-1])   # top edges, right to left
    nxt.update(zip(zip(c + 1, r), zip(c, r)))
    r, c = np.nonzero(inside & ~pad[1:-1, :-2])   # left edges, downwards
    nxt.update(zip(zip(c, r), zip(c, r + 1)))
    r, c = np.nonzero(inside & ~pad[2:, 1:-1])    # bottom edges, left to right
    nxt.update(zip(zip(c, r + 1), zip(c + 1, r + 1)))
    r, c = np.nonzero(inside & ~pad[1:-1, 2:])    # right edges, upwards
    nxt.update(zip(zip(c + 1, r + 1), zip(c + 1, r)))
    start = min(nxt)
    points = [start]
    for _ in range(len(nxt)):
        p = nxt[points[-1]]
        if p == start:
            break
        points.append(p)
    pts = np.array(points + [start], dtype=float)
    # keep the corners: drop each point on the straight line between its neighbours
    d1, d2 = pts[1:-1] - pts[:-2], pts[2:] - pts[1:-1]
    corner = (d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]) != 0
    keep = np.concatenate([[True], corner, [True]])
    return pts[keep]
