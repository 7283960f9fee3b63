"""Comprehensive 3D SRs, TID 1500 Measurement Reports, of one analysis: two documents, so that a
viewer draws the ROIs and does not stop on the rest (issue 17; OHIF 3.12 stops at a measurement
group without image coordinates and reads measurements only from a document titled 126000).

The ROI document (template `title`, DCM 126000) holds, per ROI, two measurement groups with the
same tracking identifier and UID:
- TID 1411: finding type / category / site, the SEG segment it is drawn in (ReferencedSegment of
  the node's SEG, on the reference series), its level (images, z) and, for a tumour ROI, its
  lesion; its measurements that used no contrast phase (size, MR values);
- TID 1410: the ROI's outline on its largest section, a closed SCOORD POLYLINE selected from that
  image (hccnode.report.outline). highdicom allows one kind of ROI reference per group, so outline
  and segment are two groups of one tracked region; OHIF merges groups by tracking UID.
The measurements that used contrast phases are not in the TID 1411 group but in one TID 1410 group
per set of phases used (tracking identifier "<ROI>, <phases>", its own UID, the ROI's outline on its
next largest section), so a viewer that labels values by concept name only shows each phase set in
a box of its own (by_phases; OHIF 3.12 draws at most five lines per box, placed by the outline).
Each measurement is a TID 300 item (coded names and UCUM units from sr_templates/, one unit per
concept: ECV and NIC in %) with the contrast phase(s) it used as coded concept modifiers, the delay
after contrast start (DCM 122665) and a TID 4019 algorithm identification: the formula id, software
version and, as parameters, the marker, the series and phases, the lab value used (time, source),
the registration quality and, for an ADC map, the unit its values were read in and why ("input
unit ...").

The results document (template `results_title`, DCM 126001), listed in the ROI document's
evidence, holds what has no image coordinates (TID 1501 groups):
- measurements over several ROIs of one role (e.g. the mean of three liver ROIs) in a group per role;
- the laboratory values used: NUM with LOINC code, UCUM unit and Observation DateTime = when the
  sample was taken (in the document's Timezone Offset From UTC), and a TEXT with the source;
- one group per model card result: algorithm = card id and version; probability, hccnode-derived
  points (never coded as the paper's nomogram), linear predictor as NUM; risk group, paper, each
  term (value, cutoff, published OR, which way it pushes), a direction conflict the card records,
  limitations and whatever was withheld as TEXT;
- notes: the research-use statement and every measurement not made, with its reason.
With no ROI there is one document, the results document, written under the ROI document's UIDs.

Flags: COMPLETE (everything this analysis produced is in the two), UNVERIFIED (no person verified
them), FINAL for their inputs; a later analysis writes a new ROI SR that names this one as
predecessor.

TEXT items in a measurement group carry the free-text qualitative evaluations TID 1501 allows;
their concept names are private codes (sr_templates/private_codes.toml).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import hccnode
from hccnode.imaging.measure import ORGAN_MASK, READER, LabRef, Measurement, RoiRef
from hccnode.models.engine import term_line
from hccnode.report.inputs import Reference, ReportRoi, Tracking
from hccnode.report.outline import outline
from hccnode.report.reading import convert, earlier_study, lesion_of, phases_of, roi_level
from hccnode.report.templates import Template
from hccnode.report.uids import uid_from

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
DEVICE_UID = uid_from("hccnode", "observer device")


def ucum(unit: str) -> CodedConcept:
    """A UCUM unit code whose meaning is the unit itself (what UCUM displays)."""
    return CodedConcept(value=unit, scheme_designator="UCUM", meaning=unit or "1")


def local_offset() -> timedelta:
    """This machine's offset from UTC now: the SR's Timezone Offset From UTC (0008,0201)."""
    return datetime.now().astimezone().utcoffset() or timedelta(0)


def offset_text(offset: timedelta) -> str:
    """'+HHMM' / '-HHMM' of an offset from UTC."""
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def dicom_datetime(iso: str, offset: timedelta) -> str:
    """ISO 8601 -> DICOM DT without a suffix, in the SR's Timezone Offset From UTC `offset`
    (PS3.5 6.2: a DT without &ZZXX is in that offset): a time with an offset is converted to the
    same instant at `offset`, a time without one is kept as given. (A suffix of hour 00, as in
    +0000 for UTC, is valid DICOM but makes dcmtk 3.6.7's dsrdump warn that the value violates
    its VR; issue 17.) Unparseable: ValueError."""
    t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if t.utcoffset() is not None:
        t = t.astimezone(timezone(offset))
    out = t.strftime("%Y%m%d%H%M%S")
    if t.microsecond:
        out += f".{t.microsecond:06d}"
    return out


def _text(name: CodedConcept, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _add_texts(group, items: Sequence[hd.sr.TextContentItem]) -> None:
    if items:
        container = group[0]
        if "ContentSequence" not in container:
            container.ContentSequence = hd.sr.ContentSequence()
        container.ContentSequence.extend(items)


def describe_lab(lab: LabRef) -> str:
    return f"{lab.name} = {lab.value:g} {lab.unit}, taken {lab.time}, source {lab.source}"


def provenance(m: Measurement) -> list[str]:
    """The algorithm parameters of one measurement: where each input came from."""
    out = [f"marker {m.marker}"]
    out += [f"series {s.series_uid} as {s.phase}" + (f", {s.delay_s:g} s after contrast start" if s.delay_s is not None
                                                      else "") for s in m.series]
    if m.lab is not None:
        out.append(f"lab {describe_lab(m.lab)}")
    if m.registration:
        out.append("registration " + json.dumps(m.registration, sort_keys=True, default=str))
    if m.input_unit:
        out.append(f"input unit {m.input_unit}")
    return out + list(m.notes)


def measurement_item(m: Measurement, template: Template) -> hd.sr.Measurement:
    """One TID 300 measurement in the template's unit (a fraction written in %), with a HAS CONCEPT
    MOD contrast phase per phase it used and, where the headers gave it, the delay after contrast
    start (HAS ACQ CONTEXT NUM, s) of that phase."""
    entry = template.measurements[m.formula]
    try:
        value = convert(m.value, m.unit, entry.unit.value)
    except ValueError:
        raise ValueError(f"measurement {m.marker}: unit {m.unit!r} differs from the template's {entry.unit.value!r} "
                         f"for formula {m.formula}") from None
    item = hd.sr.Measurement(
        name=entry.name, value=value, unit=entry.unit, derivation=entry.derivation,
        algorithm_id=hd.sr.AlgorithmIdentification(name=m.formula, version=m.software_version,
                                                   parameters=provenance(m)))
    context = []
    for phase, delay in phases_of(m):
        context.append(hd.sr.CodeContentItem(name=template.context["phase"], value=template.phases[phase],
                                             relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD))
        if delay is not None:
            context.append(hd.sr.NumContentItem(name=template.context["delay"], value=float(delay), unit=ucum("s"),
                                                relationship_type=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT))
    if context:
        item[0].ContentSequence.extend(context)
    return item


def roi_source(ref: RoiRef) -> str:
    """Who drew an ROI, for the SR: the reader's annotation, the node, or the node inside a
    site's organ mask (named with the tool that drew it)."""
    if ref.source == READER:
        return f"reader annotation {ref.annotation_uid or '(UID not given)'}, label {ref.label!r}"
    if ref.source == ORGAN_MASK:
        mask = ref.placed_in or ref.annotation_uid
        return f"automatic, placed by paper 001's ROI rules inside the site's organ mask: {mask}"
    return "automatic"


