import shutil
import subprocess
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import highdicom as hd
import numpy as np
import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage
from report_support import analysis_sr, dciodvfy, shared_case, shared_outputs, without_hct

import hccnode
from hccnode.imaging.measure import READER, Measurement, RoiRef
from hccnode.report import build_outputs
from hccnode.report.reading import contrast_phase
from hccnode.report.sr import dicom_datetime, measurement_item, offset_text
from hccnode.report.templates import load_template

DSRDUMP = shutil.which("dsrdump") or "/usr/bin/dsrdump"


@pytest.fixture(scope="session")
def case(tmp_path_factory):
    return shared_case(tmp_path_factory)


@pytest.fixture(scope="session")
def outputs(tmp_path_factory):
    return shared_outputs(tmp_path_factory)


def walk(items):
    for item in items:
        yield item
        yield from walk(item.get("ContentSequence", []))


def meaning(item) -> str:
    return item.ConceptNameCodeSequence[0].CodeMeaning


def texts(ds, name: str) -> list[str]:
    return [i.TextValue for i in walk(ds.ContentSequence) if i.ValueType == "TEXT" and meaning(i) == name]


def group(ds, identifier: str):
    for g in walk(ds.ContentSequence):
        if g.ValueType == "CONTAINER" and any(
                i.ValueType == "TEXT" and meaning(i) == "Tracking Identifier" and i.TextValue == identifier
                for i in g.get("ContentSequence", [])):
            return g
    raise KeyError(identifier)


