"""`hccnode audit reverify SR_FILE`: a phantom CECT study analysed in the node, its SR recomputed
from the stored inputs; tampered, older and foreign SRs; the node's records left as they were."""

from __future__ import annotations

import shutil
import sqlite3
import urllib.request

import pydicom
import pytest
from pipeline_support import add_labs, phantom_store, scratch_dir

from hccnode import cli
from hccnode.pipeline import analyze_study
from hccnode.report.sr_compare import compare, numbers
from hccnode.audit.reverify import evidence, input_differences
from hccnode.store import audit

OUTBOX_DEST = "PACS@127.0.0.1:11112"


@pytest.fixture(scope="module")
def node():
    """A CECT phantom analysed twice: without a hematocrit (the older SR), then with one (the latest)."""
    from hccnode.phantom import StudySpec

    root = scratch_dir("reverify")
    store, truth, (study,) = phantom_store(
        root, StudySpec(kind="cect", seed=9, slices=8, matrix=48, noise_sd=2.0, seg_phase="equilibrium"))
    older = analyze_study(store, study, destinations=[OUTBOX_DEST])
    add_labs(store, truth, [("hct", 100 * truth.data["hct"], "%", -2.0)])
    latest = analyze_study(store, study, destinations=[OUTBOX_DEST])
    cfg = root / "hccnode.toml"
    cfg.write_text(f'[node]\ndata_dir = "{store.data_dir}"\n')

    def run(*args):
        return cli.main(["-c", str(cfg), "audit", "reverify", *[str(a) for a in args]])

    run.store, run.study, run.root = store, study, root
    run.older, run.latest = older.out_dir / "sr.dcm", latest.out_dir / "sr.dcm"
    yield run
    store.close()
    shutil.rmtree(root, ignore_errors=True)


def _docs(path) -> list[pydicom.Dataset]:
    """An analysis' SR documents: the ROI SR and its results SR beside it."""
    return [pydicom.dcmread(path), pydicom.dcmread(path.with_name("sr_results.dcm"))]


def _snapshot(store) -> dict[str, list]:
    """Every table of the node's database, row by row (audit separately)."""
    c = sqlite3.connect(store.path)
    try:
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: c.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in tables}
    finally:
        c.close()