def not_measured(m: Measurement) -> str:
    where = f" in {m.roi.name} ({m.roi.label or m.roi.source})" if m.roi else ""
    text = f"{m.marker}{where} not measured: {m.reason}"
    if m.lab_missing_reason and m.lab_missing_reason not in text:
        text += f" ({m.lab_missing_reason})"
    return text


def by_phases(pairs: Sequence[tuple[Measurement, hd.sr.Measurement]]
              ) -> tuple[list[hd.sr.Measurement], list[tuple[tuple[str, ...], list[hd.sr.Measurement]]]]:
    """An ROI's SR measurements split by the contrast phases each used: (those that used none,
    [(phases, those that used exactly these phases)] in order of first use). A viewer that labels a
    value by its concept name only (OHIF 3.12: "Attenuation Coefficient: 41.47 [hnsf'U]", at most
    five lines per measurement group) then shows one phase set per box: the unenhanced HU apart
    from the equilibrium HU, and no value cut off."""
    whole: list[hd.sr.Measurement] = []
    phased: dict[tuple[str, ...], list[hd.sr.Measurement]] = {}
    for m, item in pairs:
        phases = tuple(p for p, _ in phases_of(m))
        if phases:
            phased.setdefault(phases, []).append(item)
        else:
            whole.append(item)
    return whole, list(phased.items())