@pytest.mark.parametrize("kind, title", [("sr", "Imaging Measurement Report"), ("results", "Oncology Measurement Report")])
def test_sr_documents_are_valid_dicom_and_dsrdump_prints_them_without_warning(outputs, kind, title):
    errors, warnings = dciodvfy(outputs[kind])
    assert errors == [] and warnings == []
    out = subprocess.run([DSRDUMP, str(outputs[kind])], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert title in out.stdout
    assert [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith(("W:", "E:"))] == []
    report = hd.sr.srread(outputs[kind]).content  # highdicom reads it back as TID 1500
    assert report.get_image_measurement_groups() or report.get_volumetric_roi_measurement_groups()


def test_roi_measurements_read_back_with_codes_values_and_units(case, outputs):
    # an ROI's values that used contrast phases sit in a planar group named by the ROI and those
    # phases, the others in the ROI's volumetric group (with its SEG segment)
    template = load_template()
    report = hd.sr.srread(outputs["sr"]).content
    volumetric = {g.tracking_identifier: g for g in report.get_volumetric_roi_measurement_groups()}
    assert len(volumetric) == len(case.rois)
    groups = {**volumetric, **{g.tracking_identifier: g for g in report.get_planar_roi_measurement_groups()}}
    labels = {r.ref: item.SegmentLabel for r, item in zip(case.rois, pydicom.dcmread(outputs["seg"]).SegmentSequence)}
    for m in (m for m in case.measurements if m.value is not None):
        phases = [p for p in dict.fromkeys(contrast_phase(s) for s in m.series) if p]
        g = groups[labels[m.roi] + (", " + " + ".join(p.replace("_", " ") for p in phases) if phases else "")]
        entry = template.measurements[m.formula]
        found = [x for x in g.get_measurements(name=entry.name) if x.unit.value == m.unit]
        assert len(found) == 1, m.marker
        assert found[0].value == pytest.approx(m.value)
        assert found[0].name.scheme_designator == entry.name.scheme_designator


def test_roi_groups_reference_their_seg_segment_and_source_series(case, outputs):
    ds = pydicom.dcmread(outputs["sr"])
    seg = pydicom.dcmread(outputs["seg"])
    for number, item in enumerate(seg.SegmentSequence, 1):
        g = group(ds, item.SegmentLabel)
        ref = next(i for i in g.ContentSequence if i.ValueType == "IMAGE" and meaning(i) == "Referenced Segment")
        sop = ref.ReferencedSOPSequence[0]
        assert sop.ReferencedSOPInstanceUID == seg.SOPInstanceUID and int(sop.ReferencedSegmentNumber) == number
        series = next(i for i in g.ContentSequence if meaning(i) == "Source Series for Segmentation")
        assert series.UID == case.reference[0].SeriesInstanceUID
        finding = next(i for i in g.ContentSequence if meaning(i) == "Finding")
        assert finding.ConceptCodeSequence[0].CodeValue == item.SegmentedPropertyTypeCodeSequence[0].CodeValue
    roi_sources = texts(ds, "ROI source")
    assert len(roi_sources) == len(case.rois)
    for roi, text in zip(case.rois, roi_sources):
        if roi.ref.source == "reader":
            assert text == f"reader annotation {roi.ref.annotation_uid}, label {roi.ref.label!r}"
        else:
            assert text == "automatic"


def test_measurement_provenance_formula_lab_and_series(case, outputs):
    ds = analysis_sr(outputs["sr"])
    ecv = next(m for m in case.measurements if m.marker == "ecv_tumor")
    num = next(i for i in walk(ds.ContentSequence) if i.ValueType == "NUM"
               and meaning(i) == "Extracellular volume fraction"
               and float(i.MeasuredValueSequence[0].NumericValue) == pytest.approx(ecv.value, abs=1e-6))
    children = {(meaning(c), c.TextValue) for c in num.ContentSequence if c.ValueType == "TEXT"}
    assert ("Algorithm Name", "paper001.ecv_cect") in children
    params = [v for k, v in children if k == "Algorithm Parameters"]
    assert any(p.startswith("lab hct = 0.4 L/L, taken 2026-01-02T08:00:00+01:00") for p in params)
    assert {f"series {s.series_uid} as {s.phase}" for s in ecv.series} <= set(params)
    assert any(p.startswith("registration ") and "0.97" in p for p in params)


def test_labs_used_with_code_unit_and_time(outputs):
    ds = analysis_sr(outputs["sr"])
    g = group(ds, "Laboratory values")
    num = next(i for i in g.ContentSequence if i.ValueType == "NUM")
    assert num.ConceptNameCodeSequence[0].CodingSchemeDesignator == "LN"
    assert float(num.MeasuredValueSequence[0].NumericValue) == 0.4
    assert num.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "L/L"
    # the instant the sample was taken (08:00 at +01:00), written in the SR's own offset from UTC
    offset = ds.TimezoneOffsetFromUTC
    taken = datetime.strptime(num.ObservationDateTime + offset, "%Y%m%d%H%M%S%z")
    assert taken == datetime(2026, 1, 2, 7, 0, tzinfo=timezone.utc)
    assert any("hl7:ORU^R01 MSG0001" in t for t in texts(ds, "Laboratory value source"))


def test_model_results_with_card_paper_limits_and_what_is_missing(case, outputs):
    ds = analysis_sr(outputs["sr"])
    for result in case.model_results:
        g = group(ds, f"Model {result['card_id']} {result['card_version']}")
        items = list(g.ContentSequence)
        algo = {meaning(i): i.TextValue for i in items if i.ValueType == "TEXT" and meaning(i).startswith("Algorithm")}
        assert algo["Algorithm Name"] == result["card_id"] and algo["Algorithm Version"] == result["card_version"]
        source = [i.TextValue for i in items if i.ValueType == "TEXT" and meaning(i) == "Model publication"]
        # cited by authors, title, journal and year, never by the stored text's file name (issue 16 point 8)
        assert len(source) == 1 and result["citation"] in source[0] and result["paper"] not in source[0]
        limits = [i.TextValue for i in items if i.ValueType == "TEXT" and meaning(i) == "Model limitation"]
        assert all(str(lim) in limits for lim in result["limitations"])
        risk = [i.TextValue for i in items if i.ValueType == "TEXT" and meaning(i) == "Model risk group"]
        missing = [i.TextValue for i in items if i.ValueType == "TEXT" and meaning(i) == "Model output not available"]
        if result["status"] == "evaluated":
            assert risk and risk[0].startswith(result["outputs"]["risk_group"])
        else:
            assert not risk and missing == list(result["reasons"])


def test_research_use_and_not_measured_are_stated(outputs):
    ds = analysis_sr(outputs["sr"])
    assert texts(ds, "Research use statement") == [hccnode.RESEARCH_USE]
    assert "nic_tumor in tumor (Tumor) not measured: no iodine map: not a dual-energy study" in texts(ds, "Not measured")
    assert ds.VerificationFlag == "UNVERIFIED" and ds.CompletionFlag == "COMPLETE"
    assert ds.get("PreliminaryFlag", "FINAL") == "FINAL"


def test_study_that_cannot_be_fully_measured_still_gets_an_sr(case, tmp_path):
    partial = without_hct(case)
    rois = [r for r in partial.rois if r.ref.name != "tumor"]
    ms = [m for m in partial.measurements if m.roi is None or m.roi.name != "tumor"]
    files = build_outputs(out_dir=tmp_path, **partial.kwargs(
        rois=rois, measurements=ms, missing=["tumor not measured: no reader annotation of a tumor"]))
    names = [f.name for f in files]
    assert names == ["seg.dcm", "sr.dcm", "sr_results.dcm", "summary.dcm"]  # no ECV map without hematocrit
    for name in ("sr.dcm", "sr_results.dcm"):
        errors, warnings = dciodvfy(tmp_path / name)
        assert errors == [] and warnings == []
    ds = analysis_sr(tmp_path / "sr.dcm")
    notes = texts(ds, "Not measured")
    assert "tumor not measured: no reader annotation of a tumor" in notes
    assert any(n.startswith("ecv_liver in liver (Liver) not measured: no hematocrit within 48 h") for n in notes)
    nums = [meaning(i) for i in walk(ds.ContentSequence) if i.ValueType == "NUM"]
    assert "Extracellular volume fraction" not in nums and "Attenuation Coefficient" in nums
    with pytest.raises(KeyError):
        group(ds, "Laboratory values")


def test_study_without_any_roi_gets_an_sr_saying_so(case, tmp_path):
    files = build_outputs(out_dir=tmp_path, **without_hct(case).kwargs(rois=[], measurements=[], model_results=[]))
    assert [f.name for f in files] == ["sr.dcm", "summary.dcm"]
    ds = pydicom.dcmread(files[0])
    assert "Segmentation not written: no ROI was measured" in texts(ds, "Not measured")
    assert dciodvfy(files[0])[0] == []


def test_measurement_without_template_entry_is_listed_not_dropped(case, tmp_path):
    extra = Measurement(marker="spleen_hu", value=50.0, unit="[hnsf'U]", formula="roi.site_specific",
                        roi=case.rois[0].ref)
    build_outputs(out_dir=tmp_path, **case.kwargs(measurements=case.measurements + [extra]))
    ds = analysis_sr(tmp_path / "sr.dcm")
    assert any(n.startswith("spleen_hu = 50 [hnsf'U] (roi.site_specific) is not reported") for n in texts(ds, "Not measured"))


def test_unit_differing_from_template_is_refused(case):
    m = replace(case.measurements[3], unit="mg/mL")  # roi.mean_hu is in [hnsf'U] in the template
    with pytest.raises(ValueError, match="aorta_hu_equilibrium: unit 'mg/mL' differs from the template"):
        measurement_item(m, load_template())


def test_dicom_datetime_is_the_instant_in_the_given_offset_without_a_suffix():
    one = timedelta(hours=1)
    assert dicom_datetime("2026-01-02T08:00:00", one) == "20260102080000"  # no offset given: kept
    assert dicom_datetime("2026-01-02T08:00:00Z", one) == "20260102090000"
    assert dicom_datetime("2026-01-02T08:00:00Z", timedelta(0)) == "20260102080000"
    assert dicom_datetime("2026-01-02T08:00:00.5-05:00", one) == "20260102140000.500000"
    assert offset_text(one) == "+0100" and offset_text(timedelta(hours=-5, minutes=-30)) == "-0530"
    with pytest.raises(ValueError):
        dicom_datetime("yesterday", one)


def test_no_phi_in_texts(case, outputs):
    ds = analysis_sr(outputs["sr"])
    values = " ".join(i.TextValue for i in walk(ds.ContentSequence) if i.ValueType == "TEXT")
    pid = str(case.reference[0].PatientID)
    assert pid and pid not in values and str(case.reference[0].PatientName) not in values
    assert str(ds.PatientID) == pid  # the header, not the content, carries identity


def test_measurement_over_several_rois_of_a_role_gets_a_role_group(case, tmp_path):
    # e.g. paper 001's liver ECV: the mean over three liver ROIs, recorded against the role.
    mean_liver = Measurement.of("paper001.ecv_cect", "ecv_liver_mean", 29.5, roi=RoiRef("liver", READER),
                                series=case.measurements[0].series, lab=case.labs[0])
    build_outputs(out_dir=tmp_path, **case.kwargs(measurements=[mean_liver]))
    report = hd.sr.srread(tmp_path / "sr_results.dcm").content  # no image coordinates: the results SR
    g = next(g for g in report.get_image_measurement_groups() if g.tracking_identifier == "Liver (all reader ROIs)")
    (m,) = g.get_measurements()
    assert (m.name.meaning, m.value, m.unit.value) == ("Extracellular volume fraction", 29.5, "%")
    assert g.finding_sites[0].value.value == "10200004"  # SCT Liver


def test_evidence_lists_sources_annotation_and_own_seg(case, outputs):
    ds = pydicom.dcmread(outputs["sr"])
    listed = {sop.ReferencedSOPInstanceUID for study in ds.CurrentRequestedProcedureEvidenceSequence
              for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}
    assert {str(d.SOPInstanceUID) for d in case.sources} <= listed
    assert pydicom.dcmread(outputs["seg"]).SOPInstanceUID in listed
    assert pydicom.dcmread(outputs["pm"]).SOPInstanceUID in listed


def test_measurement_in_an_unknown_role_is_listed_not_dropped(case, tmp_path):
    spleen = Measurement(marker="spleen_hu", value=50.0, unit="[hnsf'U]", formula="roi.mean_hu",
                         roi=RoiRef("spleen", READER))
    build_outputs(out_dir=tmp_path, **case.kwargs(measurements=[spleen]))
    ds = analysis_sr(tmp_path / "sr.dcm")
    assert "spleen_hu = 50 [hnsf'U] is not reported: ROI role 'spleen' has no entry in the SR template" \
        in texts(ds, "Not measured")


@given(st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2100, 1, 1)),
       st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]),
       st.sampled_from([timedelta(0), timedelta(hours=1), timedelta(hours=-5, minutes=-30)]))
