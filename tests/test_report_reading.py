"""Issue 16 points 2, 9, 10: what a reader sees. The SR read back (one unit per concept, the contrast
phase as a coded modifier with the delay after contrast, each ROI's level and lesion), the summary
PDF's text (human labels, no UCUM codes or code identifiers), and paper 003's terms and direction
conflict in both."""

import math
import re
import shutil
import subprocess
from collections import defaultdict
from dataclasses import replace

import highdicom as hd
import pydicom
import pytest
from conftest import need
from report_support import analysis_sr, dciodvfy, shared_case

from hccnode.imaging.measure import Measurement
from hccnode.models.card import default_dirs, load_cards
from hccnode.models.engine import evaluate
from hccnode.report import build_outputs
from hccnode.report.reading import convert
from hccnode.report.templates import load_template

DSRDUMP = shutil.which("dsrdump") or "/usr/bin/dsrdump"
DELAY_S = 180.0  # the equilibrium series' delay after contrast start given to the case's records


def walk(items):
    for item in items:
        yield item
        yield from walk(item.get("ContentSequence", []))


def code(item, seq="ConceptNameCodeSequence"):
    c = item[seq][0] if seq != "ConceptCodeSequence" else item.ConceptCodeSequence[0]
    return c.CodingSchemeDesignator, c.CodeValue, c.CodeMeaning


