"""A reader's tumour regions as lesions: each lesion's EXTENT (the whole tumour, on which its long
axis and volume are measured) apart from its MEASUREMENT ROIs (the small regions its values are
read in and averaged).

The papers keep the two apart: paper 002 (Methods, DECT and perfusion quantitative analysis) "On
the largest diameter of each lesion, three identical circular ROIs, each with an area ranging from
10.0 mm^2 to 20.0 mm^2 ... For each parameter, the average values of the three ROIs were
calculated", while its nomogram's size is the lesion's diameter; paper 000 (2.2 (2)) "the average
iodine concentration of three regions of interest (ROIs) on the lesion's largest slice"; paper
003 (Image analysis) three ROIs in the solid tumour and "the maximum tumor diameter was accurately
measured and recorded on the slice with the largest tumor dimension"; paper 001 (ECV fraction
analysis) one ROI "within the HCC as large as possible avoiding necrosis and hemorrhage".

Which region is which (`part_of`, words in hccnode/data/roi_synonyms.toml [tumor_parts]):
- a label with a measurement word ("Tumor ROI 2") is a measurement ROI; else one with an extent
  word ("Tumor extent", "Lesion outline", "GTV") is an extent;
- a label with neither ("Tumor", "HCC", a code alone) is split into its connected parts: a part on
  several slices is a tumour's outline (an extent); a part on one slice is a measurement ROI (the
  papers place theirs on one slice). So small ROIs are never taken for a tumour's size.

Lesions (`group`): each connected extent is a lesion (extents that overlap are one lesion); each
measurement ROI joins the extent it overlaps most; measurement ROIs inside no extent that share a
slice are one lesion without an extent (its size is not measured: the reason says so). Lesions
are ordered largest first by the longest in-plane diameter of their extent
(hccnode.imaging.size.max_inplane_diameter_mm); lesions without an extent come last.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
from scipy import ndimage

from hccnode.imaging.roi_stats import bounding_box
from hccnode.imaging.rois import normalise_label

EXTENT = "extent"
MEASUREMENT = "measurement"


@dataclass(frozen=True)
class PartWords:
    extent: frozenset[str]
    measurement: frozenset[str]


def load_part_words() -> PartWords:
    """The [tumor_parts] words of hccnode/data/roi_synonyms.toml."""
    text = resources.files("hccnode").joinpath("data", "roi_synonyms.toml").read_text(encoding="utf-8")
    parts = tomllib.loads(text).get("tumor_parts", {})
    return PartWords(frozenset(parts.get(EXTENT, [])), frozenset(parts.get(MEASUREMENT, [])))


def part_of(label: str | None, words: PartWords) -> str | None:
    """EXTENT or MEASUREMENT as a tumour region's label says, None when it says neither."""
    tokens = set(normalise_label(label or "").split())
    if tokens & words.measurement:
        return MEASUREMENT  # also with an extent word: a size is never taken from a measurement ROI
    if tokens & words.extent:
        return EXTENT
    return None


def components(mask: np.ndarray) -> list[np.ndarray]:
    """The connected parts (26-connected) of a 3-D mask, each a bool array of the mask's shape,
    in the order of their first voxel."""
    mask = np.asarray(mask, dtype=bool)
    outer = bounding_box(mask)  # labelled in the mask's box, not over the whole grid
    if outer is None:
        return []
    labels, _ = ndimage.label(mask[outer], structure=np.ones((3, 3, 3), bool))
    out = []
    for i, box in enumerate(ndimage.find_objects(labels), 1):
        if box is None:
            continue
        part = np.zeros(mask.shape, bool)
        part[tuple(slice(o.start + b.start, o.start + b.stop) for o, b in zip(outer, box))] = labels[box] == i
        out.append(part)
    return out


def slices_of(mask: np.ndarray) -> set[int]:
    """The slice indices (axis 0) a mask holds voxels on."""
    return {int(k) for k in np.flatnonzero(np.asarray(mask).any(axis=(1, 2)))}


def shape_part(part: np.ndarray) -> str:
    """A part of a region whose label names neither: an outline (EXTENT) on several slices, a
    measurement ROI on one."""
    return EXTENT if len(slices_of(part)) > 1 else MEASUREMENT


@dataclass
class Group:
    """One lesion's regions as indices into the extents and measurement ROIs given to `group`."""

    extents: list[int] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)


def _merge(n: int, linked) -> list[list[int]]:
    """Connected sets of 0..n-1 under the pairs `linked` yields (union-find)."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in linked:
        parent[root(a)] = root(b)
    sets: dict[int, list[int]] = {}
    for i in range(n):
        sets.setdefault(root(i), []).append(i)
    return list(sets.values())


def group(extents: list[np.ndarray], samples: list[np.ndarray]) -> list[Group]:
    """Lesions from connected extents and measurement ROIs (see the module docstring), unordered."""
    ext_sets = _merge(len(extents), ((i, j) for i in range(len(extents)) for j in range(i + 1, len(extents))
                                     if np.logical_and(extents[i], extents[j]).any()))
    groups = [Group(extents=s) for s in ext_sets]
    loose = []
    for j, s in enumerate(samples):
        overlap = [sum(int(np.count_nonzero(extents[i] & s)) for i in g.extents) for g in groups]
        if overlap and max(overlap) > 0:
            groups[int(np.argmax(overlap))].samples.append(j)
        else:
            loose.append(j)
    levels = [slices_of(samples[j]) for j in loose]
    for s in _merge(len(loose), ((a, b) for a in range(len(loose)) for b in range(a + 1, len(loose))
                                 if levels[a] & levels[b])):
        groups.append(Group(samples=[loose[a] for a in s]))
    return groups
