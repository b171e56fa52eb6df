import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from fer_core.data.index import (
    DatasetIndex,
    build_index,
    check_image,
    dataset_fingerprint,
    detect_dataset,
)
from fer_core.errors import FerError

CK_COUNTS = {"anger": 135, "contempt": 54, "disgust": 177, "fear": 75, "happy": 207,
             "sadness": 84, "surprise": 249}  # fmt: skip


# ------------------------------------------------------------------ CK+


def test_ckplus_twin_gives_the_real_counts(ckplus_twin):
    index = build_index("ckplus", ckplus_twin)
    assert len(index) == 981
    assert len(index.subjects) == 118
    assert len({(r.subject, r.sequence) for r in index.records}) == 327
    assert index.class_counts() == CK_COUNTS
    assert index.classes[0] == "anger" and index.classes[-1] == "surprise"


def test_ckplus_keeps_the_last_three_frames_by_number(ckplus_twin):
    index = build_index("ckplus", ckplus_twin)
    by_sequence: dict[tuple[str, str], list[int]] = {}
    for record in index.records:
        by_sequence.setdefault((record.subject, record.sequence), []).append(record.frame)
        assert record.path.startswith(f"cohn-kanade-images/{record.subject}/{record.sequence}/")
        assert "\\" not in record.path and not Path(record.path).is_absolute()
    for (subject, sequence), frames in by_sequence.items():
        folder = ckplus_twin / "cohn-kanade-images" / subject / sequence
        numbers = sorted(int(p.stem.rsplit("_", 1)[1]) for p in folder.glob("*.png"))
        assert sorted(frames) == numbers[-3:]


def test_ckplus_folds_equal_the_published_split(ckplus_twin, roster_rows):
    index = build_index("ckplus", ckplus_twin)
    fold_of = {(r.subject, r.sequence): r.fold for r in index.records}
    label_of = {(r.subject, r.sequence): r.label for r in index.records}
    assert len(fold_of) == len(roster_rows) == 327
    for row in roster_rows:
        key = (row["subject"], row["sequence"])
        assert fold_of[key] == int(row["published_fold"]), key
        assert label_of[key] == int(row["emotion_code"]) - 1, key


def test_ckplus_skips_unlabelled_sequences(ckplus_twin):
    index = build_index("ckplus", ckplus_twin)
    used = {(r.subject, r.sequence) for r in index.records}
    empty = [p for p in (ckplus_twin / "Emotion").glob("*/*") if not any(p.iterdir())]
    assert empty, "the twin should contain unlabelled sequences"
    assert all((p.parent.name, p.name) not in used for p in empty)


def test_reads_grey_and_colour_frames(ckplus_twin):
    index = build_index("ckplus", ckplus_twin)
    modes = Counter(Image.open(index.path_of(r)).mode for r in index.records[::3])
    assert set(modes) == {"L", "RGB"}


def test_auto_detects_the_layout(ckplus_twin, oulu_twin):
    assert detect_dataset(ckplus_twin) == "ckplus"
    assert detect_dataset(oulu_twin) == "oulu"
    assert build_index("auto", oulu_twin).dataset == "oulu"


# ------------------------------------------------------------------ Oulu-CASIA


def test_oulu_twin(oulu_twin):
    index = build_index("oulu", oulu_twin)
    assert index.classes == ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    assert len(index) == 10 * 6 * 3
    assert set(index.class_counts().values()) == {30}
    assert {r.subject: r.fold for r in index.records} == {f"P{i:03d}": i for i in range(1, 11)}
    assert all(r.path.startswith("OriginalImg/VL/Strong/P") for r in index.records)


# ------------------------------------------------------------------ Parquet round trip


