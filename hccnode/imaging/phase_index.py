"""I/O shell of phase classification: headers and pixels from the spool, results into the index.

`classify_and_store(store, study_uid)` reads every instance header of the study (pydicom,
pixel data deferred), builds one SeriesHeader per series, lets `phases.classify_study` decide,
reading pixels only for the CT series it asks to measure (evenly spaced slices, at most
`[image] max_slices`), and replaces the study's rows in the `phases` table (hccnode.store.phases).
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from hccnode import log
from hccnode.imaging import anatomy
from hccnode.imaging.phase_rules import RuleSet, load_rules
from hccnode.imaging.phases import Decision, PhaseMeasurement, classify_study
from hccnode.imaging.series_header import SeriesHeader, header_from_datasets
from hccnode.imaging.volumes import DEFER_BYTES, stored_values
from hccnode.store import studies
from hccnode.store.db import Store
from hccnode.store.phases import save_decisions


MEASURE_THREADS = 2


class PhaseError(Exception):
    """A study that cannot be classified (unknown study, no readable headers)."""


def read_headers(store: Store, study_uid: str, rules: RuleSet) -> tuple[list[SeriesHeader], dict[str, list[tuple[Path, Dataset]]]]:
    """Series headers of a study from its spool files (pixel data deferred: read from the file
    when used, never kept); unreadable files are skipped and logged."""
    rows = studies.instances_of(store, study_uid)
    if not rows:
        raise PhaseError(f"study {study_uid}: not in the index")
    by_series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for r in rows:
        path = store.data_dir / r["path"]
        try:
            ds = pydicom.dcmread(path, defer_size=DEFER_BYTES)  # pixel data left in the file, read when used
        except Exception as exc:  # one bad file must not stop the study
            log.event("phases.unreadable", series_uid=r["series_uid"], path=r["path"], error=type(exc).__name__)
            continue
        by_series[r["series_uid"]].append((path, ds))
    headers = [header_from_datasets([ds for _, ds in items], rules.b_value_tags) for items in by_series.values()]
    if not headers:
        raise PhaseError(f"study {study_uid}: no readable instance headers")
    return headers, by_series


def _frames(items: list[tuple[Path, Dataset]]) -> list[tuple[Path, int | None, np.ndarray, tuple, tuple]]:
    """(path, frame index or None, position, row cosines, column cosines) of every image plane."""
    out = []
    for path, ds in items:
        shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
        per = ds.get("PerFrameFunctionalGroupsSequence")
        if per:
            for i, fg in enumerate(per):
                pos = _first(fg, shared, "PlanePositionSequence", "ImagePositionPatient")
                ori = _first(fg, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
                plane = _plane(pos, ori)
                if plane is not None:
                    out.append((path, i, *plane))
        else:
            try:  # pydicom converts on access, and raises for some malformed numbers
                plane = _plane(ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient"))
            except (TypeError, ValueError):
                plane = None
            if plane is not None:
                out.append((path, None, *plane))
    return out


def _plane(pos: Any, ori: Any) -> tuple[np.ndarray, tuple, tuple] | None:
    """(position, row cosines, column cosines) of one plane; None when either is absent or not
    3 and 6 numbers (a header no geometry can come from: the plane is left out, not the study)."""
    try:
        position, cosines = np.array(pos, float), [float(v) for v in ori]
    except (TypeError, ValueError):
        return None
    if position.shape != (3,) or len(cosines) != 6:
        return None
    return position, tuple(cosines[:3]), tuple(cosines[3:])


def _first(fg: Dataset, shared: Dataset, seq: str, kw: str) -> Any:
    for g in (fg, shared):
        items = g.get(seq)
        if items and kw in items[0]:
            return [float(v) for v in items[0][kw].value]
    return None


def _rescale(ds: Dataset, frame: int | None) -> tuple[float, float]:
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    groups = []
    if frame is not None and ds.get("PerFrameFunctionalGroupsSequence"):
        groups.append(ds.PerFrameFunctionalGroupsSequence[frame])
    groups += list(ds.get("SharedFunctionalGroupsSequence") or [])
    for g in groups:
        items = g.get("PixelValueTransformationSequence")
        if items:
            return float(items[0].get("RescaleSlope", 1)), float(items[0].get("RescaleIntercept", 0))
    return 1.0, 0.0


def load_volume(items: list[tuple[Path, Dataset]], max_slices: int,
                min_pixel_mm: float = 0.0) -> tuple[np.ndarray, tuple[float, float, float]] | None:
    """Up to `max_slices` evenly spaced axial planes of a series as HU [z, y, x] in LPS order
    (see anatomy.to_lps) with (dz, dy, dx) in mm; None when the series has no usable geometry.
    Pixels finer than `min_pixel_mm` are block-averaged in plane (nearest whole factor) to about it."""
    frames = _frames(items)
    if not frames:
        return None
    row, col = frames[0][3], frames[0][4]
    normal = np.cross(row, col)
    frames.sort(key=lambda f: float(np.dot(f[2], normal)))
    if len(frames) > max_slices:
        pick = np.linspace(0, len(frames) - 1, max_slices).round().astype(int)
        frames = [frames[i] for i in sorted(set(pick))]
    headers = dict(items)
    decoded: dict[Path, np.ndarray] = {}
    planes = []
    for path, frame, _, _, _ in frames:
        if path not in decoded:
            decoded[path] = stored_values(headers[path])
        arr = decoded[path]
        plane = arr[frame] if frame is not None else arr
        slope, intercept = _rescale(headers[path], frame)
        planes.append(plane.astype(np.float32) * slope + intercept)
        if frame is None:
            del decoded[path]
    if len({p.shape for p in planes}) != 1:
        return None
    vol = np.stack(planes)
    first = headers[frames[0][0]]
    ps = first.get("PixelSpacing")
    if ps is None:
        for g in first.get("SharedFunctionalGroupsSequence") or []:
            if g.get("PixelMeasuresSequence"):
                ps = g.PixelMeasuresSequence[0].get("PixelSpacing")
    if ps is None:
        return None
    dy, dx = float(ps[0]), float(ps[1])
    dz = float(np.median(np.diff([np.dot(f[2], normal) for f in frames]))) if len(frames) > 1 else float(
        first.get("SliceThickness", 1.0) or 1.0)
    try:
        v = anatomy.to_lps(vol, row, col)
    except ValueError:
        return None
    if v.shape[1:] != vol.shape[1:]:
        dy, dx = dx, dy
    fy, fx = max(1, round(min_pixel_mm / dy)), max(1, round(min_pixel_mm / dx))
    if fy > 1 or fx > 1:
        nz, ny, nx = v.shape
        v = v[:, :ny - ny % fy, :nx - nx % fx].reshape(nz, ny // fy, fy, nx // fx, fx).mean(axis=(2, 4), dtype=np.float32)
        dy, dx = dy * fy, dx * fx
    return v, (abs(dz) or 1.0, dy, dx)


def measure_volume(hu: np.ndarray, spacing: tuple[float, float, float]) -> PhaseMeasurement:
    """Aorta and liver attenuation of one CT series (HU), for phase confirmation."""
    body = anatomy.body_mask(hu)
    spine = anatomy.find_spine(hu, spacing, body)  # once, for both
    notes = []
    aorta = anatomy.find_aorta(hu, spacing, body, spine)
    liver = anatomy.find_liver(hu, spacing, body, spine=spine)
    if aorta is None:
        notes.append("aorta not found (no spine)")
    else:
        notes.append(f"aorta: {aorta.method}")
    if liver is None:
        notes.append("liver not found")
    return PhaseMeasurement(aorta_hu=None if aorta is None else aorta.mean_hu,
                            liver_hu=None if liver is None else liver.median_hu,
                            air_fraction=anatomy.air_fraction(hu), median_value=float(np.median(hu)),
                            p99_value=float(np.percentile(hu, 99)), notes=tuple(notes))


def classify_and_store(store: Store, study_uid: str, rules: RuleSet | None = None) -> list[Decision]:
    """Classify every series of a stored study and replace its rows in the `phases` table."""
    return classify_and_keep_headers(store, study_uid, rules)[0]


def classify_and_keep_headers(store: Store, study_uid: str, rules: RuleSet | None = None
                              ) -> tuple[list[Decision], dict[str, list[tuple[Path, Dataset]]]]:
    """`classify_and_store`, also returning the headers it read ({series UID: [(path, header with
    its pixel data deferred)]}, unreadable files left out), so a caller need not parse them again."""
    rules = rules or load_rules()
    headers, by_series = read_headers(store, study_uid, rules)

    def measure(h: SeriesHeader) -> PhaseMeasurement | None:
        try:
            loaded = load_volume(by_series[h.series_uid], int(rules.image["max_slices"]),
                                 float(rules.image["min_pixel_mm"]))
        except Exception as exc:  # undecodable pixels: decide without images, say so
            log.event("phases.pixels_unreadable", series_uid=h.series_uid, error=type(exc).__name__)
            return None
        return None if loaded is None else measure_volume(*loaded)

    # The image checks read and measure each series on its own, mostly in numpy and scipy,
    # which release the GIL: two threads use both cores of the reference machine.
    with ThreadPoolExecutor(MEASURE_THREADS) as pool:
        decisions = classify_study(headers, rules, measure, pool.map)
    save_decisions(store, study_uid, decisions, rules)
    log.event("phases.decided", study_uid=study_uid, series=len(decisions),
              ambiguous=sum(d.kind == "ambiguous" for d in decisions), rules_version=rules.version)
    return decisions, by_series
