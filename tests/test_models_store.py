"""model_results: the engine's results stored per study and card version; latest one wins."""

from pathlib import Path

from hccnode.store import model_results as mstore
from hccnode.models.card import load_cards
from hccnode.models.engine import InputValue, evaluate
from hccnode.store.db import Store

CARDS = load_cards([Path(__file__).resolve().parents[1] / "plugins" / "models"])


def test_record_and_latest(tmp_path):
    st = Store(tmp_path)
    c = CARDS["p001-tumor-ecv@1.0.0"]
    first = evaluate(c, {"tumor_ecv_hu": InputValue(20.0, "%", "marker run 1")})
    second = evaluate(c, {"tumor_ecv_hu": InputValue(30.0, "%", "marker run 2")})
    missing = evaluate(c, {})
    mstore.record(st, "1.2.3", first, evaluated_at=1.0)
    mstore.record(st, "1.2.3", second, evaluated_at=2.0)
    mstore.record(st, "1.2.3", missing, evaluated_at=3.0)  # a failed evaluation does not replace a result
    mstore.record(st, "1.2.4", first, evaluated_at=4.0)
    rows = mstore.latest_results(st)
    assert [(r["study_uid"], r["inputs"]["tumor_ecv_hu"]["source"]) for r in rows] == [
        ("1.2.3", "marker run 2"), ("1.2.4", "marker run 1")]
    r = rows[0]
    assert (r["card_id"], r["card_version"], r["status"]) == ("p001-tumor-ecv", "1.0.0", "evaluated")
    assert r["output"]["outputs"]["risk_group"] == "Higher tumor ECV"
    all_rows = st.query("SELECT status FROM model_results ORDER BY id")
    assert [x["status"] for x in all_rows] == ["evaluated", "evaluated", "not_evaluated", "evaluated"]
    assert mstore.latest_results(st, "p002-nomogram") == []
