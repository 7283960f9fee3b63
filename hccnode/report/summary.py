"""The summary page(s): key images with the ROIs outlined, the measurements, the model results with
their papers and limits, what is missing, and the research-use statement.

Written for a person, not for our code: each value under a human label ("Tumor ECV", its contrast
phase and the delay after contrast start), units as a reader writes them ("HU", from the SR
template's [display_units]), each ROI with its level and lesion, each model with its citation and,
for a logistic card, its terms (value, cutoff, published OR, which way each pushes) and any
direction conflict the card records; no snake_case identifier reaches the page.

The page is drawn with matplotlib and saved as PDF (wrapped as DICOM Encapsulated PDF Storage)
and as PNG (for the audit). It carries no patient identifiers (Burned In Annotation NO): the
DICOM header says whose study it belongs to.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID  # noqa: E402

import hccnode  # noqa: E402
from hccnode.imaging.measure import LabRef, Measurement  # noqa: E402
from hccnode.models.engine import term_line  # noqa: E402
from hccnode.report.inputs import Reference, ReportRoi, Tracking  # noqa: E402
from hccnode.report.reading import convert, earlier_levels, lesion_of, phase_text, roi_level  # noqa: E402
from hccnode.report.sr import describe_lab  # noqa: E402
from hccnode.report.templates import Template, load_template  # noqa: E402

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")
PATIENT_KEYS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex")
STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
WRAP = 120
_SNAKE = re.compile(r"'?\b([A-Za-z0-9]+(?:_[A-Za-z0-9]+)+)\b'?")
OUTPUT_NAMES = {"risk_group": "risk group", "probability": "probability",
                "derived_points": "hccnode-derived points (not the paper's nomogram)",
                "linear_predictor": "relative log-odds (sum of the terms)"}


def human(text: str) -> str:
    """`text` without code identifiers: a snake_case name becomes words ('t2_sir_post' -> 't2 sir post')."""
    return _SNAKE.sub(lambda m: m.group(1).replace("_", " "), text)


def paper_of(formula: str) -> str:
    """'paper001.ecv_cect' -> 'paper 001'; the node's own statistics and sizes say so."""
    head = formula.split(".")[0]
    if head.startswith("paper") and head[5:].isdigit():
        return f"paper {head[5:]}"
    return {"roi": "ROI statistic", "size": "size"}.get(head, human(head))


def value_label(m: Measurement, template: Template) -> str:
    """'Tumor ECV, unenhanced + equilibrium (120 s after contrast start)'."""
    entry = template.measurements.get(m.formula)
    what = entry.label if entry else human(m.marker)
    role = template.roles[m.roi.name].label if m.roi and m.roi.name in template.roles else "Study"
    phase = phase_text(m)
    return f"{role} {what}" + (f", {phase}" if phase else "")


def lab_label(name: str) -> str:
    """A lab test as people name it: the catalog's name ('hct' -> 'Hematocrit'); a derived index in
    capitals ('nlr' -> 'NLR')."""
    from hccnode.labs import catalog

    test = catalog.load().tests.get(name)
    return test.name if test is not None else name.upper()


def unit_label(unit: str, template: Template) -> str:
    return template.display_units.get(unit, unit)


def key_slices(rois: Sequence[ReportRoi], n: int = 2) -> list[int]:
    """Up to `n` slices to show: the largest tumor cross-section first, then the slice showing the
    most other ROIs (so reference ROIs such as the aorta are seen)."""
    tumors = [r.areas for r in rois if r.ref.name == "tumor"]
    picks: list[int] = []
    if tumors:
        picks.append(int(np.argmax(np.sum(tumors, axis=0))))
    others = [r.areas > 0 for r in rois if r.ref.name != "tumor"]
    if others:
        present = np.sum(others, axis=0)
        for k in np.argsort(-present, kind="stable"):
            if int(k) not in picks:
                picks.append(int(k))
                break
    return picks[:n]


def image_label(reference: Reference | None, k: int) -> str:
    """How a reader finds slice k in the viewer: series, instance (and frame) number."""
    if reference is None:
        return f"slice {k + 1}"
    ds, frame = reference.source_of(k)
    label = f"series {ds.get('SeriesNumber', '?')}, image {ds.get('InstanceNumber', '?')}"
    return label + (f", frame {frame}" if frame is not None else "")


