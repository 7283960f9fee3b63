"""ADC maps as vendors write them, through the pipeline: the unit is taken from the Real World Value
Mapping, a site's configuration, a cited vendor convention or the tissue values, and the SR says
which and why; conflicting evidence is not measured, naming the conflict.

The phantom writes its ADC map in 10^-6 mm^2/s with a Real World Value Mapping; each case rewrites
the baseline study's headers (Manufacturer, mapping, Rescale Slope) as a vendor would, keeping the
stored values, so the expected ADC is the phantom's tumour ADC (truth) in 10^-3 mm^2/s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from hccnode.phantom import StudySpec, generate
from hccnode.pipeline import analyze_study
from hccnode.pipeline.mr import site_adc_units
from hccnode.store.db import Store
from phantom_index import index_files
from pipeline_support import by_marker, scratch_dir
from report_support import analysis_sr

ADC_MARKERS = ("adc_mean_tumor", "adc_max_tumor", "adc_min_tumor", "adc_heterogeneity_tumor")


@pytest.fixture(scope="module")
def template():
    root = scratch_dir("adc-vendors")
    truth = generate(StudySpec(kind="mr", vendor="standard", seed=11, slices=8, matrix=64, noise_sd=2.0,
                               tumor_adc=(1150.0, 1300.0), seg_phase="t2"), root / "phantom")
    yield root, truth
    shutil.rmtree(root, ignore_errors=True)


def rwvm(unit: str, slope: float) -> Sequence:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = unit, "UCUM", unit
    item = Dataset()
    item.MeasurementUnitsCodeSequence = Sequence([code])
    item.RealWorldValueFirstValueMapped, item.RealWorldValueLastValueMapped = 0, 65535
    item.RealWorldValueSlope, item.RealWorldValueIntercept = slope, 0.0
    item.LUTLabel, item.LUTExplanation = "ADC", unit
    return Sequence([item])


def written_as(template, tmp: Path, manufacturer: str, mapping: Sequence | None = None,
               rescale_slope: float | None = None) -> tuple[Path, str]:
    """The baseline study as `manufacturer` writes it: ADC map without a Real World Value Mapping
    (or with `mapping`), stored values kept, optionally a Rescale Slope. Returns (folder, study UID)."""
    root, truth = template
    adc_folder = truth.series("mr_adc")[0]["folder"]
    top = adc_folder.split("/")[0]
    dst = tmp / "in"
    shutil.copytree(root / "phantom" / top, dst / top)
    for path in (dst / top).rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.Manufacturer = manufacturer
        if path.parent.name == Path(adc_folder).name:
            del ds.RealWorldValueMappingSequence
            if mapping is not None:
                ds.RealWorldValueMappingSequence = mapping
            if rescale_slope is not None:
                ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = rescale_slope, 0, "US"
        ds.save_as(path)
    return dst, truth.data["studies"][0]["study_instance_uid"]


def analyse(tmp: Path, folder: Path, study: str, units: dict[str, str] | None = None):
    store = Store(tmp / "data")
    index_files(store, folder)
    with site_adc_units(units):
        return analyze_study(store, study)


def walk(items):
    for item in items:
        yield item
        yield from walk(item.get("ContentSequence", []))


def sr_parameters(sr_path: Path, algorithm: str) -> list[str]:
    """The Algorithm Parameters of the SR's NUM items measured by `algorithm`."""
    out = []
    for item in walk(analysis_sr(sr_path).ContentSequence):
        if item.ValueType != "NUM":
            continue
        texts = {(c.ConceptNameCodeSequence[0].CodeMeaning, c.TextValue) for c in item.get("ContentSequence", [])
                 if c.ValueType == "TEXT"}
        if ("Algorithm Name", algorithm) in texts:
            out += [v for k, v in texts if k == "Algorithm Parameters"]
    return out


def sr_notes(sr_path: Path) -> list[str]:
    return [i.TextValue for i in walk(analysis_sr(sr_path).ContentSequence) if i.ValueType == "TEXT"]


