"""`build_outputs`: the SEG, the ECV Parametric Map, the SR and the summary of one analysis."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset

from hccnode import log
from hccnode.imaging.boxed import BoxedArray
from hccnode.imaging.measure import LabRef, Measurement
from hccnode.imaging.roi_stats import union
from hccnode.labs import catalog
from hccnode.report import pmap, seg, sr, summary
from hccnode.report.inputs import Reference, ReportRoi, analysis_key, tracking, with_type2
from hccnode.report.templates import Template, load_template
from hccnode.report.uids import uid_from

SERIES_NUMBERS = {"seg": 9910, "pm": 9911, "sr": 9912, "pdf": 9913, "results": 9914}
FILES = {"seg": "seg.dcm", "pm": "ecv_map.dcm", "sr": "sr.dcm", "pdf": "summary.dcm", "results": "sr_results.dcm"}
SUMMARY_PDF, SUMMARY_PNG = "summary.pdf", "summary.png"
ECV_FORMULA = "paper001.ecv_cect"  # its template entry names the map's quantity
CT_WINDOW = (40.0, 400.0)  # soft-tissue window (centre, width) in HU for the summary's key images


def lab_codes(data_dir: str | Path | None = None) -> dict[str, CodedConcept]:
    """Lab key -> LOINC code (the catalog's first code) and the catalog's name for it."""
    cat = catalog.load(data_dir)
    return {key: CodedConcept(value=t.loinc[0], scheme_designator="LN", meaning=t.name[:64])
            for key, t in cat.tests.items() if t.loinc}


def output_uids(key: str, study_uid: str, reference_series_uid: str) -> dict[str, tuple[str, str]]:
    """(series UID, SOP Instance UID) per object. Instance UIDs follow the analysis key; series
    UIDs are one per study and object kind (SEG / map: per reference series too), so successive
    versions of an output sit in one series."""
    series = {"seg": uid_from("series", study_uid, "seg", reference_series_uid),
              "pm": uid_from("series", study_uid, "pm", reference_series_uid),
              "sr": uid_from("series", study_uid, "sr"),
              "pdf": uid_from("series", study_uid, "pdf"),
              "results": uid_from("series", study_uid, "results")}
    return {kind: (series[kind], uid_from(key, kind)) for kind in series}


def _write(on_written: Callable[[Path], None] | None, ds: Dataset, path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
    if on_written is not None:
        on_written(path)
    return path


def build_outputs(
    sources: Sequence[Dataset],
    reference: Sequence[Dataset] | Reference,
    rois: Sequence[ReportRoi],
    measurements: Sequence[Measurement],
    model_results: Sequence[dict[str, Any]],
    labs_used: Sequence[LabRef],
    out_dir: str | Path,
    *,
    ecv_map: np.ndarray | BoxedArray | None = None,
    liver_mask: np.ndarray | None = None,
    images: np.ndarray | None = None,
    missing: Sequence[str] = (),
    previous_sr: Dataset | None = None,
    template: Template | None = None,
    data_dir: str | Path | None = None,
    series_numbers: dict[str, int] | None = None,
    on_written: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Write the outputs of one analysis to `out_dir`; return the DICOM files to send, in order
    SEG, ECV map (when given), SR (the ROIs on their images), the results SR (labs, models,
    notes; when there are ROIs), summary (Encapsulated PDF). summary.pdf and summary.png are
    written beside them for the audit. `on_written(path)` is called as each DICOM file is in
    place, so it can be sent while the next is made: the map first (the largest, longest to
    send), then SEG, SRs and the summary last (it takes longest to make and a viewer needs the
    others). See the package docstring for the other arguments."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    template = template or load_template()
    numbers = {**SERIES_NUMBERS, **(series_numbers or {})}
    ref = reference if isinstance(reference, Reference) else Reference(reference)
    for ds in {id(d): d for d in (*sources, *ref.datasets)}.values():
        with_type2(ds)
    missing = list(missing)
    for r in rois:
        ref.check(r.mask, f"ROI {r.describe()}")
        if r.ref.name not in template.roles:
            raise ValueError(f"ROI {r.describe()}: role {r.ref.name!r} has no [roles] entry in the SR template")
    key = analysis_key(sources, ref, rois, labs_used, model_results, template.digest)
    uids = output_uids(key, ref.study_uid, ref.series_uid)
    tracks = tracking(rois, ref, {k: v.label for k, v in template.roles.items()})
    if not rois:
        missing.append("Segmentation not written: no ROI was measured")

    # The map first: at ~210 MB (200 x 512^2) it takes longest to send, and it needs nothing the
    # others are made of, so it is sent while the SEG and the SRs are made.
    pm_ds, pm_path = None, None
    if ecv_map is not None:
        if liver_mask is None:
            livers = [r.mask for r in rois if r.ref.name == "liver"]
            liver_mask = union(livers) if livers else None
        if liver_mask is None or not np.any(liver_mask):
            missing.append("ECV map not written: no liver mask")
        elif ECV_FORMULA not in template.measurements:
            missing.append(f"ECV map not written: the SR template has no entry for {ECV_FORMULA}")
        else:
            try:
                pm_ds = pmap.build_ecv_map(ref, ecv_map, liver_mask, template.measurements[ECV_FORMULA].name,
                                           template.roles["liver"].site, *uids["pm"], numbers["pm"])
            except ValueError as exc:
                missing.append(f"ECV map not written: {exc}")
            else:
                pm_path = _write(on_written, pm_ds, out / FILES["pm"])

    seg_ds, seg_path = None, None
    if rois:
        seg_ds = seg.build_seg(ref, rois, tracks, template, *uids["seg"], numbers["seg"])
        seg_path = _write(on_written, seg_ds, out / FILES["seg"])
    written = [p for p in (seg_path, pm_path) if p is not None]

    previous = []
    if previous_sr is not None and str(previous_sr.SOPInstanceUID) != uids["sr"][1]:
        previous = [previous_sr]
    docs = sr.build_sr(sources, ref, rois, tracks, seg_ds, measurements, model_results, labs_used, missing,
                       template, sr.Document(*uids["sr"], numbers["sr"]), sr.Document(*uids["results"], numbers["results"]),
                       previous=previous, lab_codes=lab_codes(data_dir), other_evidence=[pm_ds] if pm_ds is not None else ())
    for kind, doc in zip(("sr", "results"), docs):
        written.append(_write(on_written, doc, out / FILES[kind]))

    ct = str(ref.datasets[0].get("Modality", "")) == "CT"
    pages = summary.render_pages(rois, tracks, measurements, model_results, labs_used, missing, images=images,
                                 window=CT_WINDOW if ct else None, reference=ref, template=template)
    pdf = summary.save(pages, out / SUMMARY_PDF, out / SUMMARY_PNG)
    doc = summary.encapsulate_pdf(pdf, sources[0] if sources else ref.datasets[0], ref, summary.key_slices(rois),
                                  *uids["pdf"], numbers["pdf"], title="hccnode research summary")
    written.append(_write(on_written, doc, out / FILES["pdf"]))
    log.event("report.built", objects=len(written), rois=len(rois), measurements=len(measurements),
              models=len(model_results), missing=len(missing) + sum(m.value is None for m in measurements),
              replaces=bool(previous))
    return written