def _files(path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def test_latest_sr_is_reproduced_and_the_node_records_only_the_reverify_event(node, capsys):
    sr = pydicom.dcmread(node.latest)
    nums = numbers(_docs(node.latest))  # both documents' numbers are compared
    assert any(n.group == "Laboratory values" for n in nums)
    assert len(nums) >= 10 and any(n.meaning.lower().startswith("extracellular") or "ECV" in n.meaning for n in nums)
    before = _snapshot(node.store)
    originals = _files(node.latest.parent)
    assert before["outbox"] and before["analyses"]  # there is something a careless re-run would change

    assert node(node.latest) == 0
    out = capsys.readouterr().out
    assert f"reproduced: all {len(nums)} numbers (exact)" in out
    assert out.count("\nok ") == len(nums)
    assert "not the study's latest" not in out

    after = _snapshot(node.store)
    assert {t: rows for t, rows in after.items() if t != "audit"} == {t: rows for t, rows in before.items() if t != "audit"}
    new = after["audit"][len(before["audit"]):]
    assert after["audit"][:len(before["audit"])] == before["audit"] and len(new) == 1
    row = dict(zip(audit.COLUMNS, new[0]))
    assert row["event"] == "analysis.reverified" and row["study_uid"] == node.study
    assert str(sr.SOPInstanceUID) in row["output_uids"] and '"verdict":"reproduced"' in row["details"]
    assert audit.verify(node.store).ok
    assert _files(node.latest.parent) == originals  # the original outputs were not rewritten


def test_a_tampered_value_exits_1_naming_the_measurement(node, tmp_path, capsys):
    sr = pydicom.dcmread(node.latest)
    target = next(n for n in numbers(sr) if n.group.startswith("Tumor") and n.marker == "ecv_tumor")
    for item in _walk(sr.ContentSequence):
        if item.get("ValueType") == "NUM" and "marker ecv_tumor" in _parameters(item):
            mv = item.MeasuredValueSequence[0]
            edited = f"{float(mv.NumericValue) + 1.5:.4f}"
            mv.NumericValue = edited
            break
    tampered = tmp_path / "tampered.dcm"
    sr.save_as(tampered)
    assert node(tampered) == 1
    out = capsys.readouterr().out
    bad = [line for line in out.splitlines() if line.startswith("DIFFERS ")]
    assert len(bad) == 1, out
    assert target.group in bad[0] and target.meaning in bad[0] and "ecv_tumor" in bad[0]
    assert f"Numeric Value (DS) {edited} vs {target.numeric}" in bad[0]  # A: this SR, B: recomputed
    assert f"DIFFERS: 1 of {len(numbers(_docs(node.latest)))}" in out  # its results SR found in the node's outputs
    last = list(audit.rows(node.store, node.study))[-1]
    assert last["event"] == "analysis.reverified" and '"verdict":"differs"' in last["details"]


def test_an_older_sr_is_recomputed_with_the_inputs_it_used(node, capsys):
    older = _docs(node.older)
    assert not any(n.group == "Laboratory values" for n in numbers(older))  # written before the hematocrit arrived
    assert node(node.older) == 0
    out = capsys.readouterr().out
    assert "not the study's latest analysis" in out and "received later left out" in out
    assert f"reproduced: all {len(numbers(older))} numbers" in out


def test_an_sr_whose_inputs_the_node_cannot_reconstruct_is_not_called_a_match(node, tmp_path, capsys):
    sr = pydicom.dcmread(node.latest)
    sr.SOPInstanceUID = "2.25.1234"  # an SR the node never wrote from these inputs
    foreign = tmp_path / "foreign.dcm"
    sr.save_as(foreign)
    assert node(foreign) == 1
    out, err = capsys.readouterr()
    assert "not one of the node's recorded analyses" in out
    assert "cannot reconstruct the inputs this SR used" in err and "NOT RECOMPUTED" in out


def test_input_differences_name_what_changed(node):
    latest, older = _docs(node.latest), _docs(node.older)
    diffs = input_differences(latest, older)  # as if the node now lacked the hematocrit the SR used
    assert any(d.startswith("lab Hematocrit: 0.4 in the SR, none now") for d in diffs), diffs
    older[0].SoftwareVersions = "0.0.1"
    assert any(d.startswith("software version") for d in input_differences(latest, older))


def test_an_sr_of_an_unknown_study_exits_1_with_a_clear_message(node, tmp_path, capsys):
    sr = pydicom.dcmread(node.latest)
    sr.StudyInstanceUID = "2.25.999"
    other = tmp_path / "other.dcm"
    sr.save_as(other)
    assert node(other) == 1
    out, err = capsys.readouterr()
    assert "study 2.25.999 is not in the node's store" in err and "NOT RECOMPUTED" in out


def test_a_missing_input_instance_is_named(node, capsys):
    listed = [sop for sops in evidence(pydicom.dcmread(node.latest)).values() for sop in sops]
    row = next(r for sop in listed
               for r in node.store.query("SELECT sop_uid, series_uid, path FROM instances WHERE sop_uid = ?", (sop,)))
    path = node.store.data_dir / row["path"]
    moved = path.with_name(path.name + ".away")
    path.rename(moved)
    try:
        assert node(node.latest) == 1
    finally:
        moved.rename(path)
    err = capsys.readouterr().err
    assert f"series {row['series_uid']}: 1 of" in err and row["sop_uid"] in err and "not in the spool" in err


def test_an_sr_pulled_from_the_pacs_is_reverified(node, orthanc, capsys):
    body = node.latest.read_bytes()
    req = urllib.request.Request(f"http://127.0.0.1:{orthanc.http_port}/instances", data=body, method="POST")
    urllib.request.urlopen(req, timeout=10).close()
    sr_uid = str(pydicom.dcmread(node.latest).SOPInstanceUID)
    assert sr_uid in orthanc.sop_uids()
    cfg = node.root / "pacs.toml"
    cfg.write_text(f'[node]\ndata_dir = "{node.store.data_dir}"\n[priors]\npacs = "{orthanc.destination}"\n')
    stored = node.store.query("SELECT COUNT(*) AS n FROM instances")[0]["n"]
    assert cli.main(["-c", str(cfg), "audit", "reverify", "--from-pacs", sr_uid]) == 0
    out = capsys.readouterr().out
    assert f"retrieved SR {sr_uid} from the PACS" in out and "reproduced: all" in out
    assert node.store.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == stored  # pulled into memory only
    assert cli.main(["-c", str(cfg), "audit", "reverify", "--from-pacs", "2.25.42", "--study", node.study]) == 1
    assert "returned no SR 2.25.42" in capsys.readouterr().err
    assert cli.main(["-c", str(cfg), "audit", "reverify", "--from-pacs", "2.25.42"]) == 2  # study unknown: say --study


def test_usage_errors_exit_2(node, tmp_path, capsys):
    assert node(tmp_path / "nothing.dcm") == 2
    ct = node.store.query("SELECT path FROM instances WHERE study_uid = ? LIMIT 1", (node.study,))[0]["path"]
    assert node(node.store.data_dir / ct) == 2
    assert "not a DICOM Structured Report" in capsys.readouterr().err
    assert node(node.latest, "--rel-tol", "-1") == 2
    assert node() == 2 and node(node.latest, "--from-pacs", "2.25.1") == 2  # exactly one SR source
    assert node("--from-pacs", "2.25.1") == 2  # no PACS configured
    assert "no PACS configured" in capsys.readouterr().err


def test_compare_pairs_numbers_and_states_its_tolerance(node):
    a = pydicom.dcmread(node.latest)
    assert all(r.reproduced for r in compare(a, a))
    b = pydicom.dcmread(node.latest)
    mv = next(i.MeasuredValueSequence[0] for i in _walk(b.ContentSequence) if i.get("ValueType") == "NUM"
              and len(str(i.MeasuredValueSequence[0].NumericValue)) <= 13)
    mv.NumericValue = str(mv.NumericValue) + ("0" if "." in str(mv.NumericValue) else ".0")  # same decimal number
    assert all(r.reproduced for r in compare(a, b))
    mv.FloatingPointValue = float(mv.FloatingPointValue) * (1 + 1e-9)  # the double differs below DS precision
    rows = compare(a, b)
    assert [r.why.split(" ")[0:3] for r in rows if not r.reproduced] == [["Floating", "Point", "Value"]]
    assert all(r.reproduced for r in compare(a, b, rel_tol=1e-8))
    del b.ContentSequence[-1]  # a group (the notes, with no numbers) removed: nothing else changes
    assert len(compare(a, b)) == len(numbers(a))


def _walk(items):
    for item in items or []:
        yield item
        yield from _walk(item.get("ContentSequence"))


def _parameters(item) -> list[str]:
    return [str(c.TextValue) for c in _walk(item.get("ContentSequence"))
            if c.ConceptNameCodeSequence[0].CodeValue == "111002"]
