"""`query`: read-only SQL (DuckDB, in-process) over a run directory's Parquet store.

Each store table with at least one file becomes a view over an explicit file list, so the
`.tmp-*` files of writes in progress are never read. The connection is locked down before the
user's SQL runs: only the store files may be touched (`allowed_paths`), external access is off,
the configuration is locked, and only reading statements (SELECT and its kin, EXPLAIN of a
SELECT, a few SHOW-style PRAGMAs) are accepted. The statement check matters: `allowed_paths`
alone would let `COPY ... TO` overwrite a store file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from fer_core.errors import FerError
from orchestrator.run.store import TABLES, Store
from orchestrator.texttable import text_table

FORMATS = ("table", "csv", "json")
READ_PRAGMAS = {
    "show_tables",
    "show_tables_expanded",
    "table_info",
    "show",
    "version",
    "platform",
    "database_list",
    "functions",
}
_EXPLAIN = re.compile(r"^\s*explain(\s+analy[sz]e)?\s+", re.IGNORECASE)
_PRAGMA = re.compile(r"^\s*pragma\s+(\w+)", re.IGNORECASE)
_MISSING = re.compile(r"Table with name (\w+) does not exist", re.IGNORECASE)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _connect(store: Store) -> tuple[duckdb.DuckDBPyConnection, list[str]]:
    """An in-memory connection with one view per non-empty table; returns it and the empties."""
    con = duckdb.connect(":memory:")
    missing, allowed = [], []
    for table in TABLES:
        files = [str(p.resolve()) for p in store.files(table)]
        if not files:
            missing.append(table)
            continue
        allowed.extend(files)
        listing = ", ".join(_quote(f) for f in files)
        con.execute(
            f"CREATE VIEW {table} AS SELECT * FROM read_parquet([{listing}], union_by_name=true)"
        )
    if allowed:
        con.execute(f"SET allowed_paths=[{', '.join(_quote(f) for f in allowed)}]")
    con.execute("SET enable_external_access=false")
    con.execute("SET lock_configuration=true")
    return con, missing


def _check_read_only(statement: duckdb.Statement) -> None:
    """Refuse anything that could write or reconfigure (COPY, ATTACH, SET, CREATE, ...)."""
    kind = statement.type
    text = statement.query.strip()
    if kind == duckdb.StatementType.SELECT:
        return
    if kind == duckdb.StatementType.EXPLAIN:
        inner = duckdb.extract_statements(_EXPLAIN.sub("", text, count=1))
        if len(inner) == 1 and inner[0].type == duckdb.StatementType.SELECT:
            return
    if kind == duckdb.StatementType.PRAGMA:
        match = _PRAGMA.match(text)
        if match and match.group(1).lower() in READ_PRAGMAS:
            return
    first = text.split(None, 1)[0].upper() if text else "?"
    raise FerError(
        f"query: {first} statements are refused; queries are read-only "
        "(SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN)"
    )


def _statements(sql: str) -> list[duckdb.Statement]:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise FerError(f"query: {_one_line(exc)}") from exc
    if not statements:
        raise FerError("query: no SQL statement given")
    return statements


def _one_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _missing_error(sql: str, missing: list[str], run_dir: Path) -> FerError | None:
    try:
        referenced = {name.lower() for name in duckdb.get_table_names(sql)}
    except duckdb.Error:
        return None
    for table in missing:
        if table in referenced:
            return FerError(f"query: table {table} has no rows yet in {run_dir}")
    return None


def run_query(run_dir: str | Path, sql: str, fmt: str = "table") -> str:
    """Run read-only `sql` over `run_dir`'s store; the last statement's rows as `fmt` text.

    Tables: runs, predictions, epochs, prepare, trials (a table no unit has written yet
    does not exist; referring to it is an error that says so).
    """
    if fmt not in FORMATS:
        raise FerError(f"query: format {fmt!r} is unknown; use one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FerError(f"run dir {run_dir} does not exist; pass --run-dir of a launched grid")
    statements = _statements(sql)
    for statement in statements:
        _check_read_only(statement)
    con, missing = _connect(Store(run_dir))
    try:
        cursor = None
        for statement in statements:
            try:
                cursor = con.execute(statement.query)
            except duckdb.Error as exc:
                found = _MISSING.search(str(exc))
                if found and found.group(1).lower() in missing:
                    raise FerError(
                        f"query: table {found.group(1).lower()} has no rows yet in {run_dir}"
                    ) from exc
                raise _missing_error(statement.query, missing, run_dir) or FerError(
                    f"query: {_one_line(exc)}"
                ) from exc
        assert cursor is not None
        columns = [d[0] for d in cursor.description or []]
        rows = cursor.fetchall()
    finally:
        con.close()
    return render(columns, rows, fmt)


def _plain(value: Any) -> Any:
    """A JSON-safe value: NaN/inf become null, unknown types their text."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


def render(columns: list[str], rows: list[tuple], fmt: str) -> str:
    """Rows as an aligned text table (with a row count), CSV with a header, or JSON records."""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
        return buffer.getvalue().rstrip("\n")
    if fmt == "json":
        records = [{c: _plain(v) for c, v in zip(columns, row, strict=True)} for row in rows]
        return json.dumps(records, indent=1)
    count = f"({len(rows)} row{'s' if len(rows) != 1 else ''})"
    return text_table(columns, rows) + "\n" + count
