"""The audit log: the chain verifies when intact and names the first edited, removed or moved row;
the database refuses UPDATE/DELETE; concurrent writers (threads, processes) keep one chain; PHI is refused.
Each test that takes `store` runs on both engines (conftest: SQLite, and a fresh PostgreSQL database)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import wait_until

from hccnode import __version__, config
from hccnode.store import audit, engine
from hccnode.store.db import Store

ROOT = Path(__file__).resolve().parent.parent
KEY = "0123456789abcdef"


def fill(store: Store, n: int = 6) -> None:
    for i in range(n):
        audit.append(store, "instance.stored", "AE:CT01", study_uid=f"1.2.{i % 2}", patient_key=KEY,
                     input_hashes=[hashlib.sha256(str(i).encode()).hexdigest()], bytes=100 + i)


def reopen(store: Store) -> Store:
    """Another Store on the same database (another thread's or process's view)."""
    return Store(store.data_dir, url=store.url)


def unguard(store: Store) -> sqlite3.Connection:
    """What a determined editor would do first: drop the triggers."""
    c = store.conn()
    on = " ON audit" if store.url else ""
    c.executescript(f"DROP TRIGGER audit_no_update{on}; DROP TRIGGER audit_no_delete{on};")
    return c


def test_clean_chain_verifies_and_names_its_head(store):
    assert audit.verify(store).ok and audit.verify(store).rows == 0 and audit.head(store) is None
    fill(store)
    v = audit.verify(store)
    assert v.ok and v.rows == 6 and v.head_id == 6 and v.guarded
    last = store.query("SELECT row_hash FROM audit WHERE id = 6")[0]["row_hash"]
    assert v.head_hash == last and last in str(v)
    assert audit.head(store) == (6, last)


def test_rows_are_chained_with_the_documented_canonical_hash(store):
    fill(store, 3)
    rows = store.query("SELECT * FROM audit ORDER BY id")
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert rows[0]["prev_hash"] == "0" * 64
    for prev, r in zip([None] + rows, rows):
        body = {k: v for k, v in r.items() if k != "row_hash"}
        expected = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        assert r["row_hash"] == expected
        if prev:
            assert r["prev_hash"] == prev["row_hash"]


def test_row_carries_time_actor_version_and_json_fields(store):
    before = audit.format_time(datetime.now(timezone.utc))
    audit.append(store, "output.created", "worker", study_uid="1.2.3", input_hashes={"study": "ab" * 32},
                 output_uids=["1.2.3.9"], card_versions=["p002@1.0.0", "p001@1.1.0"], details={"kind": "SR"})
    after = audit.format_time(datetime.now(timezone.utc))
    r = store.query("SELECT * FROM audit")[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]) and before <= r["time"] <= after
    assert (r["actor"], r["event"], r["study_uid"], r["software_version"]) == ("worker", "output.created", "1.2.3", __version__)
    assert json.loads(r["input_hashes"]) == {"study": "ab" * 32}
    assert json.loads(r["output_uids"]) == ["1.2.3.9"]
    assert json.loads(r["card_versions"]) == ["p001@1.1.0", "p002@1.0.0"]
    assert json.loads(r["details"]) == {"kind": "SR"}


def test_triggers_refuse_update_and_delete(store):
    fill(store, 2)
    c = store.conn()
    with pytest.raises(engine.ERRORS, match="append-only: UPDATE refused"):
        c.execute("UPDATE audit SET details = '{}' WHERE id = 1")
    with pytest.raises(engine.ERRORS, match="append-only: DELETE refused"):
        c.execute("DELETE FROM audit WHERE id = 2")
    assert store.query("SELECT COUNT(*) AS n FROM audit")[0]["n"] == 2 and audit.verify(store).ok


def test_dropped_triggers_are_reported_and_come_back_when_the_store_opens(store):
    fill(store, 1)
    unguard(store)
    assert not audit.verify(store).guarded and "triggers are missing" in str(audit.verify(store))
    again = reopen(store)
    assert audit.verify(again).guarded
    again.close()


def test_edited_detail_is_a_hash_mismatch_at_that_row(store):
    fill(store)
    unguard(store).execute("""UPDATE audit SET details = '{"bytes":999}' WHERE id = 3""")
    v = audit.verify(store)
    assert not v.ok and (v.bad_id, v.problem) == (3, "hash mismatch") and v.head_id == 2
    assert "row 3: hash mismatch" in str(v)


def test_altered_hash_is_detected_at_that_row(store):
    fill(store)
    unguard(store).execute("UPDATE audit SET row_hash = ? WHERE id = 4", ("f" * 64,))
    v = audit.verify(store)
    assert (v.ok, v.bad_id, v.problem) == (False, 4, "hash mismatch")


def test_edit_with_recomputed_hash_breaks_the_next_link(store):
    fill(store)
    c = unguard(store)
    row = dict(c.execute("SELECT * FROM audit WHERE id = 3").fetchone())
    row["details"] = '{"bytes":1}'
    c.execute("UPDATE audit SET details = ?, row_hash = ? WHERE id = 3", (row["details"], audit.row_hash(row)))
    v = audit.verify(store)
    assert (v.ok, v.bad_id, v.problem) == (False, 4, "broken link") and "row 3" in v.detail


@pytest.mark.parametrize("deleted, named", [(3, 4), (1, 2)])
def test_deleted_row_is_a_gap_named_at_the_next_row(store, deleted, named):
    fill(store)
    unguard(store).execute("DELETE FROM audit WHERE id = ?", (deleted,))
    v = audit.verify(store)
    assert (v.ok, v.bad_id, v.problem) == (False, named, "gap in ids")


def test_swapped_rows_are_detected_at_the_first_of_them(store):
    fill(store)
    c = unguard(store)
    c.execute("UPDATE audit SET id = -1 WHERE id = 2")
    c.execute("UPDATE audit SET id = 2 WHERE id = 3")
    c.execute("UPDATE audit SET id = 3 WHERE id = -1")
    v = audit.verify(store)
    assert (v.ok, v.bad_id, v.problem) == (False, 2, "hash mismatch")


def test_rows_cut_off_the_end_are_shown_against_a_recorded_head(store):
    fill(store)
    recorded = audit.head(store)
    assert audit.verify(store, expect=recorded).ok
    fill(store, 2)  # the log grows on: the recorded head stays in the chain
    assert audit.verify(store, expect=recorded).ok
    unguard(store).execute("DELETE FROM audit WHERE id >= 5")
    assert audit.verify(store).ok  # the chain alone cannot tell
    v = audit.verify(store, expect=recorded)
    assert (v.ok, v.bad_id, v.problem) == (False, 6, "truncated") and "ends at row 4" in v.detail
    v = audit.verify(store, expect=(3, "e" * 64))
    assert (v.ok, v.bad_id, v.problem) == (False, 3, "head mismatch")


def test_event_rolls_back_with_the_callers_transaction(store):
    fill(store, 2)
    with pytest.raises(RuntimeError):
        with store.tx() as c:
            audit.append(c, "job.queued", "watcher", study_uid="1.2.0", job=7)
            raise RuntimeError("the caller's work failed")
    with pytest.raises(RuntimeError):
        with store.tx():
            audit.append(store, "job.queued", "watcher", study_uid="1.2.0", job=7)  # the Store joins it too
            raise RuntimeError("the caller's work failed")
    assert store.query("SELECT COUNT(*) AS n FROM audit")[0]["n"] == 2
    with store.tx() as c:
        c.execute("INSERT INTO studies (study_uid, first_received, last_received) VALUES ('1.2.0', 0, 0)")
        assert audit.append(c, "job.queued", "watcher", study_uid="1.2.0", job=7) == 3
    assert audit.verify(store).ok


def test_standalone_connection_gets_its_own_transaction(store):
    c = engine.connect_pg(store.url) if store.url else sqlite3.connect(store.path, isolation_level=None)
    assert audit.append(c, "node.started", "node") == 1 and not c.in_transaction
    c.close()
    assert audit.verify(store).rows == 1


def test_concurrent_threads_keep_one_chain(store):
    n_threads, per_thread = 8, 40
    start = threading.Barrier(n_threads)

    def writer(k: int) -> None:
        s = reopen(store)
        start.wait()
        for i in range(per_thread):
            if i % 2:
                audit.append(s, "job.started", f"worker-{k}", study_uid=f"1.9.{k}", i=i)
            else:  # half of them inside a caller's transaction
                with s.tx() as c:
                    audit.append(c, "job.done", f"worker-{k}", study_uid=f"1.9.{k}", i=i)
            time.sleep(0.001)  # lets the others take the lock
        s.close()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    v = audit.verify(store)
    assert v.ok and v.rows == n_threads * per_thread
    for k in range(n_threads):
        assert len(list(audit.rows(store, study_uid=f"1.9.{k}"))) == per_thread
    actors = [r["actor"] for r in store.query("SELECT actor FROM audit ORDER BY id")]
    assert sum(a != b for a, b in zip(actors, actors[1:])) > n_threads, "the writers did not overlap: nothing was tested"


WRITER = """
import sys, time
from pathlib import Path
from hccnode.store import audit, engine
from hccnode.store.db import Store
s = Store(sys.argv[1], url=sys.argv[4])
(Path(sys.argv[1]) / ("ready-" + sys.argv[2])).touch()
go = Path(sys.argv[1]) / "go"
while not go.exists():
    time.sleep(0.01)