@dataclass(frozen=True)
class Document:
    """Where one SR document goes: its series, SOP Instance UID and series number."""

    series_uid: str
    sop_uid: str
    series_number: int


def section(roi: ReportRoi, reference: Reference, rank: int = 0) -> hd.sr.ImageRegion:
    """The ROI's outline on its largest section, or with `rank` n on its (n+1)-th largest (the
    largest again when it has fewer sections), as a TID 1410 Image Region (SCOORD closed POLYLINE)
    with the image (and frame) it is drawn on as SELECTED FROM."""
    areas = roi.areas
    covered = [int(k) for k in np.argsort(-areas, kind="stable") if areas[k] > 0]
    k = covered[rank] if rank < len(covered) else covered[0]
    ds, frame = reference.source_of(k)
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=outline(roi.mask[k]),
        source_image=hd.sr.SourceImageForRegion(str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                                [frame] if frame is not None else None))


def build_sr(
    sources: Sequence[Dataset],
    reference: Reference,
    rois: Sequence[ReportRoi],
    tracks: Sequence[Tracking],
    seg: Dataset | None,
    measurements: Sequence[Measurement],
    model_results: Sequence[dict[str, Any]],
    labs_used: Sequence[LabRef],
    missing: Sequence[str],
    template: Template,
    document: Document,
    results: Document,
    previous: Sequence[Dataset] = (),
    lab_codes: dict[str, CodedConcept] | None = None,
    other_evidence: Sequence[Dataset] = (),
) -> list[hd.sr.Comprehensive3DSR]:
    """The SR documents of one analysis (see the module docstring): [ROI document, results
    document], or [results document] alone, written as `document`, when no ROI was measured.
    `missing` are extra "not measured" notes from the caller (e.g. "tumor: no reader
    annotation"); `previous` are SRs this one replaces (Predecessor Documents Sequence);
    `lab_codes` maps a lab name to its code."""
    notes_t = template.notes
    notes: list[str] = list(missing)
    by_roi: dict[int, list[tuple[Measurement, hd.sr.Measurement]]] = defaultdict(list)
    by_role: dict[tuple[str, str, str | None], list[hd.sr.Measurement]] = defaultdict(list)
    study_level: list[hd.sr.Measurement] = []
    role_refs: dict[tuple[str, str, str | None], RoiRef] = {}
    index = {r.ref: i for i, r in enumerate(rois)}
    for m in measurements:
        if m.value is None:
            notes.append(not_measured(m))
            continue
        if m.formula not in template.measurements:
            notes.append(f"{m.marker} = {m.value:g} {m.unit} ({m.formula}) is not reported: the SR template has no entry "
                         f"for this formula")
            continue
        if m.roi is not None and m.roi not in index and m.roi.name not in template.roles:
            notes.append(f"{m.marker} = {m.value:g} {m.unit} is not reported: ROI role {m.roi.name!r} has no entry in "
                         f"the SR template")
            continue
        item = measurement_item(m, template)
        if m.roi is None:
            study_level.append(item)
        elif m.roi in index:
            by_roi[index[m.roi]].append((m, item))
        else:
            key = (m.roi.name, m.roi.source, earlier_study(m))
            by_role[key].append(item)
            role_refs.setdefault(key, m.roi)

    on_images: list = []
    for i, (roi, track) in enumerate(zip(rois, tracks)):
        role = template.roles[roi.ref.name]
        identifier = hd.sr.TrackingIdentifier(uid=track.uid, identifier=track.identifier)
        segment = None
        if seg is not None:
            segment = hd.sr.ReferencedSegment(
                sop_class_uid=SEG_SOP_CLASS, sop_instance_uid=str(seg.SOPInstanceUID), segment_number=track.segment_number,
                source_series=hd.sr.SourceSeriesForSegmentation(reference.series_uid))
        where = dict(finding_type=role.type, finding_category=role.category, finding_sites=[hd.sr.FindingSite(role.site)])
        # The ROI as a whole: its SEG segment and the measurements that used no contrast phase
        # (size; MR values) (TID 1411) and, with the same tracking identifier and UID, its outline
        # on its largest section (TID 1410). highdicom allows one kind of ROI reference per group,
        # so the two are two groups of one tracked region; OHIF 3.12 merges groups by tracking UID
        # and draws the outline. The measurements read from contrast phases follow in one TID 1410
        # group per set of phases used (see by_phases).
        whole, phased = by_phases(by_roi.get(i, []))
        volume = dict(referenced_segment=segment) if segment is not None else dict(referenced_regions=[
            section(roi, reference)])
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=identifier, measurements=whole or None, **volume, **where)
        level = [_text(template.context["level"], roi_level(roi, reference))]
        lesion = lesion_of(roi, rois)
        if lesion:
            level.append(_text(template.context["lesion"], lesion))
        _add_texts(group, [_text(notes_t["roi_source"], roi_source(roi.ref))] + level)
        on_images.append(group)
        on_images.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=identifier, referenced_region=section(roi, reference), **where))
        # Each set of phases on the next largest section: a viewer places a group's text by its
        # outline, so boxes on one outline would overlap (OHIF 3.12: at the first two vertices).
        # The finding site is the ROI group's: OHIF prints it as one more line per box.
        for rank, (phases, items) in enumerate(phased, start=1):
            name = f"{track.identifier}, {' + '.join(p.replace('_', ' ') for p in phases)}"
            on_images.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=uid_from("tracking", track.uid, *phases),
                                                             identifier=name[:64]),
                referenced_region=section(roi, reference, rank), measurements=items,
                finding_type=role.type, finding_category=role.category))
    other: list = []
    for (role_name, source, earlier), items in sorted(by_role.items()):
        role = template.roles[role_name]
        ident = f"{role.label}, {earlier} study ({source} ROIs)" if earlier else f"{role.label} (all {source} ROIs)"
        uid = uid_from("tracking", role_name, source, reference.series_uid, *([earlier] if earlier else []))
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=ident[:64]),
            finding_type=role.type, finding_sites=[hd.sr.FindingSite(role.site)], measurements=items)
        if source == ORGAN_MASK:
            _add_texts(group, [_text(notes_t["roi_source"], roi_source(role_refs[(role_name, source, earlier)]))])
        other.append(group)
    sop_uid = document.sop_uid
    if study_level:
        other.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uid_from("tracking", "study", sop_uid), identifier="Study"),
            measurements=study_level))
    offset = local_offset()
    if labs_used:
        other.append(_labs_group(labs_used, template, lab_codes or {}, sop_uid, offset))
    for result in model_results:
        other.append(_model_group(result, template, sop_uid))
    notes_group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid_from("tracking", "notes", sop_uid), identifier="Notes"),
        finding_type=notes_t["group"])
    _add_texts(notes_group, [_text(notes_t["research_use"], hccnode.RESEARCH_USE)]
               + [_text(notes_t["not_measured"], n) for n in notes])
    other.append(notes_group)

    listed = {str(d.SOPInstanceUID) for d in sources}
    evidence = list(sources) + [d for d in reference.datasets if str(d.SOPInstanceUID) not in listed]  # outlines' images
    evidence += ([seg] if seg is not None else []) + list(other_evidence)
    if not on_images:
        return [_document(other, template, False, document, evidence, previous, offset)]
    rest = _document(other, template, False, results, evidence, (), offset)
    main = _document(on_images, template, True, document, evidence + [rest], previous, offset)
    return [main, rest]


