"""`query`: read-only SQL (DuckDB, in-process) over a run directory's Parquet store.

Views, each over an explicit file list (so the `.tmp-*` files of writes in progress are never
read):
- `runs`, `predictions`, `epochs`, `prepare`: the rows of the units of the run dir's current
  DAG (`dag.json`, the last launch), the units `report` reads too. A grid edited and
  re-launched into the same run dir leaves the old units' files in the store: they stay
  reachable as `runs_all`, `predictions_all`, `epochs_all`, `prepare_all`, with a `current`
  column (true for the current DAG's units), and are never mixed in silently.
- `predictions` and `epochs` carry their unit's dataset, backbone, strategy, fold, seed,
  stage and selection (from `runs`), so no question needs a join on `unit_id`.
- `trials` (written by `tune`). Columns ending in `_at` (epoch seconds in the files) are
  TIMESTAMPs (UTC).

The connection is locked down before the user's SQL runs: only the store files may be
touched (`allowed_paths`), external access is off, the configuration is locked, and only
reading statements are accepted (SELECT and its kin: WITH, FROM, PIVOT, UNPIVOT, DESCRIBE,
SUMMARIZE, SHOW; EXPLAIN of those; a few SHOW-style PRAGMAs). The statement check matters:
`allowed_paths` alone would let `COPY ... TO` overwrite a store file.
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
from orchestrator.run.rundir import RunDir
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
# A file named in the SQL: DuckDB says "file system operations are disabled" when it tried to
# read it, and, for a name whose extension it does not know, "Table with name /etc/passwd
# does not exist! Did you mean "pg_class"?", which hides that the refusal is on purpose.
_DENIED_FILE = re.compile(r'Cannot access file "([^"]*)"')
_MISSING_PATH = re.compile(r"Table with name (\S*[/\\.]\S*) does not exist", re.IGNORECASE)
UNIT_TABLES = ("runs", "predictions", "epochs", "prepare")  # one file per unit: current or not
WITH_UNIT = ("predictions", "epochs")  # carry their unit's metadata from runs
UNIT_COLUMNS = (
    "dataset", "backbone", "strategy", "fold", "seed", "stage", "selection",
    "unit_label", "variant",
)  # fmt: skip
# A PIVOT without an IN list parses as several statements (MULTI) whose type says nothing:
# it is accepted when it starts like a query and names no writing or configuring keyword.
_QUERY_START = {"select", "with", "from", "pivot", "unpivot", "values", "table", "explain", "("}
_WRITE_WORDS = {
    "insert", "update", "delete", "copy", "create", "attach", "detach", "drop", "alter",
    "set", "reset", "install", "load", "export", "import", "call", "pragma", "checkpoint",
    "vacuum", "merge", "truncate", "use",
}  # fmt: skip
_LITERALS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/", re.DOTALL)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _current_ids(run_dir: Path) -> set[str] | None:
    """Unit ids of the run dir's current DAG; None without a dag.json (then all rows count)."""
    path = RunDir(run_dir).dag_path
    if not path.is_file():
        return None
    return {unit["id"] for unit in json.loads(path.read_text())}


def _timestamps(con: duckdb.DuckDBPyConnection, source: str) -> str:
    """`* REPLACE (...)` turning numeric `*_at` columns (epoch seconds) into TIMESTAMPs."""
    columns = con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
    replaced = [
        f"CASE WHEN isfinite({name}) THEN make_timestamp(CAST({name} * 1e6 AS BIGINT)) END "
        f"AS {name}"
        for name, kind, *_ in columns
        if name.endswith("_at") and kind in ("DOUBLE", "FLOAT", "BIGINT", "INTEGER")
    ]
    return f"* REPLACE ({', '.join(replaced)})" if replaced else "*"


def _connect(store: Store, current: set[str] | None) -> tuple[duckdb.DuckDBPyConnection, list[str]]:
    """An in-memory connection with the views of the module docstring; returns it and the
    tables that have no rows at all yet."""
    con = duckdb.connect(":memory:")
    missing: list[str] = []
    allowed: list[str] = []
    sources: dict[str, tuple[str, str]] = {}  # table -> (source of all rows, current filter)
    for table in TABLES:
        files = [p.resolve() for p in store.files(table)]
        if not files:
            missing.append(table)
            continue
        allowed.extend(str(f) for f in files)
        listing = ", ".join(_quote(str(f)) for f in files)
        source = f"read_parquet([{listing}], union_by_name=true, filename=true)"
        now = [str(f) for f in files if current is None or f.stem in current]
        is_current = f"filename IN ({', '.join(_quote(f) for f in now)})" if now else "false"
        sources[table] = (f"(SELECT {_timestamps(con, source)} FROM {source})", is_current)
    for table, (source, is_current) in sources.items():
        if table not in UNIT_TABLES:
            con.execute(f"CREATE VIEW {table} AS SELECT * EXCLUDE (filename) FROM {source}")
            continue
        rows = f"SELECT * EXCLUDE (filename), {is_current} AS current FROM {source}"
        if table in WITH_UNIT and "runs" in sources:
            names = {c[0] for c in con.execute(f"DESCRIBE {rows}").fetchall()}
            runs = {c[0] for c in con.execute(f"DESCRIBE FROM {sources['runs'][0]}").fetchall()}
            meta = ", ".join(c for c in UNIT_COLUMNS if c in runs and c not in names)
            rows = (
                f"SELECT t.*, {meta} FROM ({rows}) t JOIN (SELECT unit_id, {meta} "
                f"FROM {sources['runs'][0]}) USING (unit_id)"
            )
        con.execute(f"CREATE VIEW {table}_all AS {rows}")
        con.execute(f"CREATE VIEW {table} AS SELECT * EXCLUDE (current) FROM {table}_all "
                    "WHERE current")  # fmt: skip
    if allowed:
        con.execute(f"SET allowed_paths=[{', '.join(_quote(f) for f in allowed)}]")
    con.execute("SET enable_external_access=false")
    con.execute("SET lock_configuration=true")
    return con, missing


