"""Files written by other software (issue 15 point 5): every file pydicom ships for its own tests
(vendor CT and MR, SR, SEG, RT, US, ECG, secondary capture, odd encodings, broken files) through
`hccnode analyze --dicom-dir` and through C-STORE from dcmtk's storescu. Each file is stored or
refused with its reason; no exception reaches the user; every study ends analysed or not
applicable, never failed."""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.request
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from conftest import NodeProcess, need, wait_until
from node_support import storescu, study_seqs

from hccnode import cli

# What must never reach a user: a traceback, or an exception's class name.
LEAK = re.compile(r"Traceback|\b[A-Z]\w*(Error|Exception)\b")
ENDED = ("done", "not_applicable")


def pydicom_files(dest: Path) -> list[Path]:
    """Copies under `dest` of every file of pydicom's data/test_files as the installed wheel ships
    them (what `pydicom.data.get_testdata_files()` lists locally; read from the folder, because that
    function also tries to download pydicom-data's files), keeping their relative paths
    (dicomdirtests/ holds file sets in sub-folders); and, when the `pydicom-data` package (the
    test extra) is installed, its files under `dest/pydicom-data/`, found through pydicom's
    external-source entry point, which only globs the installed package."""
    from pydicom.data.data_manager import DataTypes, external_data_sources

    wheel = Path(pydicom.data.__file__).parent / "test_files"
    sources = [(wheel, [f for f in wheel.rglob("*") if f.is_file() and f.suffix != ".py"], dest)]
    extra = external_data_sources().get("pydicom-data")
    if extra is not None:
        paths = [Path(p) for p in extra.get_paths("**/*", DataTypes.DATASET)]
        root = Path(os.path.commonpath(paths)) if paths else dest
        sources.append((root, [p for p in paths if p.is_file()], dest / "pydicom-data"))
    files = []
    for root, found, target in sources:
        for f in found:
            copy = target / f.relative_to(root)
            copy.parent.mkdir(parents=True, exist_ok=True)
            files.append(Path(shutil.copy2(f, copy)))
    return sorted(files)


def own_uids(path: Path) -> tuple[str, str] | None:
    """(Study, SOP Instance UID) of a file's data set, None when pydicom cannot read them."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return str(ds.get("StudyInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))
    except Exception:  # noqa: BLE001 - a broken test file: it has to be named by the node instead
        return None


def phi_of(files: list[Path]) -> set[str]:
    """Patient names and IDs written in the files (long enough not to match by chance)."""
    found = set()
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
            values = [str(ds.get("PatientName", "") or ""), str(ds.get("PatientID", "") or "")]
        except Exception:  # noqa: BLE001
            continue
        found |= {v for v in values if len(v) >= 6}
    return found


def _unstarted(d: Path) -> NodeProcess:
    """A node's configuration and data directory, for the CLI; the node is not started."""
    d.mkdir(parents=True)
    return NodeProcess(d)


@pytest.fixture(scope="module")
def test_files(tmp_path_factory) -> list[Path]:
    return pydicom_files(tmp_path_factory.mktemp("pydicom") / "in")


def _said_about(output: str, path: Path) -> str | None:
    """The node's reason for not storing `path`, from `hccnode analyze` output, else None."""
    for line in output.splitlines():
        for pattern in (rf"skipped {re.escape(str(path))}: (.+)", rf"{re.escape(str(path))} refused: (.+)"):
            m = re.search(pattern, line)
            if m:
                return m.group(1).strip()
    return None


def _check_every_file_and_study(files: list[Path], output: str, store) -> dict[str, int]:
    """Each file stored (its data set's SOP Instance UID indexed) or named with a reason; each
    stored study analysed or said to be not applicable with a reason. Returns counts."""
    versions = {r["sop_uid"] for r in store.query("SELECT sop_uid FROM instance_versions")}
    counts = defaultdict(int)
    for f in files:
        uids = own_uids(f)
        reason = _said_about(output, f)
        if reason is not None:
            assert len(reason) > 5, (f, reason)
            counts["refused"] += 1
        else:
            assert uids is not None and uids[1] in versions, f"{f} neither stored nor named:\n{output}"
            counts["stored"] += 1
    for r in store.query("SELECT study_uid FROM studies"):
        uid = re.escape(r["study_uid"])
        analysed = re.search(rf"^Study {uid} \(\w+\): \d+ measured", output, re.M)
        not_applicable = re.search(rf"^hccnode analyze: study {uid}: not applicable: .{{20,}}", output, re.M)
        assert analysed or not_applicable, f"study {r['study_uid']} has no outcome:\n{output}"
        counts["analysed" if analysed else "not_applicable"] += 1
    return dict(counts)


