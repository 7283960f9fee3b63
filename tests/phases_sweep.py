"""Varied phantom studies with stripped headers, classified with and without the study relations.

    PYTHONPATH=. python tests/phases_sweep.py [N] [SEED]     prints the rates

Each study: a vendor style, seeded delays (arterial 25-45 s, portal venous 55-95 s, equilibrium
120-300 s after bolus start), noise 5-25 HU, hematocrit 0.30-0.50, liver ECV 0.20-0.38, CECT or
DECT, classic or Enhanced multi-frame CT; headers without descriptions and contrast tags, and
without times (most), with shuffled times, or with times kept. Outcomes per conventional CT series
of an enhanced phase: correct, ambiguous or wrong.
"""

from __future__ import annotations

import dataclasses
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from hccnode.imaging import phase_index  # noqa: E402
from hccnode.imaging.phase_rules import RuleSet, load_rules  # noqa: E402
from hccnode.phantom import StudySpec, generate  # noqa: E402
from hccnode.store.db import Store  # noqa: E402
from phantom_index import expected, index_files  # noqa: E402

VENDORS = ("standard", "siemens", "ge", "philips", "canon")
STRIPPED = ("no_description", "no_contrast")
ENHANCED_KINDS = {"ct_arterial", "ct_portal_venous", "ct_equilibrium"}
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def sweep_specs(n: int, seed: int = 2026) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        times = ("shuffled_times",) if i % 5 == 4 else () if i % 7 == 6 else ("no_times",)
        out.append(dict(
            kind="dect" if i % 4 == 3 else "cect", vendor=VENDORS[i % len(VENDORS)], seed=900 + i,
            header_faults=STRIPPED + times, enhanced=i % 6 == 5,
            arterial_delay_s=round(rng.uniform(25, 45), 1), portal_delay_s=round(rng.uniform(55, 95), 1),
            equilibrium_delay_s=round(rng.uniform(120, 300), 1), noise_sd=round(rng.uniform(5, 25), 1),
            hct=round(rng.uniform(0.30, 0.50), 2), liver_ecv=round(rng.uniform(0.20, 0.38), 2)))
    return out


def without_relations(rules: RuleSet) -> RuleSet:
    return dataclasses.replace(rules, relations={**rules.relations, "use": False})


def run(specs: list[dict], rule_sets: dict[str, RuleSet]) -> list[dict]:
    """One row per enhanced-phase CT series and rule set: spec, truth, decision."""
    rows = []
    for i, sp in enumerate(specs):
        with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
            truth = generate(StudySpec(slices=6, matrix=80, **sp), Path(d) / "phantom")
            exp = expected(truth.as_dict())
            store = Store(d)
            for study in index_files(store, Path(d) / "phantom", shuffle_seed=i):
                for name, rules in rule_sets.items():
                    for dec in phase_index.classify_and_store(store, study, rules):
                        e = exp[dec.series_uid]
                        if e["kind"] in ENHANCED_KINDS:
                            outcome = ("correct" if dec.kind == e["kind"] else
                                       "ambiguous" if dec.kind == "ambiguous" else "wrong")
                            rows.append({"rules": name, "spec": sp, "truth": e["kind"], "decision": dec,
                                         "outcome": outcome})
            store.close()
    return rows


def rates(rows: list[dict], name: str) -> dict[str, int]:
    out = {"correct": 0, "ambiguous": 0, "wrong": 0}
    for r in rows:
        if r["rules"] == name:
            out[r["outcome"]] += 1
    return out


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 2026
    rules = load_rules()
    rows = run(sweep_specs(n, seed), {"with relations": rules, "without": without_relations(rules)})
    for name in ("with relations", "without"):
        r = rates(rows, name)
        total = sum(r.values())
        print(f"{name:15s} {n} studies, {total} enhanced CT series: correct {r['correct']} "
              f"({100 * r['correct'] / total:.1f} %), ambiguous {r['ambiguous']}, wrong {r['wrong']}")
    by_fault: dict[tuple, list[int]] = {}
    for row in rows:
        if row["rules"] == "with relations":
            k = tuple(f for f in row["spec"]["header_faults"] if f not in STRIPPED) + (row["spec"]["kind"],)
            c = by_fault.setdefault(k, [0, 0, 0])
            c[["correct", "ambiguous", "wrong"].index(row["outcome"])] += 1
    for k, (c, a, w) in sorted(by_fault.items()):
        print(f"  {'+'.join(k):28s} correct {c}, ambiguous {a}, wrong {w}")
    for row in rows:
        if row["rules"] == "with relations" and row["outcome"] != "correct":
            d = row["decision"]
            rel = [r for r in d.reasons if r["source"] == "relation"]
            why = rel[0]["values"]["why"] if rel else "no relation reason"
            m = d.measurement
            print(f"  {row['outcome']}: {row['truth']} -> {d.kind} series {d.series_number} "
                  f"{row['spec']['kind']} {row['spec']['header_faults'][2:]} "
                  f"A/L {m and m.aorta_hu and round(m.aorta_hu)}/{m and m.liver_hu and round(m.liver_hu)}: {why[:160]}")
