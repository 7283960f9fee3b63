"""CLI: `hccnode phases STUDY_UID` (classify and show), `hccnode phases --check-rules FILE`."""

from __future__ import annotations

import json

from hccnode import RESEARCH_USE


def register(sub) -> None:
    p = sub.add_parser(
        "phases", help="find the contrast phase / kind of every series of a study",
        description="Classify every series of a stored study (CT unenhanced/arterial/portal venous/equilibrium, "
                    "DECT iodine/VMI/VNC, MR T2/DWI/ADC, other), store the decisions in the index and show them "
                    "with confidence and reasons. " + RESEARCH_USE)
    p.add_argument("study_uid", nargs="?", help="Study Instance UID")
    p.add_argument("--rules", help="rules data file (default: [phases] rules_file of the configuration, else "
                                   "the packaged hccnode/data/phase_rules.toml)")
    p.add_argument("--stored", action="store_true", help="show the stored decisions without deciding again")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--check-rules", action="store_true", help="only validate the rules file and exit")
    p.set_defaults(func=run)


def run(args) -> int:
    from hccnode.cli import UsageError
    from hccnode.imaging.phase_index import PhaseError, classify_and_store
    from hccnode.store.phases import stored_phases
    from hccnode.imaging.phase_rules import RulesError, load_rules
    from hccnode.store.db import Store

    try:
        rules = load_rules(args.rules or args.cfg.phases.rules_file or None)
    except RulesError as exc:
        raise UsageError(str(exc)) from None
    if args.check_rules:
        print(f"{rules.source}: ok, version {rules.version}, {len(rules.header_rules)} header rules, "
              f"{len(rules.image_rules)} image rules, sha256 {rules.sha256[:12]}")
        return 0
    if not args.study_uid:
        raise UsageError("a STUDY_UID is required (or --check-rules)")
    store = Store(args.cfg.data_dir)
    if not args.stored:
        try:
            classify_and_store(store, args.study_uid, rules)
        except PhaseError as exc:
            print(f"hccnode phases: {exc}")
            return 1
    rows = stored_phases(store, args.study_uid)
    if not rows:
        print(f"hccnode phases: no stored decisions for study {args.study_uid}")
        return 1
    if args.json:
        print(json.dumps({"study_uid": args.study_uid, "research_use": RESEARCH_USE, "series": rows},
                         indent=2, ensure_ascii=False))
        return 0
    print(f"Study {args.study_uid}  (rules {rows[0]['rules_version']}, sha256 {rows[0]['rules_sha256'][:12]})")
    for r in rows:
        extra = ""
        if r["phase"] and not r["kind"].startswith("ct_"):
            extra += f" phase={r['phase']}({r['phase_confidence']:.2f})"
        if r["kev"]:
            extra += f" {r['kev']:g} keV"
        if r["b_values"]:
            extra += " b=" + ",".join(f"{b:g}" for b in r["b_values"])
        print(f"\n{r['series_uid']}  #{r['series_number']}  {r['series_description'] or '(no description)'}")
        print(f"  {r['kind']}  confidence {r['confidence']:.2f}{extra}")
        for reason in r["reasons"]:
            print("   - " + format_reason(reason))
    print("\n" + RESEARCH_USE)
    return 0


def format_reason(r: dict) -> str:
    """One line per reason: source:rule -> votes (weight) {values}."""
    s = f"{r.get('source')}:{r.get('rule')}"
    if "votes" in r:
        s += f" -> {r['votes']} ({r['weight']:.2f})"
    if r.get("values"):
        s += " " + json.dumps(r["values"], ensure_ascii=False)
    if r.get("candidates"):
        s += " candidates " + ", ".join(f"{c['label']} {c['belief']:.2f}" for c in r["candidates"])
    if r.get("from_series"):
        s += f" [from series {r['from_series']}]"
    return s
