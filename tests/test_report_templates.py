import shutil
import tomllib
from pathlib import Path

import pytest
from pydicom.sr._concepts_dict import concepts

from hccnode.imaging.measure import FORMULAS
from hccnode.report.templates import (MEASUREMENTS_FILE, PRIVATE_CODES_FILE, PRIVATE_SCHEME, TemplateError, default_dir,
                                      load_template)


def all_codes(obj):
    """Every {scheme, value, meaning} table in a parsed TOML document."""
    if isinstance(obj, dict):
        if {"scheme", "value", "meaning"} <= set(obj):
            yield obj
        for v in obj.values():
            yield from all_codes(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from all_codes(v)


def shipped() -> dict:
    return tomllib.loads((default_dir() / MEASUREMENTS_FILE).read_text(encoding="utf-8"))


def test_shipped_template_covers_every_formula_in_its_unit():
    t = load_template()
    for formula, (unit, _) in FORMULAS.items():
        assert formula in t.measurements, formula
        # the formula's unit, or % for paper 000's fractions (one unit per concept: ECV and NIC in %)
        want = "%" if formula in ("paper000.ecv_dect", "paper000.nic") else unit
        assert t.measurements[formula].unit.value == want, formula
    assert set(t.roles) == {"tumor", "liver", "aorta", "muscle"}


def test_standard_codes_exist_in_dicom_with_the_same_meaning():
    # pydicom's concept dictionary is generated from PS3.16; every DCM and SCT code we use must be in it.
    index: dict[tuple[str, str], set[str]] = {}
    for scheme in ("DCM", "SCT"):
        for entry in concepts[scheme].values():
            for value, (meaning, _) in entry.items():
                index.setdefault((scheme, value), set()).add(meaning.lower())
    checked = 0
    for code in all_codes(shipped()):
        if code["scheme"] in ("DCM", "SCT"):
            assert code["meaning"].lower() in index.get((code["scheme"], code["value"]), set()), code
            checked += 1
    assert checked >= 10


def test_every_private_code_listed_is_used_and_every_used_one_is_listed():
    private = tomllib.loads((default_dir() / PRIVATE_CODES_FILE).read_text(encoding="utf-8"))["codes"]
    used = {c["value"] for c in all_codes(shipped()) if c["scheme"] == PRIVATE_SCHEME}
    assert used == set(private)


@pytest.fixture
def site_dir(tmp_path) -> Path:
    d = tmp_path / "tpl"
    shutil.copytree(default_dir(), d)
    return d


def edit(d: Path, old: str, new: str, name: str = MEASUREMENTS_FILE) -> None:
    p = d / name
    text = p.read_text(encoding="utf-8")
    assert old in text, old
    p.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_site_change_is_loaded_without_code(site_dir):
    edit(site_dir, 'formula = "size.volume"', 'formula = "size.volume_site"')
    t = load_template(site_dir)
    assert "size.volume_site" in t.measurements and "size.volume" not in t.measurements
    assert t.digest != load_template().digest


@pytest.mark.parametrize("old,new,expected", [
    ('value = "%", meaning = "Percent" }\n\n[[measurement]]\nformula = "paper000.ecv_dect"',
     'value = "1", meaning = "no units" }\n\n[[measurement]]\nformula = "paper000.ecv_dect"',
     "(formula 'paper000.ecv_dect'): concept 'Extracellular volume fraction' is in '1' for formula "
     "'paper001.ecv_cect'; one concept has one unit across the document"),
    ('unit = { scheme = "UCUM", value = "mL", meaning = "Milliliter" }', 'unit = { scheme = "UCUM", value = "%", '
     'meaning = "Percent" }', "(formula 'size.volume'): unit '%' is neither the formula's unit 'mL' nor one the SR "
     "converts it to exactly"),
    ('value = "T2SIR", meaning = "T2 signal intensity ratio"', 'value = "T2X", meaning = "T2 signal intensity ratio"',
     "private code 'T2X' is not listed in private_codes.toml"),
    ('value = "T2SIR", meaning = "T2 signal intensity ratio"', 'value = "T2SIR", meaning = "T2 ratio"',
     "private code 'T2SIR' means 'T2 signal intensity ratio'"),
    ('scheme = "SCT", value = "103339001"', 'scheme = "SNOMED", value = "103339001"',
     "coding scheme 'SNOMED' is not one of"),
    ('formula = "size.volume"', 'formula = "size.max_inplane_diameter"', "formula listed twice"),
    ('[roles.muscle]', '[roles.bone]', "[roles.bone]: unknown role"),
    ('unit = { scheme = "UCUM", value = "mL", meaning = "Milliliter" }', 'unit = { scheme = "UCUM", value = "mL" }',
     "(formula 'size.volume') unit: code must be { scheme, value, meaning } (missing meaning)"),
    ('unit = { scheme = "UCUM", value = "mm", meaning = "Millimeter" }',
     'unit = { scheme = "SCT", value = "103339001", meaning = "Long axis" }', "unit must be a UCUM code"),
    ('version = "1"', 'version = 1', "'version' must be a non-empty string"),
    ('[notes]', '[notes_]', "[notes] table is missing"),
    ('formula = "size.volume"\nlabel', 'formula = "size.volume"\nunits = 1\nlabel', "unknown key(s) units"),
])
def test_bad_entries_are_named(site_dir, old, new, expected):
    edit(site_dir, old, new)
    with pytest.raises(TemplateError) as exc:
        load_template(site_dir)
    assert expected in str(exc.value)
    assert MEASUREMENTS_FILE in str(exc.value)


def test_bad_private_codes_file_is_named(site_dir):
    edit(site_dir, 'ECV = { meaning = "Extracellular volume fraction", definition',
         'ECV = { meaning = "Extracellular volume fraction", note', PRIVATE_CODES_FILE)
    with pytest.raises(TemplateError, match=r"private_codes.toml: \[codes\] ECV: needs a 'definition'"):
        load_template(site_dir)


def test_invalid_toml_and_missing_file(site_dir):
    (site_dir / MEASUREMENTS_FILE).write_text("version = \n", encoding="utf-8")
    with pytest.raises(TemplateError, match="measurements.toml: not valid TOML"):
        load_template(site_dir)
    (site_dir / PRIVATE_CODES_FILE).unlink()
    with pytest.raises(TemplateError, match="private_codes.toml: cannot read"):
        load_template(site_dir)