def p003_result():
    """Paper 003's card on chosen inputs: T2 SIR 1.62 (>= 1.418: indicator 1, ln 8.692 = +2.162),
    ADC 0.9 (< 1.085: 0), NLR 5 (>= 4.41: 1, ln 0.162 = -1.820)."""
    card = load_cards(default_dirs())["p003-nomogram@1.0.0"]
    return evaluate(card, {"t2_sir_post": {"value": 1.62, "unit": "1", "source": "marker t2_sir_tumor"},
                           "adc_mean_post": {"value": 0.9, "unit": "10^-3 mm^2/s", "source": "marker adc_mean_tumor"},
                           "nlr": {"value": 5.0, "unit": "1", "source": "lab"}})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The shared case with a delay on its equilibrium series, paper 000's NIC and ECV (fractions)
    beside paper 001's ECV (%), and paper 003's result: SR and summary."""
    case = shared_case(tmp_path_factory)
    ms = []
    for m in case.measurements:
        series = tuple(replace(s, delay_s=DELAY_S) if s.phase == "equilibrium" else s for s in m.series)
        ms.append(replace(m, series=series))
    ecv = ms[0]
    iodine = (replace(ecv.series[1], phase="equilibrium iodine map"),)
    ms += [Measurement.of("paper000.nic", "nic_tumor", 0.55, roi=ecv.roi, series=iodine),
           Measurement.of("paper000.ecv_dect", "ecv_tumor_iodine", 0.33, roi=ecv.roi, series=iodine, lab=ecv.lab)]
    out = tmp_path_factory.mktemp("reading")
    build_outputs(out_dir=out, **case.kwargs(measurements=ms, model_results=case.model_results + [p003_result()]))
    return case, ms, out


def test_one_unit_per_concept_and_fractions_written_in_percent(built):
    _, ms, out = built
    ds = pydicom.dcmread(out / "sr.dcm")
    units = defaultdict(set)
    for item in walk(ds.ContentSequence):
        if item.ValueType == "NUM" and "MeasuredValueSequence" in item:
            units[code(item)[:2]].add(item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue)
    assert all(len(u) == 1 for u in units.values()), units
    assert units[("99HCCNODE", "ECV")] == {"%"} and units[("99HCCNODE", "NIC")] == {"%"}
    # paper 000's NIC 0.55 and ECV 0.33 (fractions) are 55 % and 33 %
    values = {float(i.MeasuredValueSequence[0].NumericValue) for i in walk(ds.ContentSequence)
              if i.ValueType == "NUM" and code(i)[:2] in {("99HCCNODE", "ECV"), ("99HCCNODE", "NIC")}}
    assert {55.0, 33.0} <= {round(v, 6) for v in values}
    assert convert(0.5, "1", "%") == 50.0 and convert(50.0, "%", "1") == 0.5
    with pytest.raises(ValueError):
        convert(1.0, "mm", "%")


def test_contrast_phase_is_a_coded_modifier_with_the_delay(built):
    _, _, out = built
    t = load_template()
    ds = pydicom.dcmread(out / "sr.dcm")
    seen = {}
    for item in walk(ds.ContentSequence):
        if item.ValueType != "NUM" or code(item)[:2] != ("99HCCNODE", "ECV"):
            continue
        kids = item.get("ContentSequence", [])
        algorithm = next(k.TextValue for k in kids if code(k)[1] == "111001")
        phases = [code(k, "ConceptCodeSequence")[1] for k in kids
                  if k.RelationshipType == "HAS CONCEPT MOD" and code(k)[:2] == ("99HCCNODE", "CPHASE")]
        delays = [float(k.MeasuredValueSequence[0].NumericValue) for k in kids
                  if k.RelationshipType == "HAS ACQ CONTEXT" and code(k)[:2] == ("DCM", "122665")]
        seen.setdefault(algorithm, (phases, delays))
    # paper 001's ECV used the unenhanced and equilibrium phases; paper 000's the equilibrium iodine map
    assert seen["paper001.ecv_cect"] == (["PRECONTRAST", "EQUILIBRIUM"], [DELAY_S])
    assert seen["paper000.ecv_dect"] == (["EQUILIBRIUM"], [DELAY_S])
    assert t.context["delay"].meaning == "Time interval since injection of contrast media"
    # the standard code is the one pydicom's PS3.16 dictionary holds
    assert pydicom.sr.codedict.codes.DCM.TimeIntervalSinceInjectionOfContrastMedia.value == "122665"
    errors, warnings = dciodvfy(out / "sr.dcm")
    assert errors == [] and warnings == []


def test_each_roi_group_states_its_level_and_lesion(built):
    case, _, out = built
    report = hd.sr.srread(out / "sr.dcm").content
    groups = report.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(case.rois)
    ds = pydicom.dcmread(out / "sr.dcm")
    texts = defaultdict(list)
    for item in walk(ds.ContentSequence):
        if item.ValueType == "TEXT":
            texts[code(item)[2]].append(item.TextValue)
    assert len(texts["ROI level"]) == len(case.rois)
    tumor = next(r for r in case.rois if r.ref.name == "tumor")
    zs = sorted(float(case.reference[k].ImagePositionPatient[2]) for k in tumor.areas.nonzero()[0])
    level = next(t for t in texts["ROI level"] if f"{len(zs)} slices" in t and f"z {zs[0]:.1f} to {zs[-1]:.1f} mm" in t)
    assert level.startswith("series ")
    assert texts["Lesion"] == ["lesion 1 of 1"]  # one tumour ROI: the only lesion
    dump = subprocess.run([DSRDUMP, str(out / "sr.dcm")], capture_output=True, text=True, timeout=60).stdout
    assert '"Contrast phase")=(EQUILIBRIUM,99HCCNODE,"Equilibrium (delayed) phase")' in dump
    assert '"Time interval since injection of contrast media")="180' in dump


def test_p003_terms_and_direction_conflict_in_the_sr(built):
    _, _, out = built
    ds = analysis_sr(out / "sr.dcm")
    names = [code(i) for i in walk(ds.ContentSequence)]
    assert not any(m == "Nomogram points" for _, _, m in names)   # never coded as the paper's nomogram
    texts = defaultdict(list)
    for item in walk(ds.ContentSequence):
        if item.ValueType == "TEXT":
            texts[code(item)[2]].append(item.TextValue)
    terms = texts["Model term"]
    assert any(t.startswith("post-treatment T2 signal intensity ratio = 1.62; cutoff >= 1.418: met; published OR 8.692; "
                            f"log-odds term +{math.log(8.692):.3f}: raises the modelled odds of progression group")
               for t in terms), terms
    assert any(t.startswith("neutrophil-to-lymphocyte ratio = 5; cutoff >= 4.41: met; published OR 0.162; "
                            f"log-odds term {math.log(0.162):.3f}: lowers") for t in terms), terms
    assert any("post-treatment mean ADC = 0.9" in t and "not met" in t and "no effect" in t for t in terms)
    conflict = texts["Model direction conflict"]
    assert len(conflict) == 1 and "an elevated T2 SIR in patients who respond to treatment" in conflict[0]
    derived = [i for i in walk(ds.ContentSequence) if i.ValueType == "NUM" and code(i)[:2] == ("99HCCNODE", "NODEPTS")]
    assert len(derived) == 1 and "not the paper's" in code(derived[0])[2]


def pdf_text(path) -> str:
    return subprocess.run([need("pdftotext"), "-raw", str(path), "-"], capture_output=True, text=True,
                          timeout=60).stdout


def test_summary_pdf_text_is_for_people(built):
    case, _, out = built
    text = pdf_text(out / "summary.pdf")
    flat = " ".join(text.split())
    assert "[hnsf'U]" not in text and "hnsf" not in text
    assert not re.findall(r"\b[a-z0-9]+_[a-z0-9_]+\b", text), re.findall(r"\b[a-z0-9]+_[a-z0-9_]+\b", text)
    assert "Tumor ECV, unenhanced + equilibrium (180 s after contrast start): " in flat
    assert "Aorta Mean attenuation, equilibrium (180 s after contrast start): " in flat and " HU (ROI statistic)" in flat
    # paper 000's fractions in % as in the SR: NIC 0.55 -> 55 %, ECV 0.33 -> 33 %
    assert "Tumor NIC, equilibrium (180 s after contrast start): 55 % (paper 000)" in flat
    assert "Tumor ECV (iodine map), equilibrium (180 s after contrast start): 33 % (paper 000; Hematocrit 0.4 L/L)" in flat
    assert "Hematocrit = 0.4 L/L, taken " in flat   # the lab as people name it, not by its key
    assert "lesion 1 of 1: series " in flat and "largest section on image" in flat
    for r in case.model_results:
        assert r["citation"][:40] in flat
    # a cutoff card shows the value it compared, under its label (paper 001's liver ECV, in %)
    liver = next(m for m in case.measurements if m.marker == "ecv_liver")
    assert f"input: liver ECV (single-energy HU) = {liver.value:.4g} %" in flat
    # paper 003: its terms and its direction conflict; its derived total named as the node's
    assert "term: post-treatment T2 signal intensity ratio = 1.62; cutoff >= 1.418: met; published OR 8.692" in flat
    assert "lowers the modelled odds of progression group" in flat   # the last term: nothing cut off
    assert "Direction conflict:" in flat and "hccnode-derived points (not the paper's nomogram)" in flat
    # what does not fit on page 1 continues on page 2 (PDF and PNG), nothing is cut off
    assert "(continued, page 2)" in flat and (out / "summary-2.png").exists()
    assert "withheld risk group: the 0.698 cutoff is on the probability" in flat


def test_lesion_and_phase_are_read_from_the_records():
    import numpy as np

    from hccnode.imaging.measure import READER, RoiRef, SeriesRef
    from hccnode.report import ReportRoi
    from hccnode.report.reading import contrast_phase, lesion_of

    mask = np.zeros((2, 4, 4), bool)
    mask[0, 1, 1] = True

    def roi(label, role="tumor"):
        return ReportRoi(RoiRef(role, READER, "1.2.3", label), mask)

    rois = [roi("Tumor (lesion 1)"), roi("Tumor extent (lesion 2 extent)"), roi("Tumor (lesion 2)"), roi("Liver", "liver")]
    assert [lesion_of(r, rois) for r in rois] == ["lesion 1 of 2", "lesion 2 of 2 (extent)", "lesion 2 of 2", None]
    assert lesion_of(roi("Tumor"), [roi("Tumor")]) == "lesion 1 of 1"
    phases = {p: contrast_phase(SeriesRef("1.2", p)) for p in
              ("equilibrium iodine map", "arterial 40 keV VMI", "portal_venous", "unenhanced", "T2", "baseline ADC")}
    assert phases == {"equilibrium iodine map": "equilibrium", "arterial 40 keV VMI": "arterial",
                      "portal_venous": "portal_venous", "unenhanced": "unenhanced", "T2": None, "baseline ADC": None}


def test_outputs_cite_papers_never_by_file_name_and_carry_cohort_and_stated_limits(built):
    """Issue 16 point 8: the SR (as dsrdump prints it) and the summary name each model's paper by authors,
    title, journal and year (DOI when given), never by the stored text's file name, and show the cohort and
    the paper's own limitations (001: "equilibrium timing"; 003: "retrospective, single centre")."""
    case, _, out = built
    cards = load_cards(default_dirs()).values()
    stems = {c.paper.removesuffix(".txt") for c in cards} | {c.paper.split("_")[1].removesuffix(".txt") for c in cards}
    dump = "".join(subprocess.run([DSRDUMP, "+Pl", str(out / name)], capture_output=True, text=True, timeout=60).stdout
                   for name in ("sr.dcm", "sr_results.dcm"))      # the ROI SR and its results SR
    summary = " ".join(pdf_text(out / "summary.pdf").split())
    for text in (dump, summary):
        assert ".txt" not in text and not [s for s in stems if s in text]
    p001 = next(r for r in case.model_results if r["card_id"] == "p001-liver-ecv")
    assert p001["citation"].endswith("2025. (journal not given in the source text) doi:10.1038/s41598-025-97677-x")
    assert p001["citation"] in dump and "doi:10.1038/s41598-025-97677-x" in summary
    assert '"Model cohort")="etiology: HBV infection 63 of 151 (41.7%)' in dump           # 001 Table 1
    assert '"Model limitation")="stated by the paper: equilibrium timing: 120-180 s used' in dump
    assert "cohort: etiology: HBV infection 63 of 151 (41.7%)" in summary
    assert "limit: stated by the paper: equilibrium timing: 120-180 s used" in summary
    assert "limit: stated by the paper: retrospective, single centre, small sample" in summary   # 003