for i in range(int(sys.argv[3])):
    audit.append(s, "instance.stored", sys.argv[2], study_uid="1.8." + sys.argv[2], i=i)
    time.sleep(0.002)  # as a C-STORE stream does between instances: lets the others take the lock
"""


def test_concurrent_processes_keep_one_chain(store):
    per_process = 150
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(store.data_dir), name, str(per_process), store.url], env=env)
             for name in ("A", "B")]
    try:
        wait_until(lambda: all((store.data_dir / f"ready-{n}").exists() for n in "AB"), 60, what="writers ready")
        (store.data_dir / "go").touch()  # all three start together
        for i in range(per_process):  # and this process too
            audit.append(store, "instance.stored", "C", study_uid="1.8.C", i=i)
            time.sleep(0.002)
        assert [p.wait(timeout=60) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    v = audit.verify(store)
    assert v.ok and v.rows == 3 * per_process
    actors = [r["actor"] for r in store.query("SELECT actor FROM audit ORDER BY id")]
    assert {a: actors.count(a) for a in "ABC"} == {"A": per_process, "B": per_process, "C": per_process}
    assert sum(a != b for a, b in zip(actors, actors[1:])) > 3, "the writers did not overlap: nothing was tested"


@pytest.mark.parametrize("kwargs", [
    {"patient_id": "PAT-1"},
    {"PatientName": "Doe^Jane"},
    {"details": {"Patient-Birth-Date": "19600101"}},
    {"details": {"lab": {"patients_name": "x"}}},
    {"details": {"rows": [{"dob": "1960"}]}},
    {"input_hashes": {"PatientID": "ab" * 32}},
])
def test_phi_field_names_are_refused_and_nothing_is_written(store, kwargs):
    with pytest.raises(audit.AuditError, match="PHI"):
        audit.append(store, "lab.received", "hl7", **kwargs)
    assert store.query("SELECT COUNT(*) AS n FROM audit")[0]["n"] == 0


def test_dicom_values_that_are_not_plain_json_are_refused(store):
    """A PersonName (or any non-JSON value) is refused, never stringified into the log."""
    from pydicom.valuerep import PersonName
    with pytest.raises(audit.AuditError, match="not JSON"):
        audit.append(store, "phase.decided", "worker", reason=PersonName("Doe^Jane"))
    assert audit.verify(store).rows == 0


def test_patient_key_must_be_a_hash_not_an_id(store):
    with pytest.raises(audit.AuditError, match="patient_key"):
        audit.append(store, "lab.received", "hl7", patient_key="PAT-777")
    audit.append(store, "lab.received", "hl7", patient_key=store.patient_key("PAT-777"))
    assert "PAT-777" not in json.dumps(store.query("SELECT * FROM audit"))


def test_unknown_event_and_non_json_details_are_refused(store):
    with pytest.raises(audit.AuditError, match="unknown audit event 'instance.stord'"):
        audit.append(store, "instance.stord", "scp")
    with pytest.raises(audit.AuditError, match="details is not JSON"):
        audit.append(store, "job.done", "worker", value=float("nan"))
    with pytest.raises(audit.AuditError, match="actor"):
        audit.append(store, "job.done", "")
    assert audit.verify(store).rows == 0


def test_rows_since_and_by_study(store):
    fill(store, 4)
    assert [r["id"] for r in audit.rows(store, study_uid="1.2.1")] == [2, 4]
    t3 = store.query("SELECT time FROM audit WHERE id = 3")[0]["time"]
    assert all(r["time"] >= t3 for r in audit.rows(store, since=t3))
    assert list(audit.rows(store, since=audit.parse_since("2999-01-01"))) == []
    assert len(list(audit.rows(store, since=audit.parse_since("2000-01-01")))) == 4


def test_parse_since_reads_utc_offsets_and_rejects_garbage():
    assert audit.parse_since("2024-01-05") == "2024-01-05T00:00:00.000Z"
    assert audit.parse_since("2024-01-05T10:30+02:00") == "2024-01-05T08:30:00.000Z"
    assert audit.parse_since("2024-01-05T10:30:00Z") == "2024-01-05T10:30:00.000Z"
    with pytest.raises(audit.AuditError, match="not an ISO 8601"):
        audit.parse_since("yesterday")


def test_copy_holds_only_the_audit_table_and_verifies(store, tmp_path):
    fill(store, 5)
    out = tmp_path / "audit-copy.db"
    assert audit.copy_to(store, out) == 5
    c = sqlite3.connect(out)
    tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"audit"}
    v = audit.verify(c)
    assert v.ok and v.guarded and v.head_hash == audit.verify(store).head_hash
    with pytest.raises(FileExistsError):
        audit.copy_to(store, out)


def test_config_loaded_then_changed_names_the_changed_keys(store):
    cfg = config.Config()
    assert audit.record_config(store, cfg) == (1, False)
    assert audit.record_config(store, cfg) == (2, False)  # same values: no change event
    cfg.node.port, cfg.forward.destinations = 104, ["PACS@127.0.0.1:11113"]
    row_id, changed = audit.record_config(store, cfg)
    assert changed and row_id == 4
    events = store.query("SELECT event, details FROM audit ORDER BY id")
    assert [e["event"] for e in events] == ["config.loaded", "config.loaded", "config.changed", "config.loaded"]
    change = json.loads(events[2]["details"])
    assert change["keys"] == ["forward.destinations", "node.port"]
    assert change["previous_hash"] == json.loads(events[0]["details"])["hash"]
    assert change["hash"] == json.loads(events[3]["details"])["hash"] != change["previous_hash"]
    assert json.loads(events[3]["details"])["values"]["node.port"] == 104


def test_config_hash_leaves_secrets_out():
    @dataclasses.dataclass
    class Section:
        host: str = "h"
        password: str = "one"
        api_token: str = "t"

    @dataclasses.dataclass
    class Cfg:
        remote: Section = dataclasses.field(default_factory=Section)
        source: str = "x"

    a, b = Cfg(), Cfg()
    b.remote.password, b.remote.api_token = "two", "u"
    assert audit.config_values(a) == {"remote.host": "h"}
    assert audit.config_hash(audit.config_values(a)) == audit.config_hash(audit.config_values(b))
    b.remote.host = "other"
    assert audit.config_hash(audit.config_values(a)) != audit.config_hash(audit.config_values(b))


def test_digest_of_inputs_is_order_free():
    hashes = [hashlib.sha256(bytes([i])).hexdigest() for i in range(5)]
    assert audit.digest(hashes) == audit.digest(reversed(hashes)) != audit.digest(hashes[:4])
