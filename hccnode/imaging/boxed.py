"""A grid known only within some boxes: values there, NaN (no data) everywhere else.

A phase resampled only where the ROIs are (pipeline.align.Aligner.limit_to), or the ECV map over
the liver's box, is a few boxes of a 512 x 512 x 300 grid; holding the whole grid as a NaN-filled
float32 array costs 300 MB for nothing. Readers index it with a box (a tuple of slices, numpy
axis order), as they index an array, and get that part as an array.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class BoxedArray:
    """`shape` grid of float32 values given in `pieces` ((box, values) with values.shape equal to
    the box's shape), NaN elsewhere. Where boxes overlap the later piece wins, as when each is
    pasted into a full array in turn."""

    dtype = np.dtype(np.float32)

    def __init__(self, shape: Sequence[int], pieces: Sequence[tuple[tuple[slice, ...], np.ndarray]] = ()):
        self.shape = tuple(int(n) for n in shape)
        self.ndim = len(self.shape)
        self.pieces = []
        for box, values in pieces:
            box = self._box(box)
            if tuple(s.stop - s.start for s in box) != np.shape(values):
                raise ValueError(f"values of shape {np.shape(values)} do not fill the box {box}")
            self.pieces.append((box, values))

    def _box(self, key) -> tuple[slice, ...]:
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > self.ndim or not all(isinstance(k, slice) and k.step in (None, 1) for k in key):
            raise IndexError("a BoxedArray is indexed with a box: up to one slice per axis, step 1")
        key = key + (slice(None),) * (self.ndim - len(key))
        return tuple(slice(*k.indices(n)[:2]) for k, n in zip(key, self.shape))

    def __getitem__(self, key) -> np.ndarray:
        box = self._box(key)
        out = np.full([max(s.stop - s.start, 0) for s in box], np.nan, dtype=self.dtype)
        for piece_box, values in self.pieces:
            lo = [max(a.start, b.start) for a, b in zip(box, piece_box)]
            hi = [min(a.stop, b.stop) for a, b in zip(box, piece_box)]
            if all(h > l for l, h in zip(lo, hi)):
                out[tuple(slice(l - a.start, h - a.start) for l, h, a in zip(lo, hi, box))] = \
                    values[tuple(slice(l - b.start, h - b.start) for l, h, b in zip(lo, hi, piece_box))]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The whole grid as one array (for tests and small grids; readers take boxes)."""
        whole = self[()]
        return whole if dtype is None else whole.astype(dtype)
