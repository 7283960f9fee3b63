"""A small measured phantom study for the report tests: CECT 64 px x 16 slices with a reader SEG,
its ROIs, an ECV map, measurements, model results and the hematocrit used."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from hccnode.imaging import ecv
from hccnode.imaging.measure import AUTOMATIC, LabRef, Measurement, RoiRef, SeriesRef
from hccnode.imaging.rois import read_annotation
from hccnode.imaging.volumes import read_series
from hccnode.models.card import default_dirs, load_cards
from hccnode.models.engine import evaluate
from hccnode.phantom import StudySpec, generate
from hccnode.report import ReportRoi

DCIODVFY = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"
# Warnings accepted from dciodvfy (dicom3tools), each unavoidable:
# - 99HCCNODE: our documented private coding scheme; dciodvfy knows only the standard designators.
# - QUANTITY as Image Type / Frame Type value 4: the Parametric Map value highdicom writes
#   (PS3.3 C.8.32.3.1), missing from this dicom3tools release's term table.
ALLOWED_WARNINGS = ("Unrecognized defined term <99HCCNODE> for value 1 of attribute <Coding Scheme Designator>",
                    "Unrecognized defined term <QUANTITY> for value 4 of attribute <Image Type>",
                    "Unrecognized defined term <QUANTITY> for value 4 of attribute <Frame Type>")


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings not in ALLOWED_WARNINGS) for one file."""
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    warnings = [ln for ln in lines if ln.startswith("Warning") and not any(a in ln for a in ALLOWED_WARNINGS)]
    return errors, warnings


@dataclass
class Case:
    sources: list[pydicom.Dataset]
    reference: list[pydicom.Dataset]
    rois: list[ReportRoi]
    measurements: list[Measurement]
    model_results: list[dict]
    labs: list[LabRef]
    ecv_map: np.ndarray
    liver: np.ndarray
    images: np.ndarray
    truth: dict = field(default_factory=dict)

    def kwargs(self, **override) -> dict:
        base = dict(sources=self.sources, reference=self.reference, rois=self.rois, measurements=self.measurements,
                    model_results=self.model_results, labs_used=self.labs, ecv_map=self.ecv_map,
                    liver_mask=self.liver, images=self.images)
        base.update(override)
        return base


def _ordered(folder: Path, vol) -> list[pydicom.Dataset]:
    by_uid = {d.SOPInstanceUID: d for d in (pydicom.dcmread(p) for p in folder.glob("*.dcm"))}
    return [by_uid[u] for u in vol.sop_instance_uids]


def make_case(root: Path) -> Case:
    truth = generate(StudySpec(kind="cect", matrix=64, slices=16, seg_phase="equilibrium", noise_sd=0.0), root)
    t = truth.as_dict()
    folder = {s["kind"]: root / s["folder"] for s in t["studies"][0]["series"]}
    eq_vol = read_series(sorted(folder["ct_equilibrium"].glob("*.dcm")))
    un_vol = read_series(sorted(folder["ct_unenhanced"].glob("*.dcm")))
    reference = _ordered(folder["ct_equilibrium"], eq_vol)
    unenhanced = _ordered(folder["ct_unenhanced"], un_vol)
    seg = pydicom.dcmread(next(folder["seg"].glob("*.dcm")))
    ann = read_annotation(seg, eq_vol)
    rois = [ReportRoi.from_roi_mask(r) for r in ann.rois]
    by_role = {r.ref.name: r for r in rois}
    # An automatic ROI as well, so the SEG holds both kinds: a small box inside the reader's liver.
    auto_mask = np.zeros_like(by_role["liver"].mask)
    z, y, x = (int(np.median(i)) for i in np.nonzero(by_role["liver"].mask))
    auto_mask[z - 1:z + 2, y - 2:y + 3, x - 2:x + 3] = True
    auto_mask &= by_role["liver"].mask
    rois.append(ReportRoi(RoiRef("liver", AUTOMATIC, label="liver auto 1"), auto_mask))
    eq = sitk.GetArrayFromImage(eq_vol.image)
    un = sitk.GetArrayFromImage(un_vol.image)
    aorta = by_role["aorta"].mask
    d_aorta = float(eq[aorta].mean() - un[aorta].mean())
    hct = LabRef("hct", 0.40, "L/L", "2026-01-02T08:00:00+01:00", "hl7:ORU^R01 MSG0001")
    spacing = tuple(reversed(eq_vol.image.GetSpacing()))
    ecv_map = ecv.ecv_map_percent(un, eq, by_role["liver"].mask, d_aorta, hct.value, spacing, sigma_mm=0.0)
    series = (SeriesRef(un_vol.series_uid, "unenhanced"), SeriesRef(eq_vol.series_uid, "equilibrium"))

    def ecv_of(role: str) -> float:
        m = by_role[role].mask
        return ecv.ecv_cect_percent(float(eq[m].mean() - un[m].mean()), d_aorta, hct.value)

    tumor_ecv, liver_ecv = ecv_of("tumor"), ecv_of("liver")
    measurements = [
        Measurement.of("paper001.ecv_cect", "ecv_tumor", tumor_ecv, roi=by_role["tumor"].ref, series=series, lab=hct,
                       registration={"ncc": 0.97, "flagged": False}),
        Measurement.of("paper001.ecv_cect", "ecv_liver", liver_ecv, roi=by_role["liver"].ref, series=series, lab=hct),
        Measurement.of("size.max_inplane_diameter", "tumor_diameter", 40.0, roi=by_role["tumor"].ref, series=series[1:]),
        Measurement(marker="aorta_hu_equilibrium", value=float(eq[aorta].mean()), unit="[hnsf'U]",
                    formula="roi.mean_hu", roi=by_role["aorta"].ref, series=series[1:]),
        Measurement.missing("nic_tumor", "1", "paper000.nic", "no iodine map: not a dual-energy study",
                            roi=by_role["tumor"].ref),
    ]
    cards = load_cards(default_dirs())
    results = [
        evaluate(cards["p001-liver-ecv@1.0.0"], {"liver_ecv_hu": {"value": liver_ecv, "unit": "%", "source": "marker ecv_liver"}}),
        evaluate(cards["p002-nomogram@1.0.0"], {"tumor_size": {"value": 40.0, "unit": "mm", "source": "marker tumor_diameter"}}),
    ]
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder["ct_unenhanced"].glob("*.dcm"))]
    sources += reference + [seg]  # the reader's annotation is evidence too
    return Case(sources, reference, rois, measurements, results, [hct], ecv_map, by_role["liver"].mask, eq, t)


