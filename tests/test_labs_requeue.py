"""Re-queue hook: which analysed studies a new, corrected or withdrawn result changes."""

from datetime import datetime, timezone

import pytest

from hccnode.labs import catalog, hl7v2, requeue
from hccnode.labs.matching import match_lab, match_panel
from hccnode.store.db import Store, now
from labs_support import obx, oru

CAT = catalog.load()
SCAN = datetime(2024, 1, 6, 9, 0, tzinfo=timezone.utc)


def add_study(store, uid, pid="123456", issuer="HOSP"):
    store.conn().execute("INSERT INTO studies (study_uid, patient_key, first_received, last_received) VALUES (?,?,?,?)",
                         (uid, store.patient_key(pid, issuer), now(), now()))


def send(store, msg):
    ack, stored = hl7v2.handle(store, CAT, msg.encode())
    assert b"MSA|AA" in ack, ack
    return stored


def analyse(store, uid, issuer="HOSP"):
    m = match_lab(store, "123456", issuer, SCAN, "hct", CAT.window("000", "hct"))
    requeue.record_usage(store, uid, SCAN, "000", [m])
    return m


def test_result_arriving_after_analysis_requeues_that_study_only(store):
    add_study(store, "1.2.3")
    add_study(store, "1.2.4", pid="OTHER")
    add_study(store, "1.2.5")  # never analysed: its first analysis will see the value
    assert analyse(store, "1.2.3").status == "missing"
    stored = send(store, oru(obx(1, "4544-3", "42", "%", time="20240105090000+0000")))
    got = requeue.for_changes(store, stored.changes, CAT)
    assert [r.study_uid for r in got] == ["1.2.3"]
    assert got[0].reasons[0].startswith("paper 000 hct: was missing, now lab ")
    assert requeue.studies_needing_requeue(store, "123456", "HOSP", catalog=CAT) == got


def test_result_outside_the_window_does_not_requeue(store):
    add_study(store, "1.2.3")
    analyse(store, "1.2.3")
    stored = send(store, oru(obx(1, "4544-3", "42", "%", time="20231201090000+0000")))
    assert requeue.for_changes(store, stored.changes, CAT) == []


def test_correction_and_withdrawal_requeue(store):
    add_study(store, "1.2.3")
    send(store, oru(obx(1, "4544-3", "42", "%", time="20240105090000+0000"), control="A"))
    assert analyse(store, "1.2.3").value == 0.42
    stored = send(store, oru(obx(1, "4544-3", "40", "%", "C", "20240105090000+0000"), control="B"))
    assert [r.study_uid for r in requeue.for_changes(store, stored.changes, CAT)] == ["1.2.3"]
    analyse(store, "1.2.3")
    stored = send(store, oru(obx(1, "4544-3", "", "%", "X", "20240105090000+0000"), control="C"))
    got = requeue.for_changes(store, stored.changes, CAT)
    assert [r.study_uid for r in got] == ["1.2.3"] and got[0].reasons[0].endswith("now missing")


def test_study_without_issuer_is_found_from_a_lab_with_issuer(store):
    add_study(store, "1.2.9", issuer=None)
    analyse(store, "1.2.9", issuer=None)
    stored = send(store, oru(obx(1, "4544-3", "42", "%", time="20240105090000+0000")))
    assert [r.study_uid for r in requeue.for_changes(store, stored.changes, CAT)] == ["1.2.9"]


def test_panel_usage_is_rechecked_as_a_panel(store):
    add_study(store, "1.2.3")
    w = CAT.window("003", "neutrophils")
    panel = ["neutrophils", "lymphocytes"]
    requeue.record_usage(store, "1.2.3", SCAN, "003", match_panel(store, "123456", "HOSP", SCAN, panel, w), panel)
    t = "20240105090000+0000"
    stored = send(store, oru(obx(1, "751-8", "4", "10*9/L", time=t)))
    assert requeue.for_changes(store, stored.changes, CAT) == []  # half a panel changes nothing
    stored = send(store, oru(obx(1, "731-0", "2", "10*9/L", time=t), control="L"))
    got = requeue.for_changes(store, stored.changes, CAT)
    assert [r.study_uid for r in got] == ["1.2.3"] and len(got[0].reasons) == 2
