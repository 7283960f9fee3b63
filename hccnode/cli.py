"""`hccnode` command line: one sub-command per library entry point.

Exit codes: 0 ok, 1 runtime error, 2 usage error (bad arguments or configuration).
Each feature package adds its commands through a `register(subparsers)` function in its
`commands.py`, listed in COMMAND_MODULES; the function sets `func(args) -> int` on its parser.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from hccnode import __version__, config
from hccnode import log

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

COMMAND_MODULES = [
    "hccnode.net.commands",
    "hccnode.net.priors_commands",
    "hccnode.labs.commands",
    "hccnode.models.commands",
    "hccnode.phantom.commands",
    "hccnode.audit.commands",
    "hccnode.imaging.commands",
    "hccnode.report.commands",
    "hccnode.pipeline.commands",
    "hccnode.viewer.commands",
    "hccnode.store_commands",
]


class UsageError(Exception):
    """Bad arguments discovered after parsing; exits 2 with the message."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hccnode",
        description="DICOM node for liver cancer imaging research (research use only, not a diagnosis).",
    )
    parser.add_argument("--version", action="version", version=f"hccnode {__version__}")
    parser.add_argument("-c", "--config", help="configuration file (default: ./hccnode.toml if present, else built-in defaults)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        args.cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"hccnode: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    log.setup(args.cfg.log.level, args.cfg.log.file)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"hccnode {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_ERROR
    except Exception as exc:  # a clean message, not a traceback that could quote a dataset
        log.event("command.failed", level=logging.DEBUG, command=args.command, exc_info=True)  # the type, at DEBUG
        print(f"hccnode {args.command}: error: {exc or 'internal error'}", file=sys.stderr)
        return EXIT_ERROR
