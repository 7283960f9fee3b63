"""HL7 v2 ORU^R01 handling without a network: parsing, storing, ACK codes, raw messages kept."""

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hccnode.labs import catalog, hl7v2
from hccnode.store.db import Store
from labs_support import ack_fields, obx, oru

CAT = catalog.load()


def handle(store, msg):
    ack, stored = hl7v2.handle(store, CAT, msg.encode() if isinstance(msg, str) else msg, "127.0.0.1:1")
    return ack_fields(ack), stored


def labs(store):
    return store.query("SELECT * FROM labs ORDER BY id")


def test_stores_each_obx_with_patient_issuer_code_unit_and_time(store):
    msg = oru(obx(1, "4544-3", "42", "%", time="20240105081500", ref="36-46", flag="N"),
              obx(2, "CRP", "<5", "mg/L", system="L"),
              obx(3, "751-8", "^4.2", "10*9/L", vtype="SN"),
              obx(4, "2345-7", "5.5", "mmol/L"))  # glucose: not in the catalog, kept as received
    a, stored = handle(store, msg)
    assert (a["code"], a["control"]) == ("AA", "MSG1")
    rows = labs(store)
    assert [r["test"] for r in rows] == ["hct", "crp", "neutrophils", None]
    hct, crp, neu, glu = rows
    assert (hct["patient_id"], hct["issuer"], hct["value"], hct["unit"], hct["value_text"], hct["unit_text"]) == \
        ("123456", "HOSP", 0.42, "L/L", "42", "%")
    assert (hct["code"], hct["code_system"], hct["reference_range"], hct["abnormal_flag"]) == ("4544-3", "LN", "36-46", "N")
    assert hct["observed"] == "20240105081500"  # OBX-14
    assert crp["observed"] == "20240105080000"  # OBR-7 when OBX-14 is empty
    assert (crp["value"], crp["comparator"], crp["value_text"]) == (None, "<", "<5")
    assert neu["value"] == 4.2
    assert (glu["value"], glu["value_text"], glu["unit_text"]) == (None, "5.5", "mmol/L")
    assert hct["patient_key"] == store.patient_key("123456", "HOSP")
    assert {(c.test, c.action) for c in stored.changes} == {("hct", "stored"), ("crp", "stored"), ("neutrophils", "stored")}
    raw = store.query("SELECT outcome, control_id, sending_facility, raw FROM labs_raw")
    assert raw == [{"outcome": "AA", "control_id": "MSG1", "sending_facility": "LAB", "raw": msg.encode()}]


def test_preferred_identifier_type_and_universal_id_issuer(store):
    pid = "PID|1||999^^^OTHER^SS~777^^^&1.2.3&ISO^MR||Doe"
    handle(store, oru(obx(1, "4544-3", "40", "%"), pid=pid))
    r = labs(store)[0]
    assert (r["patient_id"], r["issuer"]) == ("777", "1.2.3")


def test_correction_replaces_and_cancellation_withdraws(store):
    t = "20240105081500"
    handle(store, oru(obx(1, "4544-3", "42", "%", "F", t), control="A"))
    _, st1 = handle(store, oru(obx(1, "4544-3", "40", "%", "C", t), control="B"))
    assert [(c.test, c.action) for c in st1.changes] == [("hct", "replaced")]
    rows = labs(store)
    assert [(r["value_text"], r["state"]) for r in rows] == [("42", "superseded"), ("40", "current")]
    assert rows[0]["replaced_by"] == rows[1]["id"]
    _, st2 = handle(store, oru(obx(1, "4544-3", "", "%", "X", t), control="C"))
    assert [(c.test, c.action) for c in st2.changes] == [("hct", "withdrawn")]
    assert [r["state"] for r in labs(store)] == ["superseded", "withdrawn", "withdrawal"]


def test_preliminary_kept_then_replaced_by_final_and_never_downgrades(store):
    t = "20240105081500"
    handle(store, oru(obx(1, "4544-3", "41", "%", "P", t), control="A"))
    assert labs(store)[0]["kind"] == "preliminary"
    handle(store, oru(obx(1, "4544-3", "42", "%", "F", t), control="B"))
    handle(store, oru(obx(1, "4544-3", "43", "%", "P", t), control="C"))
    assert [(r["value_text"], r["kind"], r["state"]) for r in labs(store)] == [
        ("41", "preliminary", "superseded"), ("42", "final", "current"), ("43", "preliminary", "ignored")]


def test_resent_message_is_acknowledged_and_stored_once(store):
    msg = oru(obx(1, "4544-3", "42", "%"))
    a1, _ = handle(store, msg)
    a2, st2 = handle(store, msg)
    assert a1["code"] == a2["code"] == "AA" and a2["control"] == "MSG1"
    assert len(labs(store)) == 1 and st2.changes == []
    assert [r["outcome"] for r in store.query("SELECT outcome FROM labs_raw ORDER BY id")] == ["AA", "duplicate"]


