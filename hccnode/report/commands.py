"""CLI: hccnode report template [DIR] - check an SR template and list what it puts in the SR."""

from __future__ import annotations

from hccnode import RESEARCH_USE


def register(sub) -> None:
    p = sub.add_parser("report", help="DICOM outputs (SR, ECV map, SEG, summary)",
                       description="The node's DICOM outputs. " + RESEARCH_USE)
    rsub = p.add_subparsers(dest="report_command", metavar="ACTION")
    q = rsub.add_parser("template", help="check an SR template and list its entries",
                        description="Load and check the SR template (measurements.toml, private_codes.toml) in DIR "
                                    "(default: the shipped sr_templates/) and list each measurement with its code "
                                    "and unit; exit 1 naming the bad entry if the template is broken.")
    q.add_argument("dir", nargs="?", help="template folder (default: the shipped sr_templates/)")
    q.set_defaults(func=cmd_template)


def _code(c) -> str:
    return f"({c.value}, {c.scheme_designator}, \"{c.meaning}\")"


def cmd_template(args) -> int:
    from hccnode.report.templates import TemplateError, default_dir, load_template  # highdicom: only when used

    try:
        t = load_template(args.dir)
    except TemplateError as exc:
        print(f"hccnode report template: {exc}")
        return 1
    print(f"template version {t.version} ({args.dir or default_dir()}), digest {t.digest[:12]}")
    for formula, e in t.measurements.items():
        stat = f" {_code(e.derivation)}" if e.derivation else ""
        print(f"  {formula}: {_code(e.name)}{stat} in {e.unit.value}")
    for role, r in t.roles.items():
        print(f"  role {role}: {r.label}, type {_code(r.type)}, site {_code(r.site)}")
    print(f"  {len(t.private_codes)} private codes (99HCCNODE)")
    return 0
