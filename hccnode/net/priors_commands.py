"""`hccnode priors STUDY_UID`: fetch an MR follow-up's baseline from the PACS (thin shell over
`hccnode.net.priors.fetch_baseline`)."""

from __future__ import annotations

import json
import sys

from hccnode.net.priors import fetch_baseline
from hccnode.store.db import Store


def register(sub) -> None:
    p = sub.add_parser(
        "priors", help="query the PACS for an MR follow-up's baseline study and retrieve it",
        description="C-FIND the PACS ([priors] pacs, else the first [forward] destination) for the same "
                    "patient's MR studies, choose the baseline by paper 003's interval (56-70 days before the "
                    "follow-up, widened by [priors] tolerance_days), and retrieve it by C-MOVE to this node's AE "
                    "title (`hccnode serve` must be running and the PACS must know the node) or C-GET "
                    "([priors] retrieve). Works whether or not [priors] enabled is set. Exit 0 when the "
                    "baseline is in the node's store afterwards, 1 otherwise (none in the window, PACS "
                    "unreachable or refusing).")
    p.add_argument("study_uid", metavar="STUDY_UID", help="the follow-up study, already in the node's store")
    p.add_argument("--query-only", action="store_true", help="query and choose, do not retrieve")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    store = Store.of(args.cfg)
    try:
        result = fetch_baseline(args.cfg, store, args.study_uid, even_if_disabled=True,
                                retrieve=not args.query_only)
    finally:
        store.close()
    if args.json:
        print(json.dumps(result.as_dict(), indent=1))
    else:
        print(f"follow-up {result.followup_uid}" + (f" ({result.followup_date})" if result.followup_date else ""))
        if result.pacs:
            print(f"PACS {result.pacs}; window {result.window}")
        for v in result.verdicts:
            n = "?" if v["instances"] is None else v["instances"]
            print(f"  {v['study_uid']}  {v['study_date'] or '-'}  {','.join(v['modalities']) or '-'}  "
                  f"{n} instances  {'+' if v['eligible'] else '-'} {v['reason']}")
        print(f"{result.state}: {result.message}", file=sys.stdout if result.ok or result.state == "found" else sys.stderr)
    return 0 if result.ok or result.state == "found" else 1