@pytest.mark.parametrize("msg,code,err,where", [
    (oru(obx(1, "4544-3", "42", "%"), msg_type="ADT^A01^ADT_A01"), "AR", "200", "MSH^1^9"),
    (oru(obx(1, "4544-3", "42", "%"), msg_type="ORU^R30"), "AR", "201", "MSH^1^9"),
    (oru(obx(1, "4544-3", "42", "%"), version="3.0"), "AR", "203", "MSH^1^12"),
    (oru(obx(1, "4544-3", "42", "%"), control=""), "AR", "101", "MSH^1^10"),
    ("PID|1||123\rOBX|1|NM|x", "AR", "100", ""),
    (oru(obx(1, "4544-3", "42", "%"), pid=""), "AE", "100", "OBX^1"),
    (oru(obx(1, "4544-3", "42", "%"), pid="PID|1||^^^HOSP^MR"), "AE", "101", "PID^1^3"),
    (oru(obx(1, "4544-3", "42", "%"), obr_time=""), "AE", "101", "OBX^1^14"),
    (oru(obx(1, "4544-3", "42", "mmol/L")), "AE", "103", "OBX^1^6"),
    (oru(obx(1, "4544-3", "42", "L/L")), "AE", "102", "OBX^1^5"),
    (oru(obx(1, "4544-3", "high", "%")), "AE", "102", "OBX^1^5"),
    (oru(obx(1, "4544-3", "42", "%", status="")), "AE", "101", "OBX^1^11"),
    (oru(obx(1, "4544-3", "42", "%", time="2024-01-05")), "AE", "102", "OBX^1^14"),
    (oru(), "AE", "101", "OBX^1"),
])
def test_rejections_answer_code_reason_and_err_and_keep_raw(store, msg, code, err, where):
    a, stored = handle(store, msg)
    assert a["code"] == code and stored is None
    assert a["text"] and a["errors"], a
    e = a["errors"][0]
    assert e[3].split("^")[0] == err and e[3].endswith("HL70357") and e[4] == "E"
    assert e[2] == where
    assert labs(store) == []
    raw = store.query("SELECT outcome, reason, raw FROM labs_raw")
    assert raw[0]["outcome"] == code and raw[0]["reason"] and raw[0]["raw"] == msg.encode()


def test_one_bad_result_rejects_the_whole_message_and_lists_every_problem(store):
    msg = oru(obx(1, "4544-3", "42", "%"), obx(2, "1751-7", "41", "mmol/L"), obx(3, "1988-5", "abc", "mg/L"))
    a, _ = handle(store, msg)
    assert a["code"] == "AE" and len(a["errors"]) == 2
    assert labs(store) == []  # nothing half-committed


def test_reasons_never_carry_the_patient_id(store):
    a, _ = handle(store, oru(obx(1, "4544-3", "42", "mmol/L"), pid="PID|1||SECRET42^^^HOSP^MR"))
    assert "SECRET42" not in str(a)
    assert "SECRET42" not in store.query("SELECT reason FROM labs_raw")[0]["reason"]


def test_ack_echoes_control_id_with_delimiters_escaped(store):
    a, _ = handle(store, oru(obx(1, "4544-3", "42", "%"), control="A&B"))
    assert a["control"] == "A\\T\\B"


def test_latin1_message_declared_in_msh18(store):
    msg = oru(obx(1, "4544-3", "42", "%"), pid="PID|1||123456^^^HÔP^MR", extra_msh="||||||8859/1")
    a, _ = handle(store, msg.encode("latin-1"))
    assert a["code"] == "AA"
    assert labs(store)[0]["issuer"] == "HÔP"


def test_undeclared_non_utf8_is_rejected(store):
    a, _ = handle(store, oru(obx(1, "4544-3", "42", "%"), pid="PID|1||123456^^^HÔP^MR").encode("latin-1"))
    assert a["code"] == "AR" and "UTF-8" in a["text"].upper()


def test_lf_segment_separators_are_accepted(store):
    a, _ = handle(store, oru(obx(1, "4544-3", "42", "%")).replace("\r", "\n"))
    assert a["code"] == "AA" and len(labs(store)) == 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: ("MSH|^~\\&|" + t).encode()))
def test_handle_answers_any_bytes_with_an_ack(store, raw):
    ack, _ = hl7v2.handle(store, CAT, raw)
    assert ack_fields(ack)["code"] in ("AA", "AE", "AR")


def test_reprocess_after_the_site_adds_a_unit(tmp_path):
    store = Store(tmp_path)
    a, _ = handle(store, oru(obx(1, "4544-3", "0.42", "frac")))
    assert a["code"] == "AE"
    assert hl7v2.reprocess(store, CAT) == [(1, None)]  # same catalog: rejected again, no copy kept
    (tmp_path / "labs.toml").write_text('[tests.hct.units]\n"frac" = 1.0\n')
    (raw_id, stored), = hl7v2.reprocess(store, catalog.load(tmp_path))
    assert raw_id == 1 and stored.rows == 1 and labs(store)[0]["value"] == 0.42 and labs(store)[0]["raw_id"] == 1
    assert store.query("SELECT id, outcome FROM labs_raw") == [{"id": 1, "outcome": "AA"}]
    assert hl7v2.reprocess(store, CAT) == []
    store.close()
