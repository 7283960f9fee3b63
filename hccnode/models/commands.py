"""CLI: hccnode models list | show | check | evaluate | validate | recalibrate."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from hccnode import RESEARCH_USE


def register(sub) -> None:
    p = sub.add_parser("models", help="published response models (model cards)",
                       description="Published response models as model cards: list, show, self-check, "
                                   "evaluate, validate on site outcomes, recalibrate. " + RESEARCH_USE)
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")

    def add(name: str, fn, help_: str, description: str) -> argparse.ArgumentParser:
        q = msub.add_parser(name, help=help_, description=description)
        q.add_argument("--cards", action="append", metavar="DIR",
                       help="card directory (repeatable; default: plugins/models and DATA_DIR/models/site)")
        q.set_defaults(func=fn)
        return q

    q = add("list", cmd_list, "list the model cards", "One line per card: id@version, form, paper, outcome.")
    q.add_argument("--inputs", action="store_true", help="also list each card's inputs with units and sources")
    q = add("show", cmd_show, "show one card", "Everything a card says: source, cohort, inputs, model, "
            "performance, what is unpublished or inconsistent, notes.")
    q.add_argument("card", help="card id (its published version) or id@version")
    q.add_argument("--json", action="store_true", help="print the card as JSON")
    q = add("check", cmd_check, "self-check: cards reproduce their papers' numbers",
            "One line per card naming its paper (first author, year) and the result; exit 1 if any check fails.")
    q.add_argument("card", nargs="*", help="cards to check (default: all)")
    q.add_argument("-v", "--verbose", action="store_true", help="one line per check")
    q = add("evaluate", cmd_evaluate, "evaluate cards on given inputs",
            "Evaluate cards on inputs from a JSON file ({name: {value, unit, source}}) and/or a clinical-input "
            "CSV for one study; prints the engine's results as JSON.")
    q.add_argument("card", nargs="*", help="cards (default: every published card)")
    q.add_argument("--inputs", metavar="FILE.json", help="inputs: {name: {\"value\": v, \"unit\": u, \"source\": s}}")
    q.add_argument("--clinical", metavar="FILE.csv", help="clinical-input CSV (see hccnode.models.clinical)")
    q.add_argument("--study", metavar="UID", help="Study Instance UID to take from the clinical CSV")
    q = add("validate", cmd_validate, "validate model outputs against site outcomes",
            "Join model outputs (model_results table, or --predictions CSV) with a site's outcomes and write "
            "report.html, report.json and PNG plots to --out. Column definitions: hccnode.models.validate.")
    q.add_argument("--outcomes", required=True, metavar="FILE.csv",
                   help="site outcomes: study_uid plus response and/or PFS/OS times and events")
    q.add_argument("--predictions", metavar="FILE.csv", help="predictions CSV instead of the model_results table")
    q.add_argument("--out", required=True, metavar="DIR", help="folder for report.html, report.json and the plots")
    q.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples for the AUC CI (default 1000)")
    q.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    q = add("recalibrate", cmd_recalibrate, "fit a site version of a card",
            "Fit logistic recalibration (intercept and slope) or a Youden cutoff on a site's outcomes and write "
            "a new card version; the original card is not changed.")
    q.add_argument("card", help="published card id or id@version")
    q.add_argument("--outcomes", required=True, metavar="FILE.csv",
                   help="site outcomes with a binary response (see hccnode models validate)")
    q.add_argument("--predictions", metavar="FILE.csv", help="predictions CSV instead of the model_results table")
    q.add_argument("--method", choices=("logistic", "cutoff"), default="logistic",
                   help="logistic: new intercept and slope; cutoff: the Youden-optimal cutoff (default logistic)")
    q.add_argument("--out-dir", metavar="DIR", help="where to write the new card (default: DATA_DIR/models/site)")
    q.add_argument("--date", metavar="YYYY-MM-DD", help="date recorded in the card (default: today, UTC)")


def _cards(args):
    from hccnode.cli import UsageError
    from hccnode.models import card

    dirs = [Path(d) for d in args.cards] if args.cards else card.default_dirs(args.cfg.data_dir)
    for d in dirs:
        if args.cards and not d.is_dir():
            raise UsageError(f"--cards {d}: not a directory")
    cards = card.load_cards(dirs)
    if not cards:
        raise UsageError(f"no model cards found in {', '.join(map(str, dirs))}")
    return cards


def _pick(cards, refs):
    from hccnode.cli import UsageError
    from hccnode.models.card import find_card

    try:
        return [find_card(cards, r) for r in refs]
    except KeyError as exc:
        raise UsageError(exc.args[0]) from None


def cmd_list(args) -> int:
    cards = _cards(args)
    for c in sorted(cards.values(), key=lambda c: (c.id, c.version)):
        print(f"{c.key:34} {c.form:8} {c.status:17} outcome: {c.outcome['name']}\n    {c.citation}")
        if args.inputs:
            for i in c.inputs.values():
                print(f"    {i.name:26} {i.unit:14} {i.kind:10} from {i.source:8} {i.label}")
    return 0


def cmd_show(args) -> int:
    (c,) = _pick(_cards(args), [args.card])
    if args.json:
        print(json.dumps(c.raw, indent=2))
        return 0
    print(f"{c.key}  ({c.status}{', derived from ' + c.derived_from if c.derived_from else ''})")
    print(c.title)
    print(f"paper: {c.citation}\n       {c.where}")
    coh = c.cohort
    print(f"cohort: n = {coh['n']} ({coh['unit_of_analysis']}), {coh['country']}, {coh.get('centres', '')}, "
          f"{coh.get('period', '')}, {coh['design']}\n        therapy: {coh['therapy']}\n        modality: {coh['modality']}")
    if c.quotes:
        print("cohort as the paper reports it (each with its quote on the card):")
        for q in c.quotes:
            if q.fact != "model":
                print(f"  {q.fact.replace('_', ' ')}: {q.value} [{q.where}]")
    o = c.outcome
    print(f"outcome: {o['name']} — {o['definition']}\n         direction: {o['direction']}")
    print("inputs:")
    for i in c.inputs.values():
        rng = f", {i.min:g} to {i.max:g}" if i.min is not None else ""
        print(f"  {i.name} [{i.unit}{rng}] from {i.source}: {i.definition}")
    if c.logistic:
        m = c.logistic
        icpt = ("UNPUBLISHED" if m.intercept is None else f"{m.intercept:g}" if m.score_intercept is not None
                else f"{m.intercept:g} as printed, LEFT OUT of every reported score: {m.intercept_note}")
        print(f"model: logistic, intercept {icpt}, "
              f"probability {m.probability}{' — ' + m.probability_note if m.probability_note else ''}")
        for t in m.terms:
            ind = f" (indicator: {t.input} {t.indicator_op} {t.indicator_threshold:g})" if t.indicator_op else ""
            src = " (= ln OR, OR printed)" if t.from_odds_ratio else ""
            print(f"  beta {t.beta:+.4f} x {t.input}{ind}{src}")
        if m.score_cutoff:
            s = m.score_cutoff
            print(f"  score cutoff: {s.on} {s.high_when} {s.threshold:g} -> {s.high_group} / {s.low_group}")
    if c.cutoff:
        k = c.cutoff
        print(f"model: cutoff {k.input} {k.high_when} {k.threshold:g} -> {k.high_group} ({k.high_means}) / "
              f"{k.low_group} ({k.low_means})")
    if c.performance:
        print("reported performance:")
        for p in c.performance:
            ci = f" ({p['ci'][0]:g}-{p['ci'][1]:g})" if "ci" in p else ""
            print(f"  {p['metric']} {p['value']:g}{ci} [{p['where']}]{' ' + p['cohort'] if 'cohort' in p else ''}"
                  f"{' — ' + p['note'] if 'note' in p else ''}")
    if c.recalibration:
        print("recalibration: " + json.dumps(c.recalibration, sort_keys=True))
    for title, items in (("unpublished", c.unpublished), ("inconsistent", c.inconsistencies)):
        if items:
            print(f"{title}:")
            for x in items:
                print(f"  - {x}")
    if c.notes:
        print("notes:\n" + c.notes.rstrip())
    print(RESEARCH_USE)
    return 0


def cmd_check(args) -> int:
    from hccnode.models import selfcheck

    cards = _cards(args)
    chosen = _pick(cards, args.card) if args.card else sorted(cards.values(), key=lambda c: (c.id, c.version))
    failed = 0
    for c in chosen:
        results = selfcheck.run(c)
        failed += any(not r.ok for r in results) or (not results and c.status == "published")
        print(selfcheck.summary_line(c, results))
        if args.verbose:
            for r in results:
                print(f"    {'ok  ' if r.ok else 'FAIL'} {r.kind} [{r.where}]: {r.message}")
    return 1 if failed else 0


def cmd_evaluate(args) -> int:
    from hccnode.cli import UsageError
    from hccnode.models import clinical, engine

    cards = _cards(args)
    chosen = _pick(cards, args.card) if args.card else [c for c in cards.values() if c.status == "published"]
    inputs: dict = {}
    if args.inputs:
        try:
            inputs.update(json.loads(Path(args.inputs).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"--inputs {args.inputs}: {exc}") from None
        if not isinstance(inputs, dict) or not all(isinstance(v, dict) for v in inputs.values()):
            raise UsageError(f"--inputs {args.inputs}: expected {{name: {{value, unit, source}}}}")
    if args.clinical:
        if not args.study:
            raise UsageError("--clinical needs --study UID")
        try:
            per_study = clinical.load(args.clinical, cards.values())
        except clinical.ClinicalInputError as exc:
            raise UsageError(str(exc)) from None
        inputs.update(per_study.get(args.study, {}))
    results = [engine.evaluate(c, inputs) for c in chosen]
    json.dump(results, sys.stdout, indent=2, default=lambda x: x.__dict__)
    print()
    return 0


def _load_data(args, cards):
    from hccnode.cli import UsageError
    from hccnode.models import validate
    from hccnode.store import model_results as mstore
    from hccnode.store.db import Store

    try:
        outcomes = validate.parse_outcomes(Path(args.outcomes).read_text(encoding="utf-8-sig"), Path(args.outcomes).name)
        if args.predictions:
            preds = validate.parse_predictions(Path(args.predictions).read_text(encoding="utf-8-sig"), Path(args.predictions).name)
            source = f"predictions file {Path(args.predictions).name}"
        else:
            preds = validate.predictions_from_store(mstore.latest_results(Store(args.cfg.data_dir)), cards)
            source = f"model_results table in {args.cfg.data_dir}"
    except OSError as exc:
        raise UsageError(f"{exc.filename}: {exc.strerror}") from None
    except validate.ValidationInputError as exc:
        raise UsageError(str(exc)) from None
    return outcomes, preds, source


def cmd_validate(args) -> int:
    from hccnode import log
    from hccnode.cli import UsageError
    from hccnode.models import validate

    if args.bootstrap < 100:
        raise UsageError("--bootstrap must be at least 100")
    cards = _cards(args)
    outcomes, preds, source = _load_data(args, cards)
    if not preds:
        raise UsageError(f"no model outputs to validate ({source})")
    report = validate.run(cards, preds, outcomes, args.out, args.bootstrap, args.seed,
                          progress=sys.stderr.isatty(), source=source)
    log.event("models.validated", cards=len(report["cards"]), outcomes=len(outcomes), out=args.out)
    for c in report["cards"]:
        b = c.get("binary", {})
        auc = f" AUC {b['auc']:.3f} ({b['auc_ci'][0]:.3f}-{b['auc_ci'][1]:.3f})" if "auc" in b else ""
        print(f"{c['card_id']}@{c['card_version']}: joined {c['n_joined']}/{c['n_predictions']}{auc}")
    for s in report["skipped"]:
        print(f"skipped {s['card']}: {s['reason']}")
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def cmd_recalibrate(args) -> int:
    from hccnode import log
    from hccnode.cli import UsageError
    from hccnode.models import recalibrate

    cards = _cards(args)
    (card,) = _pick(cards, [args.card])
    outcomes, preds, source = _load_data(args, cards)
    try:
        date = dt.date.fromisoformat(args.date) if args.date else dt.datetime.now(dt.timezone.utc).date()
    except ValueError:
        raise UsageError(f"--date {args.date!r} is not YYYY-MM-DD") from None
    try:
        y, score = recalibrate.binary_data(card, preds, outcomes)
        new = recalibrate.recalibrated_card(card, args.method, y, score, args.outcomes,
                                            recalibrate.sha256_file(args.outcomes), date)
    except recalibrate.RecalibrationError as exc:
        print(f"hccnode models recalibrate: {exc}", file=sys.stderr)
        return 1
    new["recalibration"]["predictions_source"] = source
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.cfg.data_dir) / "models" / "site"
    path = recalibrate.write(new, out_dir)
    log.event("models.recalibrated", card=card.key, new_version=new["version"], n=len(y), method=args.method)
    print(f"{card.key} -> {new['id']}@{new['version']} written to {path}")
    print(json.dumps(new["recalibration"], indent=2, sort_keys=True))
    return 0
