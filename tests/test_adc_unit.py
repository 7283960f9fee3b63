"""The unit of an ADC map (hccnode.imaging.adc_unit): header, site, vendor convention, tissue values."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from hccnode.imaging import adc_unit as au

# Median published ADC (10^-3 mm^2/s), Jafar et al., World J Radiol 2016 (PMC4731347): liver,
# spleen, kidney, pancreas, gallbladder; free water at 37 C ~3.0 (BIDS specification).
ORGANS = {"liver": 1.28, "spleen": 0.85, "kidney": 1.94, "pancreas": 1.60, "gallbladder": 2.73, "water": 3.0}


def body(shares: dict[str, float], n: int = 20000, seed: int = 0, fat: float = 0.0, cv: float = 0.1) -> np.ndarray:
    """ADC values (10^-3 mm^2/s) of a body made of organs in the given shares, each organ's voxels
    spread by `cv` around its published median, a `fat` share of fat-suppressed voxels (ADC near 0.1)
    and the rest of the field of view background (0)."""
    rng = np.random.default_rng(seed)
    parts = [rng.normal(ORGANS[o], cv * ORGANS[o], int(n * s)) for o, s in shares.items()]
    parts.append(rng.uniform(0.0, 0.3, int(n * fat)))
    parts.append(np.zeros(n // 2))
    return np.clip(np.concatenate(parts), 0.0, None)


def stored(adc_1e3: np.ndarray, unit: str, integers: bool) -> np.ndarray:
    v = adc_1e3 * 1e-3 / au.UNIT_TO_MM2S[unit]
    return np.round(v) if integers else v


@settings(deadline=None, max_examples=40)
@given(liver=st.floats(0.2, 0.7), spleen=st.floats(0.0, 0.2), kidney=st.floats(0.0, 0.15),
       fluid=st.floats(0.0, 0.1), fat=st.floats(0.0, 0.5), seed=st.integers(0, 10_000),
       unit=st.sampled_from(au.CANDIDATES))
def test_tissue_values_fit_exactly_the_scale_they_are_stored_in(liver, spleen, kidney, fluid, fat, seed, unit):
    adc = body({"liver": liver, "spleen": spleen, "kidney": kidney, "gallbladder": fluid / 2, "water": fluid / 2},
               seed=seed, fat=fat)
    checks = au.check_scales(stored(adc, unit, integers=unit == "10*-6.mm2/s"))
    assert [u for u, c in checks.items() if c.consistent] == [unit]


def test_a_map_of_noise_or_a_few_voxels_decides_nothing():
    rng = np.random.default_rng(1)
    noise = rng.uniform(0, 65535, 20000)  # values spread over four decades: no body at any scale
    assert not any(c.consistent for c in au.check_scales(noise).values())
    few = au.check_scales(np.full(100, 1100.0))
    assert all(c.consistent is None for c in few.values())
    assert "only 100 voxels" in few["10*-6.mm2/s"].describe()


def test_check_reports_shares_at_the_scale_asked():
    # 60 % liver (1.28), 40 % beyond free water at 10^-6 mm2/s
    values = np.concatenate([np.full(600, 1280.0), np.full(400, 5000.0), np.zeros(1000)])
    c = au.check_scales(values)["10*-6.mm2/s"]
    assert (c.voxels, c.soft_share, c.over_share) == (1000, pytest.approx(0.6), pytest.approx(0.4))
    assert c.consistent is False


def rwvm(unit: str, slope: float = 1.0, intercept: float = 0.0) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = unit, "UCUM", unit
    item = Dataset()
    item.MeasurementUnitsCodeSequence = Sequence([code])
    item.RealWorldValueSlope, item.RealWorldValueIntercept = slope, intercept
    item.RealWorldValueFirstValueMapped, item.RealWorldValueLastValueMapped = 0, 65535
    return item


def test_header_unit_from_real_world_value_mapping_with_its_slope():
    ds = Dataset()
    assert au.header_unit(ds) is None
    ds.RescaleSlope, ds.RescaleIntercept = 2.0, 10.0
    ds.RealWorldValueMappingSequence = Sequence([rwvm("{counts}"), rwvm("10*-3.mm2/s", slope=0.001)])
    h = au.header_unit(ds)
    stored_value = 1100.0
    volume_value = stored_value * 2.0 + 10.0
    assert h.unit == "10*-3.mm2/s"
    assert volume_value * h.slope + h.intercept == pytest.approx(1.1)


@pytest.mark.parametrize("where", ["SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"])
def test_header_unit_in_enhanced_functional_groups(where):
    ds = Dataset()
    group = Dataset()
    group.RealWorldValueMappingSequence = Sequence([rwvm("um2/s")])
    setattr(ds, where, Sequence([group]))
    assert au.header_unit(ds) == au.HeaderUnit("um2/s", 1.0, 0.0)


@pytest.mark.parametrize("text,code", [("1e-6 mm2/s", "10*-6.mm2/s"), ("10*-3.mm2/s", "10*-3.mm2/s"),
                                       ("um2/s", "um2/s"), ("1E-5 mm²/s", "10*-5.mm2/s"), ("1 mm2/s", "mm2/s")])
def test_parse_unit(text, code):
    assert au.parse_unit(text) == code


def test_parse_unit_refuses_what_is_not_an_adc_unit():
    with pytest.raises(ValueError, match="'s/mm2' is not an ADC unit"):
        au.parse_unit("s/mm2")


LIVER_1E6 = au.check_scales(stored(body({"liver": 0.5, "spleen": 0.1}, fat=0.3), "10*-6.mm2/s", True))
LIVER_1E3 = au.check_scales(stored(body({"liver": 0.5, "spleen": 0.1}, fat=0.3), "10*-3.mm2/s", False))
CONV = au.Convention(re.compile("ACME", re.I), "um2/s", "ACME conformance statement 1.0")


def test_header_wins_and_says_whether_tissue_agrees():
    d = au.decide("ACME", LIVER_1E6, header="um2/s", convention=CONV)
    assert (d.unit, d.basis) == ("um2/s", au.RWVM)
    assert "confirmed by tissue values" in d.text
    d = au.decide("ACME", LIVER_1E6, header="10*-3.mm2/s")
    assert d.unit == "10*-3.mm2/s" and "tissue values do not fit it" in d.text and "they fit 10^-6 mm2/s" in d.text


def test_vendor_convention_confirmed_by_tissue_values():
    d = au.decide("ACME", LIVER_1E6, convention=CONV)
    assert (d.unit, d.basis) == ("um2/s", au.VENDOR)
    assert "vendor convention for 'ACME' (ACME conformance statement 1.0)" in d.text
    assert "confirmed by tissue values" in d.text


def test_vendor_convention_contradicted_by_tissue_values_is_refused_naming_the_conflict():
    d = au.decide("ACME", LIVER_1E3, convention=CONV)
    assert d.unit is None
    assert "conflicting evidence" in d.text and "vendor convention for 'ACME'" in d.text
    assert "says um2/s (10^-6 mm2/s)" in d.text and "they fit 10^-3 mm2/s" in d.text


def test_site_configuration_wins_over_the_convention_and_is_checked_too():
    d = au.decide("ACME", LIVER_1E3, site="10*-3.mm2/s", convention=CONV)
    assert (d.unit, d.basis) == ("10*-3.mm2/s", au.SITE) and "confirmed by tissue values" in d.text
    d = au.decide("ACME", LIVER_1E6, site="10*-3.mm2/s", convention=CONV)
    assert d.unit is None and "site configuration for Manufacturer 'ACME'" in d.text


def test_claim_kept_when_tissue_values_are_too_few_or_fit_no_scale():
    few = au.check_scales(np.full(100, 1100.0))
    d = au.decide("ACME", few, convention=CONV)
    assert d.unit == "um2/s" and "not checked against tissue values: only 100 voxels" in d.text
    noise = au.check_scales(np.random.default_rng(3).uniform(0, 65535, 20000))
    d = au.decide("ACME", noise, site="um2/s")
    assert d.unit == "um2/s" and "neither confirm nor contradict it" in d.text


def test_tissue_values_alone_when_unambiguous_else_refused_with_why():
    d = au.decide("NEWCO", LIVER_1E3)
    assert (d.unit, d.basis) == ("10*-3.mm2/s", au.TISSUE) and "no Real World Value Mapping" in d.text
    d = au.decide("NEWCO", au.check_scales(np.full(100, 1100.0)))
    assert d.unit is None and "do not decide it" in d.text and "only 100 voxels" in d.text
    d = au.decide("", au.check_scales(np.random.default_rng(2).uniform(0, 65535, 20000)))
    assert d.unit is None and "no candidate scale fits them" in d.text and "(no Manufacturer in the header)" in d.text


def test_site_unit_matches_manufacturer_case_insensitively():
    assert au.site_unit("  acme  medical ", {"ACME Medical": "1e-6 mm2/s"}) == "10*-6.mm2/s"
    assert au.site_unit("OTHER", {"ACME": "1e-6 mm2/s"}) is None


def test_packaged_conventions_each_cite_a_source_and_match_by_pattern():
    table = au.conventions()
    assert table and all(c.source for c in table)
    ge = au.find_convention("GE MEDICAL SYSTEMS", "SIGNA Premier", "RX29")
    assert ge is not None and ge.unit == "um2/s" and "DICOM4QI" in ge.source
    assert au.find_convention("ACME") is None


def test_a_convention_without_a_source_is_refused():
    with pytest.raises(ValueError, match="convention 1: no source"):
        au.parse_conventions('[[convention]]\nmanufacturer = "X"\nunit = "um2/s"\n')
    with pytest.raises(ValueError, match="convention 1: 'furlong' is not an ADC unit"):
        au.parse_conventions('[[convention]]\nmanufacturer = "X"\nunit = "furlong"\nsource = "s"\n')
    model = au.parse_conventions('[[convention]]\nmanufacturer = "X"\nmodel = "^Y"\nunit = "um2/s"\nsource = "s"\n')
    assert au.find_convention("X", "Y1", table=tuple(model)) and not au.find_convention("X", "Z", table=tuple(model))
