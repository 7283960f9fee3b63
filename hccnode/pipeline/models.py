"""The model cards on one analysis: inputs from the markers just measured and the labs at scan
time (each paper's own window), evaluated by hccnode.models.engine, stored and audited.

A card is evaluated when the study is of a kind that gives at least one of its marker inputs
(a CECT study does not run the DECT cards); a card that then lacks an input comes back
"not evaluated" with the reason, including why the marker itself was not measured.
"""

from __future__ import annotations

from typing import Any

from hccnode.labs import indices
from hccnode.models.card import Card, default_dirs, load_cards
from hccnode.imaging.measure import Measurement
from hccnode.models.engine import evaluate
from hccnode.imaging import phase_timing
from hccnode.pipeline import lesions
from hccnode.pipeline.findings import Findings
from hccnode.pipeline.labs import Labs
from hccnode.store import audit
from hccnode.store import model_results as model_store
from hccnode.store.db import Store

# Card input -> the marker that provides it. "_post" inputs (paper 003) are the follow-up study's
# values, so they are only given when the study has an earlier MR study of the patient.
MARKER_INPUTS = {
    "tumor_ecv_iodine": "ecv_tumor_iodine",
    "tumor_ecv_hu": "ecv_tumor",
    "liver_ecv_hu": "ecv_liver",
    "nic_ap": "nic_ap_tumor",
    "tumor_size": "tumor_diameter",
    "t2_sir_post": "t2_sir_tumor",
    "adc_mean_post": "adc_mean_tumor",
}
FOLLOW_UP_ONLY = {"t2_sir_post", "adc_mean_post"}
GENERIC_INPUTS = {"tumor_size"}
# Markers measured per lesion: a card takes the one of the lesion its paper uses.
LESION_MARKERS = {"ecv_tumor_iodine", "ecv_tumor", "nic_ap_tumor", "tumor_diameter", "t2_sir_tumor", "adc_mean_tumor"}
# Markers read on a timed phase: a paper's model takes them only within its timing (protocols.toml [timing]).
TIMED_MARKERS = {"ecv_tumor_iodine", "ecv_tumor", "ecv_liver"}
# Engine unit spellings for the marker units that differ from the UCUM the markers carry.
CARD_UNITS = {"10*-3.mm2/s": "10^-3 mm^2/s"}


def load(data_dir) -> dict[str, Card]:
    return load_cards(default_dirs(data_dir))


def run_cards(store: Store, study_uid: str, f: Findings, labs: Labs, *, follow_up: bool,
              patient_key: str | None = None, cards: dict[str, Card] | None = None) -> list[dict[str, Any]]:
    cards = cards if cards is not None else load(store.data_dir)
    markers = {m.marker for m in f.measurements}
    results = []
    for card in sorted(cards.values(), key=lambda c: (c.status != "published", c.id, c.version)):
        wanted = [name for name, spec in card.inputs.items() if spec.source == "marker"]
        # tumor size is measured in every study; it does not make an MR study a DECT one
        anchors = [n for n in wanted if n not in GENERIC_INPUTS] or wanted
        if not any(MARKER_INPUTS.get(n) in markers for n in anchors):
            continue
        paper = str(card.paper)[:3]
        inputs, notes = {}, []
        choice = lesions.for_paper(f.lesions, paper)
        for name, spec in card.inputs.items():
            if spec.source == "marker":
                marker = MARKER_INPUTS.get(name, "")
                m, which = _marker(f, marker, choice)
                late = _timing(m, paper) if m is not None and m.value is not None else None
                if name in FOLLOW_UP_ONLY and not follow_up:
                    notes.append(f"input {name!r}: this study is not a follow-up of an earlier MR study of the patient "
                                 "in the node (paper 003 uses post-treatment values)")
                elif m is None and which:
                    notes.append(f"input {name!r}: {marker} not chosen: {which}")
                elif m is None:
                    continue
                elif m.value is None:
                    notes.append(f"input {name!r}: {m.marker} not measured: {m.reason}")
                elif late:
                    shown = f"{m.value:.4g}" + (" (a fraction, as the card takes it)" if m.unit == "1" else f" {m.unit}")
                    notes.append(f"input {name!r}: {m.marker} = {shown} is reported but the paper's model "
                                 f"is not applied to it: {late}")
                else:
                    inputs[name] = {"value": m.value, "unit": CARD_UNITS.get(m.unit, m.unit),
                                    "source": f"marker {m.marker}{which}{_delay_text(m)}"}
            elif spec.source == "lab":
                ref, reason = (labs.index(paper, name) if name in indices.INPUTS else labs.value(paper, name))
                if ref is None:
                    notes.append(f"input {name!r}: {reason}")
                else:
                    inputs[name] = {"value": ref.value, "unit": ref.unit, "source": f"lab {ref.name} {ref.time} {ref.source}"}
        result = evaluate(card, inputs)
        if notes and result["status"] != "evaluated":
            result["reasons"] = list(result["reasons"]) + notes
        model_store.record(store, study_uid, result)
        outputs = result.get("outputs") or {}
        audit.append(store, "model.evaluated", "pipeline", study_uid=study_uid, patient_key=patient_key,
                     card_versions=[f"{card.id}@{card.version}"], status=result["status"],
                     risk_group=outputs.get("risk_group"), inputs=sorted(inputs))
        results.append(result)
    return results


def _marker(f: Findings, marker: str, choice: lesions.Choice) -> tuple[Measurement | None, str]:
    """The measurement of `marker` a card takes, and which lesion it is of (text; or, with no
    measurement, why no lesion was chosen)."""
    if marker not in LESION_MARKERS or not f.lesions:
        return f.value(marker), ""
    if choice.reason:
        return None, choice.reason
    refs = choice.lesions[0].refs
    m = next((m for m in f.measurements if m.marker == marker and m.roi in refs), None)
    return m, f" of {choice.text}"


def _timing(m: Measurement, paper: str) -> str | None:
    """Why paper `paper`'s model is not applied to `m` (its timing window), or None."""
    rule = lesions.protocols().get("timing", {}).get(paper)
    if rule is None or m.marker not in TIMED_MARKERS:
        return None
    timed = [s for s in m.series if s.phase.startswith(rule["phase"])]
    return phase_timing.outside_window(timed[0].delay_s if timed else None, rule["window_s"], paper, rule)


def _delay_text(m: Measurement) -> str:
    delays = [f"{s.phase} {s.delay_s:g} s after contrast start" for s in m.series if s.delay_s is not None]
    return f" (read on {'; '.join(delays)})" if delays else ""
