"""The rules data file: loading, validation errors by rule name, text normalisation."""

import pytest
from hypothesis import given, strategies as st

from hccnode.imaging.phase_rules import RulesError, load_rules, normalise, parse_rules


def test_packaged_rules_load_with_version_and_hash():
    r = load_rules()
    assert r.version and len(r.sha256) == 64
    assert {x.name for x in r.header_rules} >= {"std-vmi", "arterial-text", "std-adc-image-type"}


def test_bad_rules_are_reported_by_name(tmp_path):
    f = tmp_path / "rules.toml"
    f.write_text("""
[meta]
version = "t"
[timing]
arterial = [10, 45]
portal_venous = [50, 100]
equilibrium = [110, 1800]
[[header_rule]]
name = "bad-label"
phase = "late"
weight = 0.5
when = { text = { pattern = 'x' } }
[[header_rule]]
name = "bad-field"
kind = "ct"
weight = 0.5
when = { colour = { pattern = 'x' } }
[[header_rule]]
name = "bad-regex"
kind = "ct"
weight = 2
when = { text = { pattern = '(' } }
""")
    with pytest.raises(RulesError) as exc:
        load_rules(f)
    msg = str(exc.value)
    for name in ("bad-label", "bad-field", "bad-regex"):
        assert f"'{name}'" in msg
    assert "weight" in msg and "regular expression" in msg


def test_a_site_rule_extends_classification(tmp_path):
    from importlib import resources
    text = resources.files("hccnode").joinpath("data", "phase_rules.toml").read_text(encoding="utf-8")
    f = tmp_path / "site.toml"
    f.write_text(text + """
[[header_rule]]
name = "site-fase-arteriosa"
phase = "arterial"
weight = 0.9
when = { text = { pattern = '\\bfase ?a\\b' } }
""")
    from hccnode.imaging.phases import classify_study
    from hccnode.imaging.series_header import SeriesHeader
    h = SeriesHeader("1", modality="CT", series_description="FASE A 5mm")
    assert classify_study([h], load_rules())[0].kind == "ambiguous"
    assert classify_study([h], load_rules(f))[0].kind == "ct_arterial"


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "nope.toml")


def test_timing_windows_validated():
    with pytest.raises(RulesError, match="arterial"):
        parse_rules({"meta": {"version": "1"}, "timing": {"arterial": [45, 10], "portal_venous": [1, 2], "equilibrium": [3, 4]}})


@pytest.mark.parametrize("raw,norm", [("ART_1.0B30f", "art 1 0 b 30 f"), ("MonoE 40keV", "monoe 40 kev"),
                                      ("Iodine(Water)", "iodine water"), ("*ep_b800t", "*ep b 800 t"), ("", "")])
def test_normalise_examples(raw, norm):
    assert normalise(raw) == norm


@given(st.text(max_size=64))
def test_normalise_is_idempotent_and_lower_case(s):
    n = normalise(s)
    assert normalise(n) == n
    assert n == n.lower() or not n.isascii()
    assert "  " not in n and n == n.strip()


def test_cli_check_rules(tmp_path, capsys):
    from hccnode import cli
    assert cli.main(["phases", "--check-rules"]) == 0
    assert "ok, version" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[meta]\nversion = "x"\n[[header_rule]]\nname = "oops"\nkind = "ct"\nweight = 0.5\n')
    assert cli.main(["phases", "--check-rules", "--rules", str(bad)]) == 2
    assert "'oops'" in capsys.readouterr().err


def test_rules_file_from_the_configuration(tmp_path, capsys):
    from hccnode import cli
    bad = tmp_path / "bad.toml"
    bad.write_text('[meta]\nversion = "x"\n')
    cfg = tmp_path / "hccnode.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path}"\n[phases]\nrules_file = "{bad}"\n')
    assert cli.main(["-c", str(cfg), "phases", "--check-rules"]) == 2
    assert "timing" in capsys.readouterr().err


