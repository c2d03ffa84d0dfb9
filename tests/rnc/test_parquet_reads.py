"""Parquet is read by path with `filesystem=`, never through a Python file object.

`pq.read_table(fs.open(...))` leaves pyarrow reading through a Python file wrapper; an
interpreter that exits soon after aborts about half the time ("terminate called without
an active exception", rc 134). Reading by path lets pyarrow open and close the file itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("berg_scale/rnc", "berg_scale/search", "tests/rnc", "tests/search")
READERS = {"read_table", "ParquetFile", "read_schema", "read_metadata"}


def _is_open_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "open"


def _reads_through_file_objects(tree: ast.AST) -> list[int]:
    """Lines where a Parquet reader gets an `x.open(...)` call or a name bound by `with x.open(...) as name`."""
    handles = {item.optional_vars.id for node in ast.walk(tree) if isinstance(node, ast.With)
               for item in node.items if _is_open_call(item.context_expr) and isinstance(item.optional_vars, ast.Name)}
    lines = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        first = node.args[0]
        if name in READERS and (_is_open_call(first) or (isinstance(first, ast.Name) and first.id in handles)):
            lines.append(node.lineno)
    return lines


def test_no_parquet_read_goes_through_a_python_file_object():
    found = {}
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            lines = _reads_through_file_objects(ast.parse(path.read_text()))
            if lines:
                found[str(path.relative_to(REPO))] = lines
    assert not found, f"read Parquet by path with filesystem= instead: {found}"


def test_the_check_finds_both_forms():
    source = ("h = pq.read_table(fs.open('a', 'rb'))\n"
              "with fs.open('b', 'rb') as handle:\n    pq.ParquetFile(handle)\n"
              "pq.read_table('c', filesystem=fs)\n")
    assert _reads_through_file_objects(ast.parse(source)) == [1, 3]
