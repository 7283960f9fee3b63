"""Comprehensive 3D SR, TID 1500 Measurement Report, of one analysis.

Content (all groups are TID 1501 / TID 1411 measurement groups):
- one group per ROI: tracking identifier and UID, finding type / category / site, the SEG
  segment it is drawn in (ReferencedSegment of the node's SEG, on the reference series), its
  level (images, z) and, for a tumour ROI, its lesion; its measurements (TID 300, coded names and
  UCUM units from sr_templates/, one unit per concept: ECV and NIC in %), each with the contrast
  phase(s) it used as a coded concept modifier, the delay after contrast start (DCM 122665) and a TID 4019
  algorithm identification: the formula id, software version and, as parameters, the marker, the
  series and phases, the lab value used (time, source), the registration quality and, for an ADC
  map, the unit its values were read in and why ("input unit ...");
- measurements over several ROIs of one role (e.g. the mean of three liver ROIs) in a group per role;
- the laboratory values used: NUM with LOINC code, UCUM unit and Observation DateTime = when the
  sample was taken, and a TEXT with the source;
- one group per model card result: algorithm = card id and version; probability, hccnode-derived
  points (never coded as the paper's nomogram), linear predictor as NUM; risk group, paper, each
  term (value, cutoff, published OR, which way it pushes), a direction conflict the card records,
  limitations and whatever was withheld as TEXT;
- notes: the research-use statement and every measurement not made, with its reason.

Flags: COMPLETE (everything this analysis produced is in it), UNVERIFIED (no person verified
it), FINAL for its inputs; a later analysis writes a new SR that names this one as predecessor.

TEXT items in a measurement group carry the free-text qualitative evaluations TID 1501 allows;
their concept names are private codes (sr_templates/private_codes.toml).
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from typing import Any, Sequence

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import hccnode
from hccnode.imaging.measure import ORGAN_MASK, READER, LabRef, Measurement, RoiRef
from hccnode.models.engine import term_line
from hccnode.report.inputs import Reference, ReportRoi, Tracking
from hccnode.report.reading import convert, earlier_study, lesion_of, phases_of, roi_level
from hccnode.report.templates import Template
from hccnode.report.uids import uid_from

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
DEVICE_UID = uid_from("hccnode", "observer device")


def ucum(unit: str) -> CodedConcept:
    """A UCUM unit code whose meaning is the unit itself (what UCUM displays)."""
    return CodedConcept(value=unit, scheme_designator="UCUM", meaning=unit or "1")


def dicom_datetime(iso: str) -> str:
    """ISO 8601 -> DICOM DT (with &ZZXX when the time has an offset). Unparseable: ValueError."""
    t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    out = t.strftime("%Y%m%d%H%M%S")
    if t.microsecond:
        out += f".{t.microsecond:06d}"
    if t.utcoffset() is not None:
        out += t.strftime("%z")
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
    series_uid: str,
    sop_uid: str,
    series_number: int,
    previous: Sequence[Dataset] = (),
    lab_codes: dict[str, CodedConcept] | None = None,
    other_evidence: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """The SR of one analysis (see the module docstring). `missing` are extra "not measured"
    notes from the caller (e.g. "tumor: no reader annotation"); `previous` are SRs this one
    replaces (Predecessor Documents Sequence); `lab_codes` maps a lab name to its code."""
    notes_t = template.notes
    notes: list[str] = list(missing)
    by_roi: dict[int, list[hd.sr.Measurement]] = defaultdict(list)
    by_role: dict[tuple[str, str], list[hd.sr.Measurement]] = defaultdict(list)
    study_level: list[hd.sr.Measurement] = []
    role_refs: dict[tuple[str, str], RoiRef] = {}
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
            by_roi[index[m.roi]].append(item)
        else:
            key = (m.roi.name, m.roi.source, earlier_study(m))
            by_role[key].append(item)
            role_refs.setdefault(key, m.roi)

    groups: list = []
    for i, (roi, track) in enumerate(zip(rois, tracks)):
        role = template.roles[roi.ref.name]
        segment = None
        if seg is not None:
            segment = hd.sr.ReferencedSegment(
                sop_class_uid=SEG_SOP_CLASS, sop_instance_uid=str(seg.SOPInstanceUID), segment_number=track.segment_number,
                source_series=hd.sr.SourceSeriesForSegmentation(reference.series_uid))
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=track.uid, identifier=track.identifier),
            referenced_segment=segment, finding_type=role.type, finding_category=role.category,
            finding_sites=[hd.sr.FindingSite(role.site)], measurements=by_roi.get(i) or None)
        where = [_text(template.context["level"], roi_level(roi, reference))]
        lesion = lesion_of(roi, rois)
        if lesion:
            where.append(_text(template.context["lesion"], lesion))
        _add_texts(group, [_text(notes_t["roi_source"], roi_source(roi.ref))] + where)
        groups.append(group)
    for (role_name, source, earlier), items in sorted(by_role.items()):
        role = template.roles[role_name]
        ident = f"{role.label}, {earlier} study ({source} ROIs)" if earlier else f"{role.label} (all {source} ROIs)"
        uid = uid_from("tracking", role_name, source, reference.series_uid, *([earlier] if earlier else []))
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=ident[:64]),
            finding_type=role.type, finding_sites=[hd.sr.FindingSite(role.site)], measurements=items)
        if source == ORGAN_MASK:
            _add_texts(group, [_text(notes_t["roi_source"], roi_source(role_refs[(role_name, source, earlier)]))])
        groups.append(group)
    if study_level:
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uid_from("tracking", "study", sop_uid), identifier="Study"),
            measurements=study_level))
    if labs_used:
        groups.append(_labs_group(labs_used, template, lab_codes or {}, sop_uid))
    for result in model_results:
        groups.append(_model_group(result, template, sop_uid))
    notes_group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid_from("tracking", "notes", sop_uid), identifier="Notes"),
        finding_type=notes_t["group"])
    _add_texts(notes_group, [_text(notes_t["research_use"], hccnode.RESEARCH_USE)]
               + [_text(notes_t["not_measured"], n) for n in notes])
    groups.append(notes_group)

    observation = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_UID, name="hccnode", manufacturer_name="hccnode", model_name=f"hccnode {hccnode.__version__}")))
    report = hd.sr.MeasurementReport(observation_context=observation, procedure_reported=template.procedure,
                                     imaging_measurements=groups, title=template.title)
    evidence = list(sources) + ([seg] if seg is not None else []) + list(other_evidence)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report[0], series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_uid, instance_number=1, manufacturer="hccnode", is_complete=True, is_final=True,
        is_verified=False, previous_versions=list(previous) or None,
        series_description="hccnode measurements (research)")
    sr.SoftwareVersions = hccnode.__version__
    return sr


def _labs_group(labs: Sequence[LabRef], template: Template, lab_codes: dict[str, CodedConcept], sop_uid: str):
    items, texts = [], []
    for lab in labs:
        code = template.lab_codes.get(lab.name) or lab_codes.get(lab.name)
        texts.append(_text(template.labs["source"], describe_lab(lab)))
        if code is None:
            continue
        item = hd.sr.Measurement(name=code, value=float(lab.value), unit=ucum(lab.unit))
        item[0].ObservationDateTime = dicom_datetime(lab.time)
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
