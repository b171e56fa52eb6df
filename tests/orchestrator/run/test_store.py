"""The results store: one atomic Parquet file per unit and table; a file that is not whole
is invisible and does not count as done; re-running a unit replaces its rows."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from fer_core.errors import FerError
from fer_core.io import TEMP_PREFIX
from orchestrator.run.store import Store, is_whole_parquet


def _epochs(n: int) -> list[dict[str, object]]:
    return [{"unit_id": "u1", "epoch": e, "val_accuracy": 0.5} for e in range(1, n + 1)]


def test_a_rewrite_replaces_a_units_rows_instead_of_adding_to_them(tmp_path):
    store = Store(tmp_path)
    store.write("epochs", "u1", _epochs(3))
    store.write("epochs", "u1", _epochs(2))
    table = store.read("epochs")
    assert table is not None and table.num_rows == 2
    assert [p.name for p in (tmp_path / "store" / "epochs").iterdir()] == ["u1.parquet"]


def test_a_unit_without_test_predictions_is_done_with_no_predictions_file(tmp_path):
    store = Store(tmp_path)
    store.write_unit("u1", {"unit_id": "u1", "test_accuracy": None}, [], _epochs(1))
    assert store.is_done("u1", "train") and store.is_done("u1", "trial")
    assert not store.path("predictions", "u1").exists()
    assert store.read("predictions") is None
    assert store.done_ids("train") == {"u1"}


def test_a_truncated_runs_file_is_not_done_and_readers_skip_it(tmp_path):
    store = Store(tmp_path)
    for unit in ("u1", "u2"):
        store.write_unit(unit, {"unit_id": unit, "test_accuracy": 0.5}, [], _epochs(1))
    runs = store.path("runs", "u2")
    runs.write_bytes(runs.read_bytes()[:-9])  # a crash of a non-atomic writer: no footer
    assert not is_whole_parquet(runs)
    assert not store.is_done("u2", "train") and store.done_ids("train") == {"u1"}
    table = store.read("runs")
    assert table is not None and table.column("unit_id").to_pylist() == ["u1"]


def test_temp_files_of_an_unfinished_write_are_not_results(tmp_path):
    store = Store(tmp_path)
    store.write("prepare", "p1", [{"unit_id": "p1", "images": 3}])
    folder = tmp_path / "store" / "prepare"
    (folder / f"{TEMP_PREFIX}p2.parquet").write_bytes(store.path("prepare", "p1").read_bytes())
    assert store.done_ids("prepare") == {"p1"}
    assert [p.name for p in store.files("prepare")] == ["p1.parquet"]


def test_read_restricts_to_units_and_merges_files_whose_columns_differ(tmp_path):
    store = Store(tmp_path)
    store.write("runs", "old", [{"unit_id": "old", "test_accuracy": 0.4}])
    store.write("runs", "new", [{"unit_id": "new", "test_accuracy": 0.6, "n_train": 90}])
    table = store.read("runs")
    assert table is not None
    rows = {r["unit_id"]: r for r in table.to_pylist()}
    assert rows["old"]["n_train"] is None and rows["new"]["n_train"] == 90
    only = store.read("runs", {"new"})
    assert only is not None and only.column("unit_id").to_pylist() == ["new"]
    assert store.read("runs", {"absent"}) is None


def test_a_damaged_file_that_looks_whole_fails_in_one_line_naming_it(tmp_path):
    store = Store(tmp_path)
    path = store.write("runs", "u1", [{"unit_id": "u1", "test_accuracy": 0.5}])
    data = bytearray(path.read_bytes())
    data[4:20] = b"\xff" * 16  # the column chunks, not the magic bytes or the footer length
    path.write_bytes(bytes(data))
    assert is_whole_parquet(path)  # the cheap check cannot see this
    with pytest.raises(FerError) as raised:
        store.read("runs")
    message = str(raised.value)
    assert str(path) in message and "\n" not in message


def test_the_cheap_whole_file_check_rejects_what_is_not_parquet(tmp_path):
    good = Store(tmp_path).write("runs", "u1", [{"unit_id": "u1"}])
    assert is_whole_parquet(good) and pq.read_table(good).num_rows == 1
    cases = {
        "empty": b"",
        "short": b"PAR1PAR1",
        "no_head_magic": b"XXXX" + good.read_bytes()[4:],
        "footer_longer_than_file": good.read_bytes()[:-8] + (10**6).to_bytes(4, "little") + b"PAR1",
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.parquet"
        path.write_bytes(data)
        assert not is_whole_parquet(path), name
    assert not is_whole_parquet(tmp_path / "missing.parquet")