def _document(groups: list, template: Template, images: bool, where: Document, evidence: list[Dataset],
              previous: Sequence[Dataset], offset: timedelta) -> hd.sr.Comprehensive3DSR:
    """One TID 1500 document: the ROI document (`images`) or the results document."""
    title = template.title if images else template.results_title
    description = "hccnode measurements (research)" if images else "hccnode labs, models and notes (research)"
    observation = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_UID, name="hccnode", manufacturer_name="hccnode", model_name=f"hccnode {hccnode.__version__}")))
    report = hd.sr.MeasurementReport(observation_context=observation, procedure_reported=template.procedure,
                                     imaging_measurements=groups, title=title)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report[0], series_instance_uid=where.series_uid, series_number=where.series_number,
        sop_instance_uid=where.sop_uid, instance_number=1, manufacturer="hccnode", is_complete=True, is_final=True,
        is_verified=False, previous_versions=list(previous) or None, series_description=description)
    sr.SoftwareVersions = hccnode.__version__
    sr.TimezoneOffsetFromUTC = offset_text(offset)  # the offset of every DA/TM/DT in it (PS3.3 C.12.1)
    return sr


def _labs_group(labs: Sequence[LabRef], template: Template, lab_codes: dict[str, CodedConcept], sop_uid: str,
                offset: timedelta):
    items, texts = [], []
    for lab in labs:
        code = template.lab_codes.get(lab.name) or lab_codes.get(lab.name)
        texts.append(_text(template.labs["source"], describe_lab(lab)))
        if code is None:
            continue
        item = hd.sr.Measurement(name=code, value=float(lab.value), unit=ucum(lab.unit))
        item[0].ObservationDateTime = dicom_datetime(lab.time, offset)
        items.append(item)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid_from("tracking", "labs", sop_uid), identifier="Laboratory values"),
        finding_type=template.labs["group"], measurements=items or None)
    _add_texts(group, texts)
    return group