# Series descriptions as real scanners/sites write them (sources in phase_rules.toml, "kind: DECT,
# vendor names"): Philips spectral result names with their unit suffix, Siemens Monoenergetic Plus and
# RhoZ maps, one GE GSI site's names.
@pytest.mark.parametrize("desc,kind,kev", [
    ("MonoE 40keV[HU]", "dect_vmi", 40.0),                       # Philips
    ("MonoE 120keV[HU]", "dect_vmi", 120.0),
    ("Iodine Density[mg/ml]", "dect_iodine", None),
    ("Iodine no Water[mg/ml*]", "dect_iodine", None),
    ("VNC[HU*]", "dect_vnc", None),
    ("Z Effective", "other", None),
    ("Electron Density[%EDW]", "other", None),
    ("Calcium Suppression 25 Index[HU*]", "other", None),
    ("DE Caput  2.0  Q30s  2 Monoenergetic Plus 60 keV", "dect_vmi", 60.0),   # Siemens
    ("DE Caput  2.0  Q30s  2 RhoZ Rho", "other", None),
    ("DE Caput  2.0  Q30s  2 RhoZ Z", "other", None),
    ("ART IODINE (WATER)", "dect_iodine", None),                 # GE GSI site
    ("VUE", "dect_vnc", None),
    ("2.5 60keV", "dect_vmi", 60.0),
])
def test_real_vendor_dect_result_names(desc, kind, kev):
    from hccnode.imaging.phases import classify_study
    from hccnode.imaging.series_header import SeriesHeader
    d = classify_study([SeriesHeader("1", modality="CT", series_description=desc)], load_rules())[0]
    assert d.kind == kind, d.reasons
    assert d.kev == kev


@pytest.mark.parametrize("desc,kind,phase", [
    ("ART IODINE (WATER)", "dect_iodine", "arterial"), ("VEN 70keV", "dect_vmi", "portal_venous"),
    ("5 min 70 keV", "dect_vmi", "equilibrium"), ("ART 50keV", "dect_vmi", "arterial"),
])
def test_ge_site_names_give_kind_and_phase(desc, kind, phase):
    from hccnode.imaging.phases import classify_study
    from hccnode.imaging.series_header import SeriesHeader
    d = classify_study([SeriesHeader("1", modality="CT", series_description=desc)], load_rules())[0]
    assert (d.kind, d.phase) == (kind, phase), d.reasons


def test_standard_value_4_terms_are_the_ps33_defined_terms():
    # PS3.3 C.8.2.1.1.1 spells the value-based image MAT_VALUE_BASED; no rule may use a made-up term.
    defined = {"VMI", "MAT_SPECIFIC", "MAT_REMOVED", "MAT_FRACTIONAL", "EFF_ATOMIC_NUM", "ELECTRON_DENSITY",
               "MAT_MODIFIED", "MAT_VALUE_BASED"}
    used = set()
    for r in load_rules().header_rules:
        if r.name.startswith("std-") and not any(x.startswith("mr_") for x in r.labels):
            for m in r.when + r.unless:
                if m.field == "image_type" and m.any_of:
                    used |= m.any_of
    assert used and used <= defined, used - defined
    assert "MAT_VALUE_BASED" in used


def test_with_and_without_contrast_site_names():
    # One GE site's names (public code): "STD WO" unenhanced; "STD WC ABD" enhanced, phase from timing.
    from hccnode.imaging.phases import classify_study
    from hccnode.imaging.series_header import SeriesHeader
    t0 = 8 * 3600.0
    rules = load_rules()
    wo = classify_study([SeriesHeader("1", modality="CT", series_description="STD WO")], rules)[0]
    assert wo.kind == "ct_unenhanced", wo.reasons
    wc = classify_study([SeriesHeader("1", modality="CT", series_description="STD WC ABD")], rules)[0]
    assert wc.kind == "ambiguous" and any(r["rule"] == "with-contrast-text" for r in wc.reasons)
    timed = classify_study([SeriesHeader("1", modality="CT", series_description="STD WC ABD",
                                         acquisition_s=t0 + 70, contrast_start_s=t0)], rules)[0]
    assert timed.kind == "ct_portal_venous", timed.reasons