def _words(text: str) -> list[str]:
    """The SQL's words outside string literals, quoted identifiers and comments."""
    return re.findall(r"[a-z_]+|\(", _LITERALS.sub(" ", text.lower()))


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
    words = _words(text)
    if kind == duckdb.StatementType.MULTI and words and words[0] in _QUERY_START:
        writes = [w for w in words if w in _WRITE_WORDS]
        if not writes:
            return
        first = writes[0].upper()
    else:
        first = words[0].upper() if words else "?"
    raise FerError(
        f"query: {first} statements are refused; queries are read-only "
        "(SELECT, WITH, FROM, PIVOT, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN)"
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
    """DuckDB's whole message on one line (its hints too: `Did you mean "runs"?`), without
    the `LINE 1: ...` echo of the SQL and its caret line."""
    lines = [line.strip() for line in str(exc).strip().splitlines()]
    kept = [line for line in lines if line and not line.startswith("LINE ") and set(line) != {"^"}]
    return " ".join(kept) or type(exc).__name__


def _missing_error(sql: str, missing: list[str], run_dir: Path) -> FerError | None:
    try:
        referenced = {name.lower() for name in duckdb.get_table_names(sql)}
    except duckdb.Error:
        return None
    for table in missing:
        if table in referenced:
            return FerError(f"query: table {table} has no rows yet in {run_dir}")
    return None


def _file_error(exc: duckdb.Error) -> FerError | None:
    """A refused read of a file named in the SQL, said as such."""
    found = _DENIED_FILE.search(str(exc)) or _MISSING_PATH.search(str(exc))
    if found is None:
        return None
    return FerError(
        f"query: file access is refused ({found.group(1)!r}: file system operations are "
        f"disabled); a query reads only the run's tables: {', '.join(TABLES)}"
    )


def run_query(run_dir: str | Path, sql: str, fmt: str = "table") -> str:
    """Run read-only `sql` over `run_dir`'s store; the last statement's rows as `fmt` text.

    Tables: see the module docstring (a table no unit has written yet does not exist;
    referring to it is an error that says so).
    """
    if fmt not in FORMATS:
        raise FerError(f"query: format {fmt!r} is unknown; use one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FerError(f"run dir {run_dir} does not exist; pass --run-dir of a launched grid")
    statements = _statements(sql)
    for statement in statements:
        _check_read_only(statement)
    con, missing = _connect(Store(run_dir), _current_ids(run_dir))
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
                raise (
                    _file_error(exc)
                    or _missing_error(statement.query, missing, run_dir)
                    or FerError(f"query: {_one_line(exc)}")
                ) from exc
        assert cursor is not None
        columns = [d[0] for d in cursor.description or []]
        rows = cursor.fetchall()
    finally:
        con.close()
    return render(columns, rows, fmt)


TABLE_HELP = {
    "runs": "one row per finished training of the current DAG",
    "predictions": "one row per test image of the current DAG's trainings",
    "epochs": "one row per epoch of the current DAG's trainings",
    "prepare": "one row per prepared dataset of the current DAG",
    "trials": "one row per tune trial",
}


def describe_tables(run_dir: str | Path, width: int = 100) -> str:
    """`query --tables`: every table with its row count and its columns and types."""
    import textwrap

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FerError(f"run dir {run_dir} does not exist; pass --run-dir of a launched grid")
    con, missing = _connect(Store(run_dir), _current_ids(run_dir))
    try:
        lines = []
        views = [
            r[0]
            for r in con.execute(
                "SELECT view_name FROM duckdb_views() WHERE NOT internal"
            ).fetchall()
        ]
        order = {name: i for i, name in enumerate(t + s for t in TABLES for s in ("", "_all"))}
        for view in sorted(views, key=lambda v: order.get(v, len(order))):
            (count,) = con.execute(f"SELECT count(*) FROM {view}").fetchone() or (0,)
            if view not in TABLE_HELP:  # a *_all view: the same columns and `current`
                lines.append(
                    f"{view} ({count} row{'s' if count != 1 else ''}): as {view[:-4]}, with "
                    "the rows of earlier DAGs too; column `current` says which"
                )
                continue
            columns = con.execute(f"DESCRIBE {view}").fetchall()
            listing = ", ".join(f"{name} {kind}" for name, kind, *_ in columns)
            lines.append(f"{view} ({count} row{'s' if count != 1 else ''}): {TABLE_HELP[view]}")
            lines.extend(textwrap.wrap(listing, width, initial_indent="  ", subsequent_indent="  "))
        lines.extend(f"{table}: no rows yet" for table in missing)
    finally:
        con.close()
    return "\n".join(lines)


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
