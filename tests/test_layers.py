"""Layering: store/ is the bottom layer (imports nothing above it) and owns the SQL.

Both checks read the source (AST), so they also see imports inside functions. The SQL still
written outside store/ is an explicit list that may only shrink: a module that gains SQL fails,
and so does an entry left here after its SQL moved into store/.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import hccnode
from hccnode.store import db

PACKAGE = Path(hccnode.__file__).parent
STORE_MODULES = sorted(p for p in (PACKAGE / "store").glob("*.py"))
ABOVE_STORE = ("pipeline", "report", "net", "status", "labs", "models", "imaging", "audit", "cli", "worker", "node")

# Modules outside store/ that still run SQL (to move into named store/ functions; see issue 19).
SQL_OUTSIDE_STORE = {
    "hccnode/net/commands.py",
    "hccnode/net/priors.py",
}
# Modules outside store/ that declare tables, which the store imports by name when it opens.
SCHEMAS_OUTSIDE_STORE: set[str] = set()

SQL_CALLS = {"execute", "executemany", "executescript", "query"}
SQL_STATEMENT = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|CREATE|ALTER|DROP|WITH|PRAGMA)\b")


def imported_modules(tree: ast.AST) -> set[str]:
    """Every module an `import` or `from ... import` names, at any depth (also `from hccnode import net`)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def runs_sql(tree: ast.AST) -> bool:
    """True when the module calls execute()/executemany()/executescript()/query() or holds an SQL statement."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_CALLS:
            return True
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_STATEMENT.match(node.value):
            return True
    return False


@pytest.mark.parametrize("path", STORE_MODULES, ids=lambda p: p.name)
def test_store_module_imports_nothing_above_the_store(path):
    importlib.import_module(f"hccnode.store.{path.stem}")
    above = {m for m in imported_modules(ast.parse(path.read_text(encoding="utf-8")))
             if any(m == f"hccnode.{top}" or m.startswith(f"hccnode.{top}.") for top in ABOVE_STORE)}
    assert not above, f"{path.name} imports {sorted(above)}"


def test_the_scan_sees_an_import_inside_a_function():
    tree = ast.parse("def f():\n    from hccnode.net import scu\n    from hccnode import report\n")
    assert {"hccnode.net", "hccnode.net.scu", "hccnode.report"} <= imported_modules(tree)


def test_store_opens_only_the_listed_schema_modules_outside_the_store():
    outside = {m for m in db.SCHEMA_MODULES if not m.startswith("hccnode.store.")}
    assert outside == SCHEMAS_OUTSIDE_STORE


def test_sql_outside_the_store_only_in_the_listed_modules():
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        if not rel.startswith("hccnode/store/") and runs_sql(ast.parse(path.read_text(encoding="utf-8"))):
            found.add(rel)
    assert found - SQL_OUTSIDE_STORE == set(), "new SQL outside store/: add a named function in store/ instead"
    assert SQL_OUTSIDE_STORE - found == set(), "these no longer run SQL: remove them from SQL_OUTSIDE_STORE"


def test_the_sql_scan_sees_calls_and_statements():
    assert runs_sql(ast.parse("conn.execute(q, (1,))"))
    assert runs_sql(ast.parse("Q = '''\n  SELECT id FROM jobs'''"))
    assert not runs_sql(ast.parse("'''Select the series.'''\nx = run(1)"))