def render_pages(rois: Sequence[ReportRoi], tracks: Sequence[Tracking], measurements: Sequence[Measurement],
                 model_results: Sequence[dict[str, Any]], labs_used: Sequence[LabRef], missing: Sequence[str],
                 images: np.ndarray | None = None, window: tuple[float, float] | None = None,
                 reference: Reference | None = None, template: Template | None = None) -> list[Figure]:
    """The summary (A4 portrait): page 1 with the key images, continuation pages when the text does
    not fit on it. `images` is the reference volume (z, y, x) in modality units
    for the key images; `window` (centre, width) its display window, default the 1st to 99th
    percentile of the images (pass (40, 400) for a CT soft-tissue window); `reference` names the
    key images by series, instance and frame number; `template` gives the labels (default: the shipped one)."""
    template = template or load_template()
    fig = plt.figure(figsize=(8.27, 11.69), dpi=100)
    fig.text(0.5, 0.975, "hccnode - liver imaging research measurements", ha="center", va="top", fontsize=13,
             weight="bold")
    fig.text(0.5, 0.955, hccnode.RESEARCH_USE, ha="center", va="top", fontsize=8.5, color="#b00000")
    slices = key_slices(rois)
    if window is not None:
        lo, hi = window[0] - window[1] / 2, window[0] + window[1] / 2
    elif images is not None and slices:
        finite = images[slices][np.isfinite(images[slices])]
        lo, hi = (float(v) for v in np.percentile(finite, (1, 99))) if finite.size else (0.0, 1.0)
    for j, k in enumerate(slices):
        ax = fig.add_axes((0.12 + j * 0.42, 0.745, 0.34, 0.18))
        if images is not None:
            ax.imshow(images[k], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        else:
            ax.imshow(np.zeros(rois[0].mask.shape[1:]), cmap="gray", vmin=0, vmax=1)
        # Tumors last and thicker: their edge often coincides with a liver mask's hole.
        order = sorted(range(len(tracks)), key=lambda i: rois[i].ref.name == "tumor")
        for i in order:
            r, t = rois[i], tracks[i]
            if r.mask[k].any():
                width = 1.6 if r.ref.name == "tumor" else 1.0
                ax.contour(r.mask[k].astype(float), levels=[0.5], colors=[COLORS[i % len(COLORS)]], linewidths=width)
                ys, xs = np.nonzero(r.mask[k])
                ax.text(xs.max() + 1, ys.min(), str(t.segment_number), color=COLORS[i % len(COLORS)], fontsize=7)
        ax.set_title(image_label(reference, k), fontsize=8)
        ax.set_axis_off()
    lines: list[tuple[str, dict]] = []

    def add(text: str, **style) -> None:
        for i, part in enumerate(textwrap.wrap(text, WRAP) or [""]):
            lines.append(("    " + part if i else part, style))

    add("ROIs (number on the images = segment number)", weight="bold", size=9)
    for r, t in zip(rois, tracks):
        lesion = lesion_of(r, rois)
        add(f"{t.segment_number} = {t.identifier}" + (f", {lesion}" if lesion else "") + f": {roi_level(r, reference)}",
            size=7)
    for note in earlier_levels(measurements):   # ROIs of the paired earlier study: not on these images
        add(f"not shown: {note}", size=7)
    add("")
    add("Measurements (value, unit, paper; the SR holds each value's full provenance)", weight="bold", size=9)
    for m in measurements:
        if m.value is None:
            continue
        lab = f"; {lab_label(m.lab.name)} {m.lab.value:g} {unit_label(m.lab.unit, template)}" if m.lab else ""
        entry = template.measurements.get(m.formula)
        unit = entry.unit.value if entry else m.unit   # the SR's unit: one unit per concept (ECV, NIC in %)
        add(f"{value_label(m, template)}: {convert(m.value, m.unit, unit):.4g} {unit_label(unit, template)} "
            f"({paper_of(m.formula)}{lab})", size=7)
    add("")
    add("Laboratory values used", weight="bold", size=9)
    for lab in labs_used:
        add(describe_lab(replace(lab, name=lab_label(lab.name), unit=unit_label(lab.unit, template))), size=7.5)
    if not labs_used:
        add("none", size=7.5)
    notes = [human(n) for n in missing] + [f"{value_label(m, template)} not measured: {human(m.reason or '')}"
                                          for m in measurements if m.value is None]
    add("")
    add("Not measured", weight="bold", size=9)
    for n in notes or ["nothing missing"]:
        add(n, size=7.5)
    add("")
    add("Published models (research; see limits)", weight="bold", size=9)
    for r in model_results:
        out = r.get("outputs") or {}
        shown = [f"{OUTPUT_NAMES[k]} {out[k]:.3g}" if isinstance(out[k], float) else f"{OUTPUT_NAMES[k]} {out[k]}"
                 for k in OUTPUT_NAMES if k in out]
        status = ", ".join(shown) if shown else "not evaluated: " + "; ".join(r.get("reasons") or ["no output"])
        add(human(f"{r.get('title') or r.get('card_id')} (card {r.get('card_id')} {r.get('card_version')}): {status}"),
            size=7.5)
        add(f"  {r.get('citation') or 'paper not identified'}", size=7, color="#555555")
        if out.get("direction_note"):
            add(f"  {out['direction_note']}", size=7, color="#b00000")
        for term in out.get("terms") or []:
            if "label" in term:
                add(f"  term: {term_line(term)}", size=7)
        if not out.get("terms"):   # a cutoff card: the value it was compared with, in the card's unit
            labels = r.get("input_labels") or {}
            for name, used in sorted((r.get("inputs_used") or {}).items()):
                value, unit = used.get("value"), unit_label(str(used.get("unit")), template)
                shown = f"{value:.4g}" if isinstance(value, float) else str(value)
                add(human(f"  input: {labels.get(name, name)} = {shown} {unit}"), size=7)
        for key in ("linear_predictor_note", "derived_points_note"):
            if out.get(key):
                add(f"  {human(out[key])}", size=7, color="#555555")
        for k, v in sorted((r.get("withheld") or {}).items()):
            add(human(f"  withheld {k}: {v}"), size=7, color="#555555")
        if r.get("cohort_facts"):
            add(human(f"  cohort: {'; '.join(r['cohort_facts'])}"), size=7, color="#555555")
        limits = r.get("limitations") or []
        stated = [lim for lim in limits if lim.startswith("stated by the paper")]
        for lim in stated + [lim for lim in limits if lim not in stated][:1]:
            add(human(f"  limit: {lim}"), size=7, color="#555555")
    pages = [fig]
    y = 0.73
    for text, style in lines:
        if y < 0.04:  # continue on a new page: nothing is cut off
            fig = plt.figure(figsize=(8.27, 11.69), dpi=100)
            pages.append(fig)
            fig.text(0.5, 0.975, f"hccnode - liver imaging research measurements (continued, page {len(pages)})",
                     ha="center", va="top", fontsize=11, weight="bold")
            fig.text(0.5, 0.955, hccnode.RESEARCH_USE, ha="center", va="top", fontsize=8.5, color="#b00000")
            y = 0.93
        fig.text(0.04, y, text, va="top", **style)
        y -= 0.0112 if style.get("size", 8) <= 7 else 0.012 if style.get("size", 8) < 8.5 else 0.016
    for page in pages:
        page.text(0.5, 0.01, f"hccnode {hccnode.__version__} - {hccnode.RESEARCH_USE}", ha="center", fontsize=6.5,
                  color="#777777")
    return pages


def render(*args, **kwargs) -> Figure:
    """The first page of `render_pages` (the key images and what fits beside them)."""
    first, *rest = render_pages(*args, **kwargs)
    for page in rest:
        plt.close(page)
    return first


def save(pages: Figure | Sequence[Figure], pdf_path: Path, png_path: Path) -> bytes:
    """Write the pages as one PDF, page 1 as PNG (further pages as <name>-2.png ...); return the PDF bytes."""
    pages = [pages] if isinstance(pages, Figure) else list(pages)
    png_path = Path(png_path)
    with PdfPages(pdf_path, metadata={"CreationDate": None, "Creator": f"hccnode {hccnode.__version__}"}) as pdf:
        for n, page in enumerate(pages, 1):
            pdf.savefig(page)
            page.savefig(png_path if n == 1 else png_path.with_name(f"{png_path.stem}-{n}{png_path.suffix}"),
                         format="png", dpi=100)
            plt.close(page)
    return Path(pdf_path).read_bytes()


def encapsulate_pdf(pdf: bytes, study: Dataset, reference: Reference, key_slice_indices: Sequence[int],
                    series_uid: str, sop_uid: str, series_number: int, title: str) -> Dataset:
    """The PDF as DICOM Encapsulated PDF Storage in the study of `study` (a source dataset)."""
    if not pdf.startswith(b"%PDF"):
        raise ValueError("not a PDF document")
    now = datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for key in PATIENT_KEYS + STUDY_KEYS:
        setattr(ds, key, study.get(key, ""))
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "hccnode summary (research)"
    ds.Manufacturer = "hccnode"
    ds.SoftwareVersions = hccnode.__version__
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "NO"
    ds.DocumentTitle = title
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    sources = []
    for k in key_slice_indices:
        src, frame = reference.source_of(k)
        item = Dataset()
        item.ReferencedSOPClassUID = src.SOPClassUID
        item.ReferencedSOPInstanceUID = src.SOPInstanceUID
        if frame is not None:
            item.ReferencedFrameNumber = frame
        sources.append(item)
    if sources:
        ds.SourceInstanceSequence = sources
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    return ds