def test_write_read_round_trip(ckplus_twin, tmp_path):
    index = build_index("ckplus", ckplus_twin)
    path = tmp_path / "sub" / "index.parquet"
    index.write(path)
    assert [p.name for p in path.parent.iterdir()] == ["index.parquet"]  # no temp left behind
    again = DatasetIndex.read(path)
    assert again == index
    table = index.to_table()
    assert table.num_rows == 981
    assert table.column_names == ["path", "subject", "sequence", "frame", "label", "label_name",
                                  "fold", "split"]  # fmt: skip
    moved = DatasetIndex.read(path, root=tmp_path)
    assert moved.root == str(tmp_path.resolve()) and moved.records == index.records


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(FerError, match="missing.parquet"):
        DatasetIndex.read(tmp_path / "missing.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(FerError, match="bad.parquet"):
        DatasetIndex.read(bad)


# ------------------------------------------------------------------ fingerprint


def test_fingerprint_follows_content_not_location(oulu_copy, tmp_path):
    first = dataset_fingerprint(build_index("oulu", oulu_copy))
    moved = Path(shutil.copytree(oulu_copy, tmp_path / "elsewhere"))
    assert dataset_fingerprint(build_index("oulu", moved)) == first
    frame = sorted((moved / "OriginalImg/VL/Strong/P003/Fear").glob("*.jpeg"))[-1]
    Image.new("RGB", (64, 48), (1, 2, 3)).save(frame)
    assert dataset_fingerprint(build_index("oulu", moved)) != first


def test_fingerprint_follows_labels_and_folds(oulu_twin):
    index = build_index("oulu", oulu_twin)
    base = dataset_fingerprint(index)
    assert dataset_fingerprint(build_index("oulu", oulu_twin, n_folds=5)) != base
    first = index.records[0]
    index.records[0] = type(first)(**{**first.__dict__, "label": (first.label + 1) % 6})
    assert dataset_fingerprint(index) != base


# ------------------------------------------------------------------ bad input


def test_missing_root(tmp_path):
    with pytest.raises(FerError, match="nowhere"):
        build_index("ckplus", tmp_path / "nowhere")


def test_unknown_layout(tmp_path):
    (tmp_path / "cohn_kanade_images").mkdir()
    (tmp_path / "emotions").mkdir()
    with pytest.raises(FerError, match="neither CK\\+"):
        detect_dataset(tmp_path)
    with pytest.raises(FerError, match="cohn-kanade-images"):
        build_index("ckplus", tmp_path)
    with pytest.raises(FerError, match="OriginalImg"):
        build_index("oulu", tmp_path)
    with pytest.raises(FerError, match="'sfew'"):
        build_index("sfew", tmp_path)
    with pytest.raises(FerError, match="fer2013.csv: missing"):
        build_index("fer2013", tmp_path)


def test_garbage_emotion_file_is_named(ckplus_copy):
    target = next((ckplus_copy / "Emotion").glob("S010/*/*_emotion.txt"))
    target.write_text("happy\n")
    with pytest.raises(FerError, match=target.name):
        build_index("ckplus", ckplus_copy)
    target.write_text("   9.0000000e+00\n")  # out of range
    with pytest.raises(FerError, match="1..7"):
        build_index("ckplus", ckplus_copy)


def test_empty_sequence_folder_is_named(ckplus_copy):
    folder = ckplus_copy / "cohn-kanade-images" / "S011" / "003"
    for frame in folder.iterdir():
        frame.unlink()
    with pytest.raises(FerError, match="S011/003"):
        build_index("ckplus", ckplus_copy)


def test_short_sequence_is_named(ckplus_copy):
    folder = ckplus_copy / "cohn-kanade-images" / "S011" / "003"
    for frame in sorted(folder.iterdir())[2:]:
        frame.unlink()
    with pytest.raises(FerError, match="S011/003.*2 frame"):
        build_index("ckplus", ckplus_copy)


def test_truncated_png_is_named(ckplus_copy):
    frame = sorted((ckplus_copy / "cohn-kanade-images" / "S005" / "001").glob("*.png"))[-1]
    data = frame.read_bytes()
    frame.write_bytes(data[: len(data) // 2])
    with pytest.raises(FerError, match=frame.name):
        build_index("ckplus", ckplus_copy)
    assert build_index("ckplus", ckplus_copy, verify=False)  # the check is what catches it


def test_non_image_is_named(ckplus_copy):
    frame = sorted((ckplus_copy / "cohn-kanade-images" / "S005" / "001").glob("*.png"))[-1]
    frame.write_text("this is not a picture")
    with pytest.raises(FerError, match=frame.name):
        build_index("ckplus", ckplus_copy)


def test_truncated_jpeg_is_named(oulu_copy):
    frame = sorted((oulu_copy / "OriginalImg/VL/Strong/P002/Sadness").glob("*.jpeg"))[-1]
    data = frame.read_bytes()
    frame.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(FerError, match=frame.name):
        check_image(frame)
    with pytest.raises(FerError, match=frame.name):
        build_index("oulu", oulu_copy)


def test_unknown_oulu_expression_folder(oulu_copy):
    (oulu_copy / "OriginalImg/VL/Strong/P001/Contempt").mkdir()
    with pytest.raises(FerError, match="Contempt"):
        build_index("oulu", oulu_copy)


# ------------------------------------------------------------------ manifest


def _manifest_tree(tmp_path: Path, n_subjects: int = 4) -> Path:
    rows = ["path,subject,label"]
    for s in range(n_subjects):
        for k, label in enumerate(["sad", "happy", "angry"]):
            rel = f"img/s{s}/{k}.png"
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (20, 20), 40 * k).save(tmp_path / rel)
            rows.append(f"{rel},subj{s},{label}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_manifest(tmp_path):
    root = _manifest_tree(tmp_path)
    index = build_index("manifest", root, n_folds=2)
    assert index.classes == ["angry", "happy", "sad"]
    assert len(index) == 12
    assert {r.subject: r.fold for r in index.records} == {"subj0": 1, "subj1": 2, "subj2": 1,
                                                         "subj3": 2}  # fmt: skip
    given = build_index(
        "manifest", root, root / "manifest.csv", 2, classes=["sad", "happy", "angry"]
    )
    assert given.classes == ["sad", "happy", "angry"]
    assert {r.label_name: r.label for r in given.records} == {"sad": 0, "happy": 1, "angry": 2}


def test_manifest_missing_column(tmp_path):
    root = _manifest_tree(tmp_path)
    (root / "bad.csv").write_text("path,label\nimg/s0/0.png,sad\n")
    with pytest.raises(FerError, match="bad.csv.*'subject'"):
        build_index("manifest", root, root / "bad.csv", 2)


def test_manifest_unknown_label(tmp_path):
    root = _manifest_tree(tmp_path)
    with pytest.raises(FerError, match="manifest.csv:2.*'sad'"):
        build_index("manifest", root, n_folds=2, classes=["happy", "angry"])


def test_manifest_missing_image(tmp_path):
    root = _manifest_tree(tmp_path)
    (root / "img/s1/2.png").unlink()
    with pytest.raises(FerError, match="manifest.csv:7.*s1/2.png"):
        build_index("manifest", root, n_folds=2)


def _with_split(root: Path, splits: list[str]) -> Path:
    lines = (root / "manifest.csv").read_text().splitlines()
    rows = [f"{lines[0]},split"] + [f"{r},{s}" for r, s in zip(lines[1:], splits, strict=True)]
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    return root / "split.csv"


def test_a_manifest_split_column_gives_a_fixed_split_without_folds(tmp_path):
    root = _manifest_tree(tmp_path)
    splits = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    index = build_index("manifest", root, _with_split(root, splits), 2)
    assert [r.split for r in index.records] == splits
    assert {r.fold for r in index.records} == {0}
    index.write(tmp_path / "index.parquet")
    assert DatasetIndex.read(tmp_path / "index.parquet").records == index.records
    # the split is part of the content: moving an image to another role changes the id
    moved = build_index("manifest", root, _with_split(root, splits[::-1]), 2)
    assert dataset_fingerprint(moved) != dataset_fingerprint(index)


def test_without_a_split_column_records_and_fingerprint_are_k_fold(tmp_path):
    root = _manifest_tree(tmp_path)
    index = build_index("manifest", root, n_folds=2)
    assert {r.split for r in index.records} == {""}
    # an index written before the split column existed reads as k-fold
    index.write(tmp_path / "index.parquet")
    table = pq.read_table(tmp_path / "index.parquet").drop_columns(["split"])
    pq.write_table(table, tmp_path / "old.parquet")
    assert DatasetIndex.read(tmp_path / "old.parquet").records == index.records


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        (["train"] * 11 + ["dev"], r"split.csv:13: split 'dev' is not one of train, val, test"),
        (["train"] * 11 + [""], r"split.csv:13: split '' is not one of"),
        (["train"] * 12, r"split.csv: split column has no 'test' row"),
        (["test"] * 12, r"split.csv: split column has no 'train' row"),
    ],
)
def test_a_bad_split_is_one_line_naming_the_row(tmp_path, splits, message):
    root = _manifest_tree(tmp_path)
    with pytest.raises(FerError, match=message):
        build_index("manifest", root, _with_split(root, splits), 2)


def test_missing_manifest(tmp_path):
    with pytest.raises(FerError, match="manifest.csv"):
        build_index("manifest", tmp_path)


def test_relative_manifest_is_read_from_the_root(tmp_path, monkeypatch):
    """A relative manifest path means the same file wherever the command runs: the root's."""
    root = _manifest_tree(tmp_path / "data")
    (root / "lists").mkdir()
    (root / "manifest.csv").rename(root / "lists" / "labels.csv")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "lists").mkdir(parents=True)
    (elsewhere / "lists" / "labels.csv").write_text("path,subject,label\nnope.png,s,x\n")
    monkeypatch.chdir(elsewhere)
    assert len(build_index("manifest", root, "lists/labels.csv", 2)) == 12
    with pytest.raises(FerError, match=f"{root}/lists/other.csv does not exist .*from the root"):
        build_index("manifest", root, "lists/other.csv", 2)