def without_hct(case: Case) -> Case:
    """The same study when no hematocrit was found: ECV missing with its reason, no map."""
    reason = "no hematocrit within 48 h of the scan"
    ms = [Measurement.missing(m.marker, m.unit, m.formula, reason, roi=m.roi, series=m.series,
                              lab_missing_reason=reason) if m.formula == "paper001.ecv_cect" else m
          for m in case.measurements]
    return replace(case, measurements=ms, labs=[], ecv_map=None)


def read_back_map(path, positions: list, sop_uids: list[str] | None = None) -> np.ndarray:
    """A Parametric Map on the reference grid whose slice k lies at positions[k] (mm): each frame
    placed at the slice whose position it states (and, if given, derived from sop_uids[k]), NaN
    where no frame is."""
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    where = [tuple(np.round(np.asarray(p, float), 3)) for p in positions]
    out = np.full((len(where), ds.Rows, ds.Columns), np.nan, np.float32)
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        k = where.index(tuple(np.round(np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float), 3)))
        if sop_uids is not None:
            assert item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID == sop_uids[k]
        out[k] = frame
    return out


def analysis_sr(path) -> pydicom.Dataset:
    """The SR documents of one analysis read as one, for looking up content: the ROI SR at
    `path` with the content items of its results SR (sr_results.dcm beside it, when written)
    appended to its own."""
    ds = pydicom.dcmread(path)
    results = Path(path).with_name("sr_results.dcm")
    if results.exists():
        ds.ContentSequence = list(ds.ContentSequence) + list(pydicom.dcmread(results).ContentSequence)
    return ds


def walk(items):
    """Every content item of an SR content sequence, depth first."""
    for item in items or []:
        yield item
        yield from walk(item.get("ContentSequence"))


_CACHE: dict[str, object] = {}


def shared_case(tmp_path_factory) -> Case:
    """One phantom case per test session (generation takes a few seconds)."""
    if "case" not in _CACHE:
        _CACHE["case"] = make_case(tmp_path_factory.mktemp("report_phantom"))
    return _CACHE["case"]


def shared_outputs(tmp_path_factory) -> dict[str, Path]:
    """build_outputs of the shared case, once per session: {"seg"|"pm"|"sr"|"results"|"pdf": path}."""
    if "outputs" not in _CACHE:
        from hccnode.report import build_outputs

        case = shared_case(tmp_path_factory)
        files = build_outputs(out_dir=tmp_path_factory.mktemp("report_out"), **case.kwargs())
        _CACHE["outputs"] = dict(zip(("seg", "pm", "sr", "results", "pdf"), files))
    return _CACHE["outputs"]
