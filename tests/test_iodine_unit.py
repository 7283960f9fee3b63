"""The iodine map's unit (hccnode.imaging.iodine_unit): taken from its header (Real World Value
Mapping, Rescale Type MGML) or a cited vendor convention, checked against the aorta; unknown or
conflicting: absolute iodine not reported, NIC still is. Pure functions first, then DECT phantom
studies whose iodine maps are rewritten as a scanner might write them, expected values from the
phantom's truth (its iodine map is in mg/mL: stored x 0.01, Real World Value Mapping "mg/ml",
Rescale Type MGML).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from hccnode.imaging import iodine_unit as iu
from hccnode.phantom import StudySpec, generate
from hccnode.pipeline import analyze_study
from hccnode.store.db import Store
from phantom_index import index_files
from pipeline_support import by_marker, scratch_dir
from test_adc_vendors import sr_notes, sr_parameters


def mapping(unit: str, slope: float, intercept: float = 0.0) -> Sequence:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = unit, "UCUM", unit
    item = Dataset()
    item.MeasurementUnitsCodeSequence = Sequence([code])
    item.RealWorldValueFirstValueMapped, item.RealWorldValueLastValueMapped = -32768, 32767
    item.RealWorldValueSlope, item.RealWorldValueIntercept = slope, intercept
    item.LUTLabel, item.LUTExplanation = "Iodine", unit
    return Sequence([item])


# ---- the header ----

def test_header_unit_from_the_real_world_value_mapping_with_its_slope_over_the_rescale():
    ds = Dataset()
    ds.RescaleSlope, ds.RescaleIntercept = 0.01, 0.0
    ds.RealWorldValueMappingSequence = mapping("ug/ml", 10.0)  # stored x 10 = ug/mL, volume = stored x 0.01
    h = iu.header_unit(ds)
    assert h.unit == "ug/ml" and h.slope == pytest.approx(1000.0) and h.intercept == 0.0
    assert h.source == iu.RWVM


def test_header_unit_from_rescale_type_mgml_top_level_and_in_an_enhanced_image():
    ds = Dataset()
    ds.RescaleType = "MGML"  # PS3.3 Table C.11-1: mg/ml
    assert iu.header_unit(ds) == iu.HeaderUnit("mg/ml", source=iu.RESCALE_TYPE)
    enhanced, group, pvt = Dataset(), Dataset(), Dataset()
    pvt.RescaleType, pvt.RescaleSlope, pvt.RescaleIntercept = "MGML", 1.0, 0.0
    group.PixelValueTransformationSequence = Sequence([pvt])
    enhanced.SharedFunctionalGroupsSequence = Sequence([group])
    assert iu.header_unit(enhanced).unit == "mg/ml"


def test_no_unit_in_a_header_without_a_concentration_mapping_or_mgml():
    ds = Dataset()
    ds.RescaleType = "US"
    ds.RealWorldValueMappingSequence = mapping("[hnsf'U]", 1.0)  # a mapping, but not a concentration
    assert iu.header_unit(ds) is None


def test_unit_spellings():
    assert iu.parse_unit("0.1 mg/mL") == "10*-1.mg/ml" and iu.parse_unit("100 µg/ml") == "10*2.ug/ml"
    assert iu.UNIT_TO_MG_ML[iu.parse_unit("mg/cm3")] == 1.0
    with pytest.raises(ValueError, match="not an iodine concentration unit"):
        iu.parse_unit("HU")


# ---- the decision ----

def test_a_claim_the_aorta_confirms_is_taken():
    # equilibrium aorta 4.7 mg/mL (inside 1.5-10), arterial 12.7 mg/mL (inside 2-25)
    d = iu.decide("ACME", "equilibrium", 4.7, iu.HeaderUnit("mg/ml"))
    assert d.unit == "mg/ml" and d.mg_ml(d.linear(4.7)) == pytest.approx(4.7) and "confirmed by the aorta" in d.text
    d = iu.decide("ACME", "arterial", 127.0, iu.HeaderUnit("10*-1.mg/ml", source=iu.RESCALE_TYPE))
    assert d.unit == "10*-1.mg/ml" and d.mg_ml(d.linear(127.0)) == pytest.approx(12.7)
    assert d.basis == iu.RESCALE_TYPE


@pytest.mark.parametrize("claim, aorta, fits", [
    ("mg/ml", 47.0, "0.1 mg/mL"),      # stored in 0.1 mg/mL, labelled mg/mL: x10
    ("mg/ml", 4700.0, "ug/mL"),        # stored in ug/mL, labelled mg/mL: x1000
    ("ug/ml", 4.7, "mg/mL"),           # stored in mg/mL, labelled ug/mL
])
def test_a_claim_off_by_10_or_1000_is_refused_naming_the_conflict(claim, aorta, fits):
    d = iu.decide("ACME", "equilibrium", aorta, iu.HeaderUnit(claim))
    assert d.unit is None and d.mg_ml(d.linear(aorta)) is None
    assert "conflicting evidence" in d.text and f"says {iu.label(claim)}" in d.text and f"it fits {fits}" in d.text


def test_a_claim_stands_when_the_aorta_cannot_check_it():
    assert "not checked against the aorta (no aorta ROI" in iu.decide("ACME", "equilibrium", None,
                                                                        iu.HeaderUnit("mg/ml")).text
    d = iu.decide("ACME", "equilibrium", 0.5, iu.HeaderUnit("mg/ml"))  # 0.5, 0.05, 0.0005: no scale fits
    assert d.unit == "mg/ml" and "neither confirms nor contradicts" in d.text


def test_without_a_claim_the_unit_is_unknown_and_nic_is_still_a_ratio():
    d = iu.decide("ACME", "equilibrium", 4.7)
    assert d.unit is None and d.basis == iu.UNKNOWN and "does not state its unit" in d.text
    assert "'ACME'" in d.text and "absolute iodine not reported" in d.nic_note
    assert d.linear(4.7) == 4.7  # NIC is computed from the map's own values


def test_a_vendor_convention_is_used_and_checked():
    table = tuple(iu.unit_evidence.parse_conventions(
        '[[convention]]\nmanufacturer = "^ACME"\nunit = "0.1 mg/ml"\nsource = "test source"\n', iu.parse_unit, "t"))
    c = iu.find_convention("ACME CT", table=table)
    d = iu.decide("ACME CT", "portal", 50.0, convention=c)
    assert d.unit == "10*-1.mg/ml" and "vendor convention for 'ACME CT' (test source)" in d.text
    assert iu.decide("ACME CT", "portal", 5.0, convention=c).unit is None  # 0.5 mg/mL: fits mg/mL instead


def test_the_venous_bands_separate_scales_ten_apart():
    # a band as wide as the factor between candidate scales could not tell them apart
    for phase in ("portal", "equilibrium"):
        lo, hi = iu.AORTA_MG_ML[phase]
        assert hi / lo < 10


def test_the_packaged_table_cites_every_entry_and_names_the_vendors_left_out():
    assert all(c.source for c in iu.conventions())
    text = (Path(iu.__file__).parents[1] / "data" / "iodine_units.toml").read_text()
    for vendor in ("Siemens", "GE", "Philips", "Canon"):
        assert vendor in text
    with pytest.raises(ValueError, match="no source"):
        iu.unit_evidence.parse_conventions('[[convention]]\nmanufacturer = "X"\nunit = "mg/ml"\n', iu.parse_unit, "t")


# ---- DECT phantom studies through the pipeline ----

@pytest.fixture(scope="module")
def template():
    root = scratch_dir("iodine-units")
    truth = generate(StudySpec(kind="dect", vendor="standard", seed=4, slices=12, matrix=64, noise_sd=2.0,
                               seg_phase="equilibrium", equilibrium_delay_s=120.0), root / "phantom")
    yield root, truth
    shutil.rmtree(root, ignore_errors=True)


def written_as(template, tmp: Path, manufacturer: str | None = None, rwvm: Sequence | None | str = "keep",
               rescale_type: str | None = "keep") -> tuple[Path, str]:
    """The study with its iodine maps' headers rewritten (stored values kept): `rwvm` replaces the
    Real World Value Mapping (None removes it), `rescale_type` the Rescale Type (None removes it)."""
    root, truth = template
    maps = {Path(s["folder"]).name for s in truth.series("dect_iodine")}
    top = truth.series("dect_iodine")[0]["folder"].split("/")[0]
    dst = tmp / "in"
    shutil.copytree(root / "phantom" / top, dst / top)
    for folder in (dst / top).iterdir():
        if folder.name not in maps:
            continue
        for path in folder.glob("*.dcm"):
            ds = pydicom.dcmread(path)
            if manufacturer is not None:
                ds.Manufacturer = manufacturer
            if rwvm != "keep":
                del ds.RealWorldValueMappingSequence
                if rwvm is not None:
                    ds.RealWorldValueMappingSequence = rwvm
            if rescale_type != "keep":
                del ds.RescaleType
                if rescale_type is not None:
                    ds.RescaleType = rescale_type
            ds.save_as(path)
    return dst, truth.data["studies"][0]["study_instance_uid"]


def analyse(tmp: Path, folder: Path, study: str):
    store = Store(tmp / "data")
    index_files(store, folder)
    try:
        return analyze_study(store, study)
    finally:
        store.close()


def assert_nic_is_truth(a, truth):
    nic = by_marker(a, "nic_tumor")
    want = truth.roi("tumor")["nic_equilibrium"]
    assert abs(nic.value - want) / want <= 0.02, (nic.value, want)
    want = 100 * truth.roi("tumor")["nic_arterial"]
    assert abs(by_marker(a, "nic_ap_tumor").value - want) / want <= 0.02


def truth_iodine(truth, role: str, phase: str) -> float:
    return truth.roi(role)["phases"][phase]["iodine_mg_ml"]


MEASURED = {
    # id: (Manufacturer, mapping, Rescale Type, what the provenance must say)
    "rwvm_mg_ml": (None, "keep", "keep", "mg/mL from the map's Real World Value Mapping; confirmed by the aorta"),
    # the same stored values said to be ug/mL with a slope 1000 times larger: the same mg/mL
    "rwvm_ug_ml": (None, mapping("ug/ml", 10.0), "keep",
                   "ug/mL from the map's Real World Value Mapping; confirmed by the aorta"),
    "rescale_type_mgml": ("ACME", None, "keep", "mg/mL from the map's Rescale Type MGML"),
}


@pytest.mark.parametrize("case", MEASURED)
def test_iodine_in_mg_ml_when_the_header_states_the_unit_and_the_sr_says_why(template, case):
    manufacturer, rwvm, rescale_type, why = MEASURED[case]
    tmp = scratch_dir(f"iodine-{case}-")
    try:
        a = analyse(tmp, *written_as(template, tmp, manufacturer, rwvm, rescale_type))
        truth = template[1]
        for marker, role, phase in (("aorta_iodine", "aorta", "equilibrium"), ("tumor_iodine", "tumor", "equilibrium"),
                                    ("aorta_iodine_arterial", "aorta", "arterial"),
                                    ("tumor_iodine_arterial", "tumor", "arterial")):
            m = by_marker(a, marker)
            want = truth_iodine(truth, role, phase)
            assert m.unit == "mg/mL" and m.value is not None, m.reason
            assert abs(m.value - want) / want <= 0.02, (marker, m.value, want)
            assert why in m.input_unit, m.input_unit
        assert_nic_is_truth(a, truth)
        assert why in by_marker(a, "nic_tumor").input_unit
        params = sr_parameters(a.out_dir / "sr.dcm", "roi.iodine_concentration")
        assert any(p.startswith("input unit ") and why in p for p in params), params
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_unknown_unit_reports_nic_but_not_absolute_iodine(template):
    tmp = scratch_dir("iodine-unknown-")
    try:
        a = analyse(tmp, *written_as(template, tmp, "ACME", None, None))
        for marker in ("aorta_iodine", "tumor_iodine", "aorta_iodine_arterial", "tumor_iodine_arterial"):
            m = by_marker(a, marker)
            assert m.value is None and "does not state its unit" in m.reason and "'ACME'" in m.reason, m.reason
        assert_nic_is_truth(a, template[1])
        assert "absolute iodine not reported" in by_marker(a, "nic_ap_tumor").input_unit
        notes = sr_notes(a.out_dir / "sr.dcm")
        assert any(n.startswith("tumor_iodine") and "absolute iodine concentration not reported" in n for n in notes)
        params = sr_parameters(a.out_dir / "sr.dcm", "paper000.nic")
        assert any(p.startswith("input unit NIC is a ratio") for p in params), params
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_vendor_convention_decides_a_map_without_a_unit(template, monkeypatch):
    # no cited convention exists in the packaged table (see hccnode/data/iodine_units.toml): a test one
    table = tuple(iu.unit_evidence.parse_conventions(
        '[[convention]]\nmanufacturer = "^ACME"\nunit = "mg/ml"\nsource = "test convention"\n', iu.parse_unit, "t"))
    monkeypatch.setattr(iu, "conventions", lambda: table)
    tmp = scratch_dir("iodine-vendor-")
    try:
        a = analyse(tmp, *written_as(template, tmp, "ACME", None, None))
        m = by_marker(a, "tumor_iodine")
        want = truth_iodine(template[1], "tumor", "equilibrium")
        assert abs(m.value - want) / want <= 0.02
        assert "vendor convention for 'ACME' (test convention); confirmed by the aorta" in m.input_unit
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_conflicting_scale_is_refused_named_and_nic_still_reported(template):
    # stored values as written, but the mapping says 10x as many mg/mL per stored unit
    tmp = scratch_dir("iodine-conflict-")
    try:
        a = analyse(tmp, *written_as(template, tmp, rwvm=mapping("mg/ml", 0.1)))
        for marker in ("aorta_iodine", "tumor_iodine", "aorta_iodine_arterial", "tumor_iodine_arterial"):
            m = by_marker(a, marker)
            assert m.value is None and "conflicting evidence on the iodine map's unit" in m.reason, m.reason
            assert "Real World Value Mapping says mg/mL" in m.reason and "it fits 0.1 mg/mL" in m.reason
        assert_nic_is_truth(a, template[1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