def test_dicom_datetime_round_trips(t, tz, offset):
    t = t.replace(tzinfo=tz)
    dt = dicom_datetime(t.isoformat(), offset) + offset_text(offset)
    fmt = "%Y%m%d%H%M%S" + (".%f" if t.microsecond else "") + "%z"
    assert datetime.strptime(dt, fmt) == t


def test_paper_000_score_is_the_terms_without_the_refuted_constant(case, tmp_path):
    """Issue 16 point 7: the SR gives paper 000's terms and their sum, never a sum with the constant
    -22.624 that the card's own check shows cannot reproduce the cohort. Table 3 betas, by hand:
    1.068 x 0.40 + 0.921 x 5 + 0.906 x 6 + 0.525 x 5 + 1.777 x 1 = 14.8702 (with the constant: -7.7538)."""
    from hccnode.models.card import default_dirs, load_cards
    from hccnode.models.engine import evaluate

    card = load_cards(default_dirs())["p000-ecv-logistic@1.0.0"]
    src = "test"
    r = evaluate(card, {"tumor_ecv_iodine": {"value": 0.40, "unit": "1", "source": src},
                        "crp": {"value": 5.0, "unit": "mg/L", "source": src},
                        "il6": {"value": 6.0, "unit": "pg/mL", "source": src},
                        "neutrophils": {"value": 5.0, "unit": "10^9/L", "source": src},
                        "other_antitumor_therapy": {"value": True, "unit": "bool", "source": src}})
    build_outputs(out_dir=tmp_path, **case.kwargs(model_results=[r]))
    ds = analysis_sr(tmp_path / "sr.dcm")
    g = group(ds, "Model p000-ecv-logistic 1.0.0")
    nums = {meaning(i): float(i.MeasuredValueSequence[0].NumericValue) for i in g.ContentSequence if i.ValueType == "NUM"}
    assert nums == {"Model linear predictor": pytest.approx(14.8702, abs=1e-3)}
    limits = [i.TextValue for i in g.ContentSequence if i.ValueType == "TEXT" and meaning(i) == "Model limitation"]
    note = next(t for t in limits if t.startswith("sum of the terms without the published constant (-22.624)"))
    assert "+1.068 x tumor ECV (DECT iodine) (0.4) = +0.4272" in note and "+1.777 x" in note


