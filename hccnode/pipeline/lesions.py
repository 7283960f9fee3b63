"""The lesions of one analysis: the reader's tumour regions grouped by hccnode.imaging.lesions,
each with its extent (size) and the ROIs its values are read in, and which lesion(s) each paper
uses (hccnode/data/protocols.toml [lesions]).

Every lesion is measured and reported; the ROIs are renamed in the SEG and SR ("lesion 2 of 3")
when there are several. The model cards get the lesion(s) their paper uses (`for_paper`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache, cached_property
from importlib import resources

import numpy as np
import SimpleITK as sitk

from hccnode.imaging import lesions as parts
from hccnode.imaging import size
from hccnode.imaging.measure import RoiRef
from hccnode.imaging.roi_stats import bounding_box, union
from hccnode.imaging.rois import RoiMask


@dataclass
class Lesion:
    """One lesion: its number (1 = largest), its extent (None when the reader drew none), the ROI
    its values are reported against (`region`: its measurement ROIs together, else its extent),
    the masks averaged (`rois`: each measurement ROI, else the extent) and its size."""

    number: int
    extent: RoiMask | None
    region: RoiMask
    rois: list[np.ndarray]
    diameter_mm: float | None = None
    size_reason: str | None = None
    of: int = 1  # lesions in the study

    @cached_property
    def slices(self) -> list[int]:
        """The slices its values are read on (the level of its reference ROIs)."""
        return sorted(set().union(*(parts.slices_of(m) for m in self.rois)))

    def describe(self) -> str:
        name = f"lesion {self.number}" + (f" of {self.of}" if self.of > 1 else "")
        if self.diameter_mm is not None:
            return f"{name} ({self.diameter_mm:.0f} mm)"
        return f"{name} (size not measured)"

    @property
    def refs(self) -> set[RoiRef]:
        return {self.region.ref} | ({self.extent.ref} if self.extent is not None else set())


@dataclass
class Choice:
    """The lesions a paper's values come from, or why none can be chosen; `text` says which."""

    lesions: list[Lesion] = field(default_factory=list)
    text: str = ""
    reason: str | None = None


# The SR's texts are in the default DICOM repertoire: the quotes' typography in plain characters.
_PLAIN = str.maketrans({"\u2013": "-", "\u2014": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                        "\u00b2": "^2", "\u2265": ">=", "\u2264": "<="})