def _model_group(result: dict[str, Any], template: Template, sop_uid: str):
    t = template.model
    card, version = str(result.get("card_id")), str(result.get("card_version"))
    out = result.get("outputs") or {}
    nums = []
    for key, unit in (("probability", "1"), ("derived_points", "{points}"), ("linear_predictor", "1")):
        if isinstance(out.get(key), (int, float)) and not isinstance(out.get(key), bool):
            nums.append(hd.sr.Measurement(name=t[key], value=float(out[key]), unit=ucum(unit)))
    texts = []
    if out.get("risk_group"):
        means = f" ({out['risk_group_means']})" if out.get("risk_group_means") else ""
        texts.append(_text(t["risk_group"], f"{out['risk_group']}{means}"))
    cited = result.get("citation") or "paper not identified"   # never the stored text's file name
    paper = f"{cited} Where in the paper: {result.get('where')}" if result.get("where") else str(cited)
    texts.append(_text(t["source"], f"{result.get('title') or card}; {paper}"))
    texts += [_text(t["term"], term_line(term)) for term in out.get("terms") or [] if "label" in term]
    if out.get("direction_note"):
        texts.append(_text(t["direction"], str(out["direction_note"])))
    for note_key in ("linear_predictor_note", "derived_points_note", "reported_versus"):
        if out.get(note_key):
            texts.append(_text(t["limitation"], str(out[note_key])))
    texts += [_text(t["cohort"], str(x)) for x in _as_list(result.get("cohort_facts"))]
    texts += [_text(t["limitation"], str(x)) for x in _as_list(result.get("limitations"))]
    texts += [_text(t["not_available"], str(r)) for r in _as_list(result.get("reasons"))]
    texts += [_text(t["not_available"], f"{k.replace('_', ' ')}: {v}")
              for k, v in sorted((result.get("withheld") or {}).items())]
    used = [f"{k} = {v.get('value')} {v.get('unit')} ({v.get('source')})"
            for k, v in sorted((result.get("inputs_used") or {}).items())]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid_from("tracking", "model", card, version, sop_uid),
                                                     identifier=f"Model {card} {version}"[:64]),
        finding_type=t["group"],
        algorithm_id=hd.sr.AlgorithmIdentification(name=card, version=version, parameters=used or None),
        measurements=nums or None)
    _add_texts(group, texts)
    return group


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, dict):
        return [f"{k}: {v}" for k, v in value.items()]
    return [value]