CASES = {
    # id: (Manufacturer, mapping, Rescale Slope, site units, what the provenance must say)
    "siemens_no_rwvm": ("SIEMENS", None, None, None,
                        "10^-6 mm2/s from the tissue values alone (no Real World Value Mapping, no site "
                        "configuration or vendor convention for 'SIEMENS')"),
    "ge_no_rwvm": ("GE MEDICAL SYSTEMS", None, None, None,
                   "um2/s (10^-6 mm2/s) from the vendor convention for 'GE MEDICAL SYSTEMS' (DICOM4QI"),
    "philips_rwvm": ("Philips", rwvm("10*-3.mm2/s", 0.001), None, None,
                     "10^-3 mm2/s from the map's Real World Value Mapping; confirmed by tissue values"),
    "philips_no_rwvm": ("Philips", None, None, None, "10^-6 mm2/s from the tissue values alone"),
    "unknown_vendor_1e-3": ("ACME", None, 0.001, None, "10^-3 mm2/s from the tissue values alone"),
    "site_override": ("ACME", None, 0.001, {"acme": "1e-3 mm2/s"},
                      "10^-3 mm2/s from the site configuration for Manufacturer 'ACME' ([adc] units); "
                      "confirmed by tissue values"),
}


@pytest.mark.parametrize("case", CASES)
def test_adc_measured_as_each_vendor_writes_it_and_the_sr_says_why(template, case):
    manufacturer, mapping, slope, units, why = CASES[case]
    tmp = scratch_dir(f"adc-{case}-")
    try:
        folder, study = written_as(template, tmp, manufacturer, mapping, slope)
        a = analyse(tmp, folder, study, units)
        want = template[1].roi("tumor", 0)["adc"] / 1000  # 10^-3 mm^2/s
        adc = by_marker(a, "adc_mean_tumor")
        assert adc.value is not None, adc.reason
        assert adc.unit == "10*-3.mm2/s" and abs(adc.value - want) / want <= 0.02, adc.value
        for marker in ADC_MARKERS:
            m = by_marker(a, marker)
            assert m.value is not None and why in m.input_unit, m.input_unit
        params = sr_parameters(a.out_dir / "sr.dcm", "paper003.adc_mean")
        assert any(p.startswith("input unit ") and why in p for p in params), params
        # the site unit is used only inside its context
        if units:
            assert by_marker(analyse(tmp / "again", folder, study), "adc_mean_tumor").value == pytest.approx(adc.value)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_conflicting_evidence_is_refused_naming_the_conflict(template):
    # Manufacturer GE (convention: 10^-6 mm2/s), but the values are rescaled to 10^-3 mm2/s
    tmp = scratch_dir("adc-conflict-")
    try:
        folder, study = written_as(template, tmp, "GE MEDICAL SYSTEMS", None, 0.001)
        a = analyse(tmp, folder, study)
        for marker in ADC_MARKERS:
            m = by_marker(a, marker)
            assert m.value is None
            assert "conflicting evidence on the ADC map's unit" in m.reason
            assert "vendor convention for 'GE MEDICAL SYSTEMS'" in m.reason and "says um2/s" in m.reason
            assert "they fit 10^-3 mm2/s" in m.reason
        assert by_marker(a, "t2_sir_tumor").value is not None  # the rest is measured
        assert any("adc_mean_tumor" in n and "conflicting evidence" in n for n in sr_notes(a.out_dir / "sr.dcm"))
        # a site that sets a unit the tissue values contradict is refused the same way
        b = analyse(tmp / "site", folder, study, {"GE MEDICAL SYSTEMS": "1e-6 mm2/s"})
        assert "site configuration for Manufacturer 'GE MEDICAL SYSTEMS'" in by_marker(b, "adc_mean_tumor").reason
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_site_units_reach_the_analysis_from_the_configuration_file(template):
    tmp = scratch_dir("adc-cli-")
    try:
        folder, study = written_as(template, tmp, "ACME", None, 0.001)
        cfg = tmp / "hccnode.toml"
        cfg.write_text(f'[node]\ndata_dir = "{tmp / "data"}"\n\n[adc]\nunits = {{ "ACME" = "1e-3 mm2/s" }}\n')
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                             os.environ.get("PYTHONPATH", "")])}
        r = subprocess.run([sys.executable, "-m", "hccnode", "-c", str(cfg), "analyze", "--dicom-dir", str(folder),
                            "--out", str(tmp / "out"), "--no-progress", "--no-forward"],
                           capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr
        params = sr_parameters(tmp / "out" / "sr.dcm", "paper003.adc_mean")
        assert any("from the site configuration for Manufacturer 'ACME'" in p for p in params), params
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