@cache
def protocols() -> dict:
    """hccnode/data/protocols.toml; each entry's quote also as `said`, in plain characters."""
    text = resources.files("hccnode").joinpath("data", "protocols.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    for section in data.values():
        for rule in section.values():
            rule["said"] = rule["quote"].translate(_PLAIN)
    return data


def apply(regions, spacing_mm) -> list[str]:
    """Group the reader's tumour ROIs of `regions` (hccnode.pipeline.regions.Regions) into
    `regions.lesions`; the tumour ROIs of `regions.rois` become the lesions' extents and regions
    (first, largest lesion first). Returns notes."""
    tumors = regions.arrays("tumor")
    if not tumors:
        regions.lesions = []
        return []
    found, shown, notes = find([r for r, _ in tumors], [m for _, m in tumors], spacing_mm)
    regions.lesions = found
    regions.rois = shown + [r for r in regions.rois if r.role != "tumor"]
    return notes


def find(rois: list[RoiMask], masks: list[np.ndarray], spacing_mm) -> tuple[list[Lesion], list[RoiMask], list[str]]:
    """Lesions from the reader's tumour ROIs (`masks`: their bool arrays, z y x; `spacing_mm`
    z y x). Returns the lesions (largest first), the tumour ROIs the SEG and SR now show (each
    lesion's extent and region) and notes."""
    words = parts.load_part_words()
    extents: list[tuple[np.ndarray, RoiMask]] = []
    samples: list[tuple[np.ndarray, RoiMask]] = []
    notes = []
    for roi, mask in zip(rois, masks):
        said = parts.part_of(roi.ref.label, words)
        pieces = parts.components(mask)
        whole = len(pieces) == 1
        for piece in pieces:
            kind = said or parts.shape_part(piece)
            (extents if kind == parts.EXTENT else samples).append((mask if whole else piece, roi))
        if said is None and any(parts.shape_part(p) == parts.MEASUREMENT for p in pieces):
            notes.append(f"tumor ROI {roi.ref.label!r}: its part(s) on one slice are taken as measurement ROIs, not as "
                         "the tumour's extent (label a whole-tumour outline 'tumor extent' to have its size measured)")
    groups = parts.group([m for m, _ in extents], [m for m, _ in samples])
    found = [_lesion(g, extents, samples, spacing_mm) for g in groups]
    found.sort(key=lambda les: (les.diameter_mm is None, -(les.diameter_mm or 0.0)))
    shown: list[RoiMask] = []
    for n, les in enumerate(found, 1):
        les.number, les.of = n, len(found)
        if len(found) > 1:  # distinct names (and tracking UIDs) per lesion
            same = les.extent is les.region
            les.region = _renamed(les.region, f"lesion {n}")
            if same:
                les.extent = les.region
            elif les.extent is not None:
                says = parts.part_of(les.extent.ref.label, words) == parts.EXTENT or "(extent)" in (les.extent.ref.label or "")
                les.extent = _renamed(les.extent, f"lesion {n}" if says else f"lesion {n} extent")
        shown += [les.region] + ([les.extent] if les.extent is not None and les.extent is not les.region else [])
    return found, shown, notes


def _lesion(g: parts.Group, extents, samples, spacing_mm) -> Lesion:
    ext_masks = [extents[i][0] for i in g.extents]
    ext_rois = [extents[i][1] for i in g.extents]
    smp_masks = [samples[j][0] for j in g.samples]
    smp_rois = [samples[j][1] for j in g.samples]
    extent = _roi(ext_rois, ext_masks) if ext_masks else None
    region = _roi(smp_rois, smp_masks) if smp_masks else extent
    if extent is not None and region is not extent and region.ref == extent.ref:  # parts of one region
        extent, region = _renamed(extent, "extent"), _renamed(region, "measurement ROIs")
    les = Lesion(0, extent, region, smp_masks or [union(ext_masks)])
    if extent is None:
        les.size_reason = ("no extent of this lesion drawn: its ROIs are measurement ROIs, whose size is not the "
                           "tumour's (label the whole tumour's outline 'tumor extent')")
    else:
        whole = union(ext_masks)
        box = bounding_box(whole)
        les.diameter_mm = size.max_inplane_diameter_mm(whole[box], spacing_mm)[0]
    return les


def _roi(rois: list[RoiMask], masks: list[np.ndarray]) -> RoiMask:
    """One ROI standing for `masks` (parts of `rois`): the original when it is one whole ROI."""
    if len(masks) == 1 and np.array_equal(masks[0] != 0, sitk.GetArrayViewFromImage(rois[0].mask) != 0):
        return rois[0]
    image = sitk.GetImageFromArray(union(masks).astype(np.uint8))
    image.CopyInformation(rois[0].mask)
    labels = list(dict.fromkeys(r.ref.label or r.role for r in rois))
    uids = {r.ref.annotation_uid for r in rois}
    ref = rois[0].ref
    return RoiMask(image, RoiRef(ref.name, ref.source, uids.pop() if len(uids) == 1 else None, " + ".join(labels),
                                 ref.placed_in))


def _renamed(roi: RoiMask, what: str) -> RoiMask:
    ref = roi.ref
    return RoiMask(roi.mask, RoiRef(ref.name, ref.source, ref.annotation_uid, f"{ref.label or ref.name} ({what})",
                                    ref.placed_in))


def for_paper(lesions: list[Lesion], paper: str) -> Choice:
    """The lesion(s) paper `paper` ("001") measures (protocols.toml [lesions]): its count of the
    largest. When several lesions are found and one has no size, which is largest is not known."""
    rule = protocols()["lesions"].get(paper)
    if not lesions:
        return Choice(reason="no lesion in the study")
    if rule is None:
        return Choice(lesions[:1], f"lesion {lesions[0].number}")
    count = int(rule["count"])
    quote = f"paper {paper}: \"{rule['said']}\""
    if len(lesions) == 1:
        return Choice(lesions[:1], f"the study's one lesion ({lesions[0].describe()})")
    unsized = [les for les in lesions if les.diameter_mm is None]
    if unsized:
        return Choice(reason=f"the largest of the {len(lesions)} lesions is not known: "
                             f"{', '.join(les.describe() for les in unsized)} ({quote})")
    chosen = lesions[:count]
    text = (f"{' and '.join(les.describe() for les in chosen)}, the largest {'lesion' if count == 1 else f'{count} lesions'}"
            f" of {len(lesions)} ({quote})")
    if rule.get("unstated"):
        text += f"; {rule['unstated']}"
    return Choice(chosen, text)
