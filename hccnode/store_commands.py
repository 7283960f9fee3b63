"""CLI: `hccnode store migrate --to postgresql://...` (library: hccnode.store.migrate.migrate)."""

from __future__ import annotations

from hccnode.store import engine
from hccnode.store.migrate import migrate


def register(sub) -> None:
    p = sub.add_parser("store", help="the node's database: migrate it to PostgreSQL",
                       description="Maintenance of the node's database (DATA_DIR/hccnode.db or [store] url).")
    ssub = p.add_subparsers(dest="store_command", metavar="STORE_COMMAND", required=True)
    q = ssub.add_parser("migrate", help="copy the SQLite store into an empty PostgreSQL database (node stopped)",
                        description="Copy every table of DATA_DIR/hccnode.db into an empty PostgreSQL database, in "
                                    "one transaction, while no node serves from the data directory. The audit chain "
                                    "is verified before and after and the rows of every table are counted on both "
                                    "sides. Then set [store] url to the target on every host.")
    q.add_argument("--to", required=True, metavar="postgresql://user@host:port/database",
                   help="the target database (password in ~/.pgpass or PGPASSFILE, never in the URL)")
    q.set_defaults(func=cmd_migrate)


def cmd_migrate(args) -> int:
    report = migrate(args.cfg.data_dir, args.to)
    print(f"{'table':<20} {'sqlite':>10} {'postgresql':>10}")
    for table, source, target in report.counts:
        print(f"{table:<20} {source:>10} {target:>10}")
    print(f"before: {report.source_audit}")
    print(f"after:  {report.target_audit}")
    print(f"migrated to {engine.safe_url(args.to)}; set [store] url = \"{args.to}\" on every host")
    return 0