def _groups_by_tracking_uid(ds) -> dict[str, list]:
    """Measurement groups of the Imaging Measurements container, merged by tracking UID as
    OHIF 3.12's SR loader merges them."""
    (container,) = [i for i in ds.ContentSequence if meaning(i) == "Imaging Measurements"]
    merged: dict[str, list] = {}
    for g in container.ContentSequence:
        items = list(g.ContentSequence)
        uid = next(i.UID for i in items if meaning(i) == "Tracking Unique Identifier")
        merged.setdefault(uid, []).extend(items)
    return merged


def test_every_roi_is_drawn_on_its_largest_section_with_the_image_selected_from(case, outputs):
    # Issue 17: OHIF draws a measurement group only with image coordinates, and stops at a group
    # without: every tracked region of the ROI SR carries a SCOORD on a reference image. The ROI's
    # own region is drawn on its largest section, each of its phase sets on the next largest (a
    # viewer places a group's text by its outline: on one outline the boxes would overlap).
    from matplotlib.path import Path as Polygon

    ds = pydicom.dcmread(outputs["sr"])
    merged = _groups_by_tracking_uid(ds)
    by_label = {item.SegmentLabel: r for r, item in zip(case.rois, pydicom.dcmread(outputs["seg"]).SegmentSequence)}
    names = [next(i.TextValue for i in items if meaning(i) == "Tracking Identifier") for items in merged.values()]
    assert set(by_label) <= set(names) and len(names) == len(set(names))
    for name, items in zip(names, merged.values()):
        label = name.split(", ")[0]
        roi = by_label[label]
        same_roi = [n for n in names if n.split(", ")[0] == label]
        rank = same_roi.index(name)                # 0: the ROI itself, written first
        order = [k for k in np.argsort(-roi.areas, kind="stable") if roi.areas[k] > 0]
        k = int(order[rank] if rank < len(order) else order[0])
        (scoord,) = [i for i in items if i.ValueType == "SCOORD"]
        assert meaning(scoord) == "Image Region" and scoord.GraphicType == "POLYLINE"
        points = np.asarray(scoord.GraphicData, float).reshape(-1, 2)
        assert np.array_equal(points[0], points[-1])  # closed
        (source,) = scoord.ContentSequence
        assert source.RelationshipType == "SELECTED FROM"
        ref = source.ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == case.reference[k].SOPInstanceUID
        assert ref.ReferencedSOPClassUID == case.reference[k].SOPClassUID
        # the outline encloses exactly the pixels of the ROI's largest part on that image, its
        # holes filled (pixel centres at +0.5)
        rows, cols = roi.mask.shape[1:]
        cc, rr = np.meshgrid(np.arange(cols) + 0.5, np.arange(rows) + 0.5)
        inside = Polygon(points).contains_points(np.c_[cc.ravel(), rr.ravel()]).reshape(rows, cols)
        parts, n = ndimage.label(roi.mask[k])
        largest = parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:]))
        np.testing.assert_array_equal(inside, ndimage.binary_fill_holes(largest))
        assert inside.sum() >= roi.mask[k].sum() / n