def test_every_pydicom_test_file_through_analyze_dicom_dir(test_files, tmp_path, capsys):
    """One folder of all of them, then a folder per study: no exception reaches the user, each
    bad file named with its reason, exit 0 (every study analysed or not applicable)."""
    folder = min(test_files, key=lambda p: len(p.parts)).parent
    node = _unstarted(tmp_path / "all")
    code = cli.main(["-c", str(node.config_path), "analyze", "--dicom-dir", str(folder), "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert not LEAK.search(out.out + out.err), LEAK.search(out.out + out.err)
    assert not any(v in out.out + out.err for v in phi_of(test_files))
    store = node.store()
    counts = _check_every_file_and_study(test_files, out.out, store)
    # pydicom ships CT, MR and others: some studies are measured, others are not for this analysis
    assert counts["stored"] > 100 and counts["refused"] > 10 and counts["analysed"] >= 5 \
        and counts["not_applicable"] >= 10, counts
    refusals = "\n".join(line for line in out.out.splitlines() if " refused: " in line or "skipped " in line)
    for why in ("not a DICOM Part 10 file", "a DICOMDIR, the index of a file set", "pixel data truncated",
                "File Meta Information lacks", "missing StudyInstanceUID"):
        assert why in refusals, why
    reasons = "\n".join(line for line in out.out.splitlines() if "not applicable" in line)
    for what in ("RT Plan Storage", "12-lead ECG Waveform Storage", "Ultrasound Image Storage",
                 "Basic Text SR Storage", "Secondary Capture Image Storage"):
        assert what in reasons, what
    store.close()

    # per study: only the files of one study in each folder
    by_study: dict[str, list[Path]] = defaultdict(list)
    for f in test_files:
        uids = own_uids(f)
        if uids and uids[0]:
            by_study[uids[0]].append(f)
    one = _unstarted(tmp_path / "per-study-node")
    for i, (study, files) in enumerate(sorted(by_study.items())):
        d = tmp_path / "per-study" / str(i)
        for f in files:
            (d / f.parent.relative_to(folder)).mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, d / f.relative_to(folder))
        code = cli.main(["-c", str(one.config_path), "analyze", "--dicom-dir", str(d), "--no-progress"])
        out = capsys.readouterr()
        text = out.out + out.err
        assert not LEAK.search(text), (study, text)
        stored = f"Study {study} (" in text or f"study {study}: not applicable: " in text
        # a study whose every file is refused stores nothing: exit 1, each file named
        assert code == (0 if stored else 1), (study, code, text)
        if not stored:
            assert all(str(d / f.relative_to(folder)) in text for f in files), text


# storescu proposes uncompressed transfer syntaxes unless told otherwise, and cannot convert
# compressed files to them: each compressed file goes in an association proposing its own syntax.
STORESCU_SYNTAX = {"1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.4.50": "-xy",
                   "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.80": "-xt",
                   "1.2.840.10008.1.2.4.81": "-xu", "1.2.840.10008.1.2.5": "-xr", "1.2.840.10008.1.2.1.99": "-xd"}


def store_answers(output: str) -> dict[str, tuple[str, str | None]]:
    """file -> (DIMSE status line, Error Comment or None) for each C-STORE response in
    `storescu -d` output."""
    answers: dict[str, tuple[str, str | None]] = {}
    current = None
    for line in output.splitlines():
        if "Sending file:" in line:
            current = line.split("Sending file:", 1)[1].strip()
        elif current and "DIMSE Status" in line and current not in answers:
            answers[current] = (re.search(r"DIMSE Status\s*:\s*(.+)", line).group(1).strip(), None)  # "0xc000: Error: ..."
        elif current in answers and "ErrorComment" in line:
            answers[current] = (answers[current][0], line[line.index("[") + 1:line.rindex("]")])
    return answers


@pytest.mark.network
def test_every_pydicom_test_file_by_c_store_ends_done_or_not_applicable(test_files, node_factory):
    """storescu sends each file it can read; each is answered Success or refused with a status and
    an error comment; every resulting job ends done or not_applicable, none failed; jobs, studies
    and the status page show the state."""
    need("storescu")
    node = node_factory(study={"stable_seconds": 0.5}).start()
    groups: dict[str, list[Path]] = defaultdict(list)
    for f in test_files:
        try:
            syntax = str(pydicom.filereader.read_file_meta_info(f).get("TransferSyntaxUID", ""))
        except Exception:  # noqa: BLE001 - storescu will say what it makes of it
            syntax = ""
        groups[STORESCU_SYNTAX.get(syntax, "-x=")].append(f)
    answers, output = {}, ""
    for option, files in groups.items():
        r = storescu(node, files, extra=("-R", "-nh", "-d", option), timeout=300)
        output += r.stdout + r.stderr
        answers.update(store_answers(r.stdout + r.stderr))
    store = node.store()
    assert len(answers) >= 130, output[-3000:]
    refused = {f: a for f, a in answers.items() if not a[0].lower().startswith("0x0000")}
    for f, (status, comment) in refused.items():  # a failure status and the reason, on the wire
        assert re.match(r"0x[ac]", status.lower()) and comment and len(comment) > 5, (f, status, comment)
    quarantined = store.query("SELECT status, reason FROM quarantine ORDER BY id")
    assert sorted(row["reason"][:64] for row in quarantined) == sorted(c for _, c in refused.values())
    assert not LEAK.search("\n".join(row["reason"] for row in quarantined))
    sent = set(answers) | {line.split("file:", 1)[1].strip(" :") for line in output.splitlines()
                           if "Store Failed, file:" in line or "ignoring file" in line}
    # storescu could not read the rest, and says so itself (they never reached the node)
    assert len(sent) >= len(test_files) - 5, sorted(set(map(str, test_files)) - sent)

    def ended():  # every study has a job for all it holds (its seq), and none is waiting or running
        rows = store.query("SELECT study_uid, study_seq, state, attempts, error, result FROM jobs")
        covered: dict[str, int] = {}
        for row in rows:
            covered[row["study_uid"]] = max(covered.get(row["study_uid"], 0), row["study_seq"])
        if covered == study_seqs(store) and all(row["state"] in ENDED + ("failed",) for row in rows):
            return rows
        return None

    rows = wait_until(ended, 240, interval=0.5, what="every study's job to end")
    assert [row for row in rows if row["state"] == "failed"] == []
    na = [row for row in rows if row["state"] == "not_applicable"]
    assert len({row["study_uid"] for row in na}) >= 10 and sum(row["state"] == "done" for row in rows) >= 5
    for row in na:                                  # ended at once, with the reason
        assert row["attempts"] == 1 and "not applicable: no CT or MR image series" in row["error"]
        assert json.loads(row["result"])["not_applicable"] == row["error"]

    listed = node.cli("jobs", "--state", "not_applicable", "--limit", "500")
    assert listed.returncode == 0 and all(row["study_uid"] in listed.stdout for row in na)
    assert "not_applicable" in node.cli("studies", "--limit", "500").stdout
    api = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{node.status_port}/api/status", timeout=10).read())
    assert api["jobs"]["counts"]["not_applicable"] == len(na) and "failed" not in api["jobs"]["counts"]
    page = urllib.request.urlopen(f"http://127.0.0.1:{node.status_port}/", timeout=10).read().decode()
    assert 'data-state="not_applicable"' in page and "not applicable: no CT or MR image series" in page
    events = [row["event"] for row in store.query("SELECT event FROM audit")]
    assert events.count("job.not_applicable") == len(na)
    log = node.log()
    assert "Traceback" not in log and not any(v in log for v in phi_of(test_files))


# Type 2 attributes a sender may leave out; our outputs must still carry them (empty).
ABSENT = ("PatientBirthDate", "PatientSex", "PatientName", "ReferringPhysicianName", "StudyID", "AccessionNumber",
          "StudyTime")


def test_a_ct_study_without_birth_date_and_sex_is_analysed_and_its_outputs_carry_them_empty(tmp_path):
    from phantom_index import index_files
    from pipeline_support import add_labs
    from report_support import dciodvfy

    from hccnode.phantom import StudySpec, generate
    from hccnode.pipeline import analyze_study
    from hccnode.store.db import Store

    truth = generate(StudySpec(kind="cect", seed=3, slices=8, matrix=48, noise_sd=2.0, seg_phase="equilibrium"),
                     tmp_path / "phantom")
    for f in (tmp_path / "phantom").rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        for keyword in ABSENT:
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(f)
    store = Store(tmp_path / "data")
    (study,) = index_files(store, tmp_path / "phantom")
    add_labs(store, truth, [("hct", 100 * truth.data["hct"], "%", -2.0)])  # for the ECV map
    a = analyze_study(store, study)
    assert [p.name for p in a.files] == ["seg.dcm", "ecv_map.dcm", "sr.dcm", "sr_results.dcm", "summary.dcm"]
    assert any(m.value is not None for m in a.measurements)
    for p in a.files:
        ds = pydicom.dcmread(p)
        for keyword in ABSENT:
            assert keyword in ds and ds[keyword].value in ("", None), (p.name, keyword)
        assert str(ds.PatientID) and ds.StudyInstanceUID == study   # what was there is kept
        errors, _ = dciodvfy(p)
        assert errors == [], (p.name, errors)
    store.close()


def test_a_localizer_only_study_or_images_without_frame_of_reference_are_not_applicable(tmp_path):
    from dicomgen import ct_series

    from hccnode.pipeline import NotApplicable, analyze_study
    from hccnode.store.db import Store
    from hccnode.store.spool import Spool, ingest_file

    scout = ct_series(tmp_path / "scout", n=2, seed=1, description="ABDOMEN")
    for f in scout:                     # a topogram: Image Type value 3 LOCALIZER (PS3.3 C.8.2.1.1.1)
        ds = pydicom.dcmread(f)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.save_as(f)
    axial = ct_series(tmp_path / "axial", n=6, seed=2)
    store = Store(tmp_path / "data")
    spool = Spool(store)
    (scout_uid,) = {ingest_file(spool, f).study_uid for f in scout}
    (axial_uid,) = {ingest_file(spool, f).study_uid for f in axial}
    assert scout_uid != axial_uid
    with pytest.raises(NotApplicable) as exc:
        analyze_study(store, scout_uid)
    assert "not applicable: no CT or MR image series that can be read as a volume" in str(exc.value)
    assert "CT CT Image Storage (2 instances)" in str(exc.value)
    rows = store.query("SELECT event, details FROM audit WHERE study_uid = ? AND event = 'analysis.not_applicable'",
                       (scout_uid,))
    assert len(rows) == 1 and "no CT or MR image series" in rows[0]["details"]
    a = analyze_study(store, axial_uid)         # the same images, not a localizer: analysed
    assert (a.out_dir / "sr.dcm").exists()
    no_frame = ct_series(tmp_path / "no-frame", n=6, seed=3)
    for f in no_frame:                  # Type 1 missing: no output could be placed on these images
        ds = pydicom.dcmread(f)
        del ds.FrameOfReferenceUID
        ds.save_as(f)
    (no_frame_uid,) = {ingest_file(spool, f).study_uid for f in no_frame}
    with pytest.raises(NotApplicable, match="no Frame of Reference UID"):
        analyze_study(store, no_frame_uid)
    store.close()


def test_a_study_whose_analysis_breaks_does_not_stop_the_next(tmp_path, capsys, monkeypatch):
    from dicomgen import ct_series

    from hccnode.pipeline import driver

    first = ct_series(tmp_path / "in" / "a", n=4, seed=1)
    ct_series(tmp_path / "in" / "b", n=4, seed=2)
    broken = str(pydicom.dcmread(first[0]).StudyInstanceUID)
    real = driver.analyze_study

    def analyze(store, uid, **kw):
        if uid == broken:
            raise RuntimeError("an internal fault")
        return real(store, uid, **kw)

    monkeypatch.setattr(driver, "analyze_study", analyze)
    node = _unstarted(tmp_path / "node")
    code = cli.main(["-c", str(node.config_path), "analyze", "--dicom-dir", str(tmp_path / "in"), "--no-progress"])
    out = capsys.readouterr()
    assert code == 1                                           # documented: a study could not be analysed
    assert f"study {broken}: analysis failed" in out.out and len(re.findall(r"^Study ", out.out, re.M)) == 1
    assert not LEAK.search(out.out + out.err)
