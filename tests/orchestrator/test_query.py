"""`run_query`: DuckDB views over the store, output formats, errors, read-only guarantees."""

from __future__ import annotations

import json

import pytest

from fer_core.errors import FerError
from orchestrator.query import run_query
from tests.orchestrator.report.fake_results import CLASSES, IMAGES_PER_FOLD, make_run

N_RUNS = 2 * 3 * 2  # datasets x folds x (ce, ce>focal stage 2)
N_PREDICTIONS = 3 * 2 * (IMAGES_PER_FOLD["ckplus"] + IMAGES_PER_FOLD["oulu"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("query") / "run")


def _count(run, table: str) -> int:
    return json.loads(run_query(run.path, f"SELECT count(*) AS n FROM {table}", fmt="json"))[0]["n"]


def test_row_counts_of_runs_predictions_and_epochs(run):
    assert _count(run, "runs") == N_RUNS
    assert _count(run, "predictions") == N_PREDICTIONS
    assert _count(run, "epochs") == N_RUNS * 3
    assert _count(run, "prepare") == 2


def test_table_format_is_aligned_with_a_row_count(run):
    text = run_query(run.path, "SELECT dataset, count(*) AS n FROM runs GROUP BY 1 ORDER BY 1")
    lines = text.splitlines()
    assert lines[0].split() == ["dataset", "n"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["ckplus", "6"] and lines[3].split() == ["oulu", "6"]
    assert lines[-1] == "(2 rows)"
    assert len(lines[2]) == len(lines[3])  # numbers right-aligned in one column


def test_csv_and_json_formats(run):
    sql = (
        "SELECT strategy, count(*) AS n, any_value(alpha) FILTER (alpha IS NULL) AS a "
        "FROM runs WHERE dataset = 'ckplus' GROUP BY 1 ORDER BY 1"
    )
    csv_text = run_query(run.path, sql, fmt="csv")
    assert csv_text.splitlines() == ["strategy,n,a", "ce,3,", "ce>focal,3,"]
    records = json.loads(run_query(run.path, sql, fmt="json"))
    assert records == [
        {"strategy": "ce", "n": 3, "a": None},
        {"strategy": "ce>focal", "n": 3, "a": None},
    ]


def test_json_renders_lists_and_nan(run):
    sql = "SELECT probabilities, 'nan'::DOUBLE AS x FROM predictions LIMIT 1"
    record = json.loads(run_query(run.path, sql, fmt="json"))[0]
    assert isinstance(record["probabilities"], list) and record["x"] is None


def test_per_class_recall_reads_by_class_name(run):
    """The list columns `classes` and `per_class_recall` unnest side by side: one row per
    class, as the README shows."""
    sql = (
        "SELECT c, avg(r) AS recall FROM (SELECT unnest(classes) AS c, "
        "unnest(per_class_recall) AS r FROM runs WHERE dataset = 'oulu' AND strategy = 'ce') "
        "GROUP BY c ORDER BY c"
    )
    records = json.loads(run_query(run.path, sql, fmt="json"))
    assert [r["c"] for r in records] == sorted(CLASSES["oulu"])
    # oulu `ce` misses the first 3, 2, 4 test images of folds 1-3: one of the two anger ones
    by_class = {r["c"]: r["recall"] for r in records}
    assert by_class["anger"] == pytest.approx((0.5 + 0.5 + 0.5) / 3)
    assert by_class["surprise"] == 1.0
    rows = run_query(run.path, "SELECT avg(mean_class_accuracy), avg(macro_f1) FROM runs")
    assert "nan" not in rows.lower()


def test_describe_summarize_show_and_several_statements(run):
    assert "test_accuracy" in run_query(run.path, "DESCRIBE runs")
    assert "test_accuracy" in run_query(run.path, "SUMMARIZE runs")
    assert "predictions" in run_query(run.path, "SHOW TABLES")
    assert "predictions" in run_query(run.path, "PRAGMA show_tables")
    last = run_query(run.path, "SELECT 1 AS a; SELECT 2 AS b;", fmt="csv")
    assert last == "b\n2"


def test_bad_sql_is_a_one_line_fer_error(run):
    with pytest.raises(FerError, match="syntax error") as info:
        run_query(run.path, "SELEC * FROM runs")
    assert "\n" not in str(info.value)
    with pytest.raises(FerError, match="nosuch"):
        run_query(run.path, "SELECT nosuch FROM runs")


def test_writes_are_refused(run, tmp_path):
    target = tmp_path / "x.csv"
    with pytest.raises(FerError, match="COPY statements are refused"):
        run_query(run.path, f"COPY (SELECT * FROM runs) TO '{target}'")
    assert not target.exists()
    with pytest.raises(FerError, match="refused"):
        run_query(run.path, "COPY runs TO '/tmp/x'")
    # the store's own files are readable by the views, so overwriting them must be refused too
    store_file = next((run.path / "store" / "runs").glob("*.parquet"))
    before = store_file.read_bytes()
    with pytest.raises(FerError, match="refused"):
        run_query(
            run.path, f"COPY (SELECT 1) TO '{store_file}' (FORMAT parquet, use_tmp_file false)"
        )
    assert store_file.read_bytes() == before
    for sql in (
        "CREATE TABLE t AS SELECT 1",
        "ATTACH 'x.db'",
        "SET threads = 1",
        "EXPLAIN ANALYZE COPY (SELECT 1) TO '/tmp/x'",
        "INSTALL httpfs",
        "PRAGMA threads=1",
    ):
        with pytest.raises(FerError, match="refused"):
            run_query(run.path, sql)


def test_other_files_cannot_be_read(run):
    """A file named in the SQL, read by a function or by its name alone, is refused as such
    (not "did you mean pg_class")."""
    for sql, path in (
        ("SELECT * FROM read_csv('/etc/hostname')", "/etc/hostname"),
        ("SELECT * FROM '/etc/passwd'", "/etc/passwd"),
        ('FROM "/etc/passwd"', "/etc/passwd"),
        ("SELECT * FROM 'elsewhere.parquet'", "elsewhere.parquet"),
    ):
        with pytest.raises(FerError) as refused:
            run_query(run.path, sql)
        assert str(refused.value).startswith(f"query: file access is refused ({path!r}"), sql
        assert "pg_class" not in str(refused.value)


def test_explain_of_a_select_is_allowed(run):
    assert run_query(run.path, "EXPLAIN SELECT count(*) FROM runs")


def test_temp_files_are_ignored(tmp_path):
    run = make_run(tmp_path / "run", datasets=("ckplus",), folds=(1,))
    folder = run.path / "store" / "runs"
    (folder / ".tmp-half-written.parquet").write_bytes(b"PAR1 not really parquet")
    assert _count(run, "runs") == 2


def test_missing_table_says_it_has_no_rows_yet(run):
    with pytest.raises(FerError, match=r"table trials has no rows yet in .*run"):
        run_query(run.path, "SELECT * FROM trials")
    with pytest.raises(FerError, match="table trials has no rows yet"):
        run_query(run.path, "SELECT r.unit_id FROM runs r JOIN trials t USING (unit_id)")


def test_empty_run_dir_has_no_tables(tmp_path):
    with pytest.raises(FerError, match="table runs has no rows yet"):
        run_query(tmp_path, "SELECT * FROM runs")
    assert run_query(tmp_path, "SELECT 42 AS answer", fmt="csv") == "answer\n42"


def test_missing_run_dir_and_bad_format(tmp_path, run):
    missing = tmp_path / "nowhere"
    with pytest.raises(FerError, match=str(missing)):
        run_query(missing, "SELECT 1")
    with pytest.raises(FerError, match="format 'xml'"):
        run_query(run.path, "SELECT 1", fmt="xml")
    with pytest.raises(FerError, match="no SQL statement"):
        run_query(run.path, "  ")


def test_predictions_and_epochs_carry_their_units_metadata(run):
    sql = (
        "SELECT dataset, strategy, count(DISTINCT fold) AS folds, count(*) AS n, "
        "min(stage) AS stage, any_value(selection) AS sel, any_value(seed) AS seed "
        "FROM predictions GROUP BY ALL ORDER BY ALL"
    )
    rows = json.loads(run_query(run.path, sql, fmt="json"))
    assert rows[0] == {
        "dataset": "ckplus",
        "strategy": "ce",
        "folds": 3,
        "n": 3 * IMAGES_PER_FOLD["ckplus"],
        "stage": 1,
        "sel": "heldout",
        "seed": 0,
    }
    epochs = run_query(run.path, "SELECT DISTINCT backbone FROM epochs", fmt="csv")
    assert epochs == "backbone\ninception_v3"


def test_timestamps_are_timestamps(run):
    sql = "SELECT any_value(typeof(started_at)) AS t, min(finished_at)::VARCHAR AS first FROM runs"
    assert json.loads(run_query(run.path, sql, fmt="json")) == [
        {"t": "TIMESTAMP", "first": "2023-11-14 22:15:01"}  # 1_700_000_101 s, UTC
    ]


def test_pivot_and_friends_run_while_writes_around_them_are_refused(run, tmp_path):
    pivot = "PIVOT runs ON strategy USING count(*) GROUP BY dataset ORDER BY dataset"
    assert run_query(run.path, pivot, fmt="csv") == "dataset,ce,ce>focal\nckplus,3,3\noulu,3,3"
    wrapped = run_query(run.path, f"SELECT * FROM ({pivot}) WHERE dataset = 'oulu'", fmt="csv")
    assert wrapped.splitlines()[1] == "oulu,3,3"
    assert "strategy" in run_query(
        run.path, "UNPIVOT (SELECT 1 AS a) ON a INTO NAME strategy VALUE v"
    )
    target = tmp_path / "p.csv"
    for sql, word in (
        (f"COPY ({pivot}) TO '{target}'", "COPY"),
        (f"CREATE TABLE t AS {pivot}", "CREATE"),
        (f"INSERT INTO runs {pivot}", "INSERT"),
    ):
        with pytest.raises(FerError, match=f"query: {word} statements are refused"):
            run_query(run.path, sql)
    assert not target.exists()


def test_errors_are_whole_with_duckdbs_hint(run):
    with pytest.raises(FerError) as info:
        run_query(run.path, "SELECT * FROM runz")
    message = str(info.value)
    assert 'Did you mean "runs"' in message and "\n" not in message and "LINE 1" not in message


def test_tables_lists_tables_columns_and_the_history_views(run):
    from orchestrator.query import describe_tables

    text = describe_tables(run.path)
    assert text.startswith("runs (12 rows)")
    assert "test_accuracy DOUBLE" in text and "finished_at TIMESTAMP" in text
    assert "runs_all (12 rows)" in text and "trials: no rows yet" in text


def test_only_the_current_dags_units_count_and_history_stays_reachable(tmp_path):
    """After a grid edit: the README's avg(test_accuracy) example averages current units only,
    the value the report uses; the earlier units' rows are in runs_all."""
    from orchestrator.report.results import load_results

    fake = make_run(tmp_path / "run", datasets=("ckplus",))
    current = [u for u in fake.units if u.strategy != "ce>focal"]  # edit: ce>focal dropped
    fake.rundir.write_dag(current)
    readme = "SELECT strategy, avg(test_accuracy) AS acc FROM runs GROUP BY 1"
    rows = json.loads(run_query(fake.path, readme, fmt="json"))
    assert [r["strategy"] for r in rows] == ["ce"]
    assert rows[0]["acc"] == pytest.approx(
        sum(r["test_accuracy"] for r in load_results(fake.path).runs) / 3
    )
    assert _count(fake, "predictions") == 3 * IMAGES_PER_FOLD["ckplus"]
    history = "SELECT current, count(*) AS n FROM runs_all GROUP BY 1 ORDER BY 1"
    assert run_query(fake.path, history, fmt="csv") == "current,n\nFalse,3\nTrue,3"
    assert _count(fake, "epochs_all") == 6 * 3