def test_the_roi_sr_holds_only_groups_with_image_coordinates_and_lists_the_results_sr(outputs):
    ds = pydicom.dcmread(outputs["sr"])
    results = pydicom.dcmread(outputs["results"])
    assert all(any(i.ValueType == "SCOORD" for i in items) for items in _groups_by_tracking_uid(ds).values())
    assert results.ConceptNameCodeSequence[0].CodeValue == "126001"  # OHIF 3.12 lists it, never draws it
    listed = {sop.ReferencedSOPInstanceUID for study in ds.CurrentRequestedProcedureEvidenceSequence
              for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}
    listed |= {sop.ReferencedSOPInstanceUID for study in ds.get("PertinentOtherEvidenceSequence", [])
               for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}
    assert results.SOPInstanceUID in listed
    idents = {i.TextValue for i in walk(results.ContentSequence) if meaning(i) == "Tracking Identifier"}
    assert {"Laboratory values", "Notes"} <= idents
    assert not any(i.ValueType == "SCOORD" for i in walk(results.ContentSequence))


def test_no_tracked_region_has_more_lines_than_ohif_draws(case, tmp_path):
    # OHIF 3.12 draws a merged group as one text box of at most five lines: one per NUM, then one
    # for the first finding site (DICOMSRDisplayTool._getTextBoxLinesFromLabels); a sixth is cut
    # off. A tumour with six values, as in the viewer's phantom (the Volume was the one not drawn):
    # its unenhanced, equilibrium and two-phase values in boxes of their own, none over five lines.
    tumor = next(r.ref for r in case.rois if r.ref.name == "tumor")
    un, eq = case.measurements[0].series
    both = (un, eq)
    ms = [Measurement("hu_tumor_unenhanced", 41.5, "[hnsf'U]", "roi.mean_hu", roi=tumor, series=(un,)),
          Measurement("hu_tumor_equilibrium", 107.6, "[hnsf'U]", "roi.mean_hu", roi=tumor, series=(eq,)),
          Measurement("dhu_tumor", 66.1, "[hnsf'U]", "roi.delta_hu", roi=tumor, series=both),
          Measurement.of("paper001.ecv_cect", "ecv_tumor", 34.0, roi=tumor, series=both, lab=case.labs[0]),
          Measurement.of("size.max_inplane_diameter", "tumor_diameter", 43.5, roi=tumor, series=(eq,)),
          Measurement.of("size.volume", "tumor_volume", 33.5, roi=tumor, series=(eq,))]
    build_outputs(out_dir=tmp_path, **case.kwargs(measurements=ms))
    merged = _groups_by_tracking_uid(pydicom.dcmread(tmp_path / "sr.dcm"))

    def lines(items) -> list:   # what OHIF prints: each NUM, then the finding site
        return (sorted(float(i.MeasuredValueSequence[0].NumericValue) for i in items if i.ValueType == "NUM")
                + [i.ConceptCodeSequence[0].CodeMeaning for i in items if meaning(i) == "Finding Site"][:1])

    boxes = {next(i.TextValue for i in items if meaning(i) == "Tracking Identifier"): lines(items)
             for items in merged.values()}
    assert boxes["Tumor (reader), unenhanced"] == [41.5]
    assert boxes["Tumor (reader), equilibrium"] == [33.5, 43.5, 107.6]
    assert boxes["Tumor (reader), unenhanced + equilibrium"] == [34.0, 66.1]
    assert boxes["Tumor (reader)"] == ["Liver"]                  # the ROI itself: its SEG segment and site
    assert max(len(lines) for lines in boxes.values()) <= 5


def test_outline_runs_along_the_pixel_edges_of_the_largest_part():
    from hccnode.report.outline import outline

    mask = np.zeros((6, 7), bool)
    mask[1:4, 1:3] = True      # an L: column 1-2 of rows 1-3 ...
    mask[3, 3:5] = True        # ... and row 3 to column 4
    mask[5, 6] = True          # a smaller part elsewhere: not outlined
    pts = outline(mask).tolist()
    assert pts[0] == pts[-1]
    assert sorted(map(tuple, pts[:-1])) == sorted([(1, 1), (3, 1), (3, 3), (5, 3), (5, 4), (1, 4)])
    with pytest.raises(ValueError):
        outline(np.zeros((3, 3), bool))
