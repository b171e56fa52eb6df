"""The bad-input corpus: every way a grid, a cluster profile, a dataset tree, a manifest or a
command line can be wrong. Each case must give one line on stderr, `error: ...`, naming the
culprit; exit status 2; and write nothing (the working folder stays empty, no run dir).

Text fixtures live in tests/data/bad/ (grids/, clusters/, manifests/, ckplus/); binary ones
(truncated PNG/JPEG, non-UTF-8 files) are made here. Dataset cases run `data index` on a tiny
tree built per case (3 subjects, 3 frames each). The count per category is printed at the end
of the pytest run (tests/faults/conftest.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from orchestrator.cli import main

BAD = Path(__file__).resolve().parents[1] / "data" / "bad"


@dataclass(frozen=True)
class Case:
    category: str
    name: str
    argv: tuple[str, ...]  # {bad} {in} {work} are filled in
    culprit: str
    setup: Callable[[Path], None] | None = None  # builds inputs under {in}

    @property
    def id(self) -> str:
        return f"{self.category}-{self.name}"


# --- tiny dataset trees ---------------------------------------------------------------------
def _png(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (value, value, value)).save(path)


def _jpeg(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (value, 64, 32)).save(path, "JPEG")


def ckplus_tree(root: Path) -> Path:
    for s in (1, 2, 3):
        for f in (1, 2, 3):
            _png(root / f"cohn-kanade-images/S00{s}/001/S00{s}_001_0000000{f}.png", 40 * f)
        emotion = root / f"Emotion/S00{s}/001/S00{s}_001_00000003_emotion.txt"
        emotion.parent.mkdir(parents=True, exist_ok=True)
        emotion.write_text("   3.0000000e+00\n")
    return root


def oulu_tree(root: Path) -> Path:
    for s, expression in ((1, "Anger"), (2, "Happiness"), (3, "Surprise")):
        for f in (0, 1, 2):
            _jpeg(root / f"OriginalImg/VL/Strong/P00{s}/{expression}/00{f}.jpeg", 50 * f)
    return root


def manifest_tree(root: Path) -> Path:
    for s in (1, 2, 3):
        _png(root / f"img/s{s}_1.png")
    shutil.copy(BAD / "manifests" / "notes.png", root / "img" / "notes.png")
    return root


def _ck(mutate: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(inputs: Path) -> None:
        mutate(ckplus_tree(inputs / "ck"))

    return setup


def _oulu(mutate: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(inputs: Path) -> None:
        mutate(oulu_tree(inputs / "oulu"))

    return setup


def _emotion(fixture: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        shutil.copy(
            BAD / "ckplus" / fixture, root / "Emotion/S002/001/S002_001_00000003_emotion.txt"
        )

    return mutate


def _truncate(relative: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / relative
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return mutate


def _second_emotion(root: Path) -> None:
    (root / "Emotion/S001/001/S001_001_00000002_emotion.txt").write_text("1\n")


def _no_images(root: Path) -> None:
    shutil.rmtree(root / "cohn-kanade-images/S002/001")


def _empty_sequence(root: Path) -> None:
    for png in (root / "cohn-kanade-images/S002/001").glob("*.png"):
        png.unlink()


def _short_sequence(root: Path) -> None:
    (root / "cohn-kanade-images/S003/001/S003_001_00000001.png").unlink()


def _no_emotion(root: Path) -> None:
    for path in (root / "Emotion").rglob("*_emotion.txt"):
        path.unlink()


def _bad_frame_name(root: Path) -> None:
    _png(root / "cohn-kanade-images/S001/001/frame-four.png")


def _text_as_png(root: Path) -> None:
    shutil.copy(
        BAD / "ckplus" / "not_a_png.png", root / "cohn-kanade-images/S001/001/S001_001_00000004.png"
    )


def _oulu_unknown_expression(root: Path) -> None:
    _jpeg(root / "OriginalImg/VL/Strong/P001/Contempt/000.jpeg")


def _oulu_bad_frame_name(root: Path) -> None:
    _jpeg(root / "OriginalImg/VL/Strong/P002/Happiness/first.jpeg")


def _oulu_empty_sequence(root: Path) -> None:
    (root / "OriginalImg/VL/Strong/P003/Sadness").mkdir()


def _binary(relative: str, data: bytes) -> Callable[[Path], None]:
    def setup(inputs: Path) -> None:
        path = inputs / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return setup


def _manifest_root(inputs: Path) -> None:
    manifest_tree(inputs / "m")


def _non_utf8_manifest(inputs: Path) -> None:
    manifest_tree(inputs / "m")
    (inputs / "m.csv").write_bytes(b"path,subject,label\n\xff\xfeimg/s1_1.png,s1,\xe9t\xe9\n")


def _relative_manifest_grid(inputs: Path) -> None:
    """A grid naming a manifest the root does not hold: the error says where it looked."""
    manifest_tree(inputs / "m")
    (inputs / "grid.yaml").write_text(
        f"datasets:\n  m:\n    kind: manifest\n    root: {inputs / 'm'}\n"
        "    manifest: labels.csv\n    detector: center\n"
        "backbones:\n  tiny: {}\nexperiments:\n  - {backbones: [tiny], strategies: [ce]}\n"
    )


def _grid_truncated_frame(inputs: Path) -> None:
    """A grid over a CK+ tree one of whose used frames is cut short."""
    _ck(_truncate("cohn-kanade-images/S003/001/S003_001_00000003.png"))(inputs)
    (inputs / "grid.yaml").write_text(
        f"datasets:\n  ckplus:\n    root: {inputs / 'ck'}\n    n_folds: 3\n"
        "    detector: center\n"
        "backbones:\n  tiny: {}\nexperiments:\n  - {backbones: [tiny], strategies: [ce]}\n"
    )


def _other_grids_run(inputs: Path) -> None:
    (inputs / "run").mkdir(parents=True)
    (inputs / "run" / "run.json").write_text('{"grid": "other", "grid_file": "x.yaml"}')


def _file(inputs: Path) -> None:
    (inputs / "a-file").write_text("not a folder\n")


# --- the corpus -------------------------------------------------------------------------------
LAUNCH = ("launch", "--run-dir", "{work}/run")


def _grid_cases() -> list[Case]:
    culprits = {
        "unknown_top_key": "folsd",
        "bad_name": "my grid; rm -rf ~",
        "seed_not_int": "zero",
        "datasets_empty": "datasets is empty",
        "datasets_list": "datasets must be a mapping",
        "unknown_dataset_kind": "sfew",
        "synthetic_manifest": "synthetic",
        "unknown_dataset_key": "detecter",
        "bad_detector": "haar",
        "crop_size_too_small": "crop_size",
        "image_size_one_number": "image_size",
        "n_folds_one": "n_folds",
        "fold_rule_unknown": "fold_rule 'step8'",
        "focal_typo": "alhpa",
        "focal_value_on_ce_only": "datasets.ckplus.focal: gamma: 'abc'",
        "alpha_zero": "alpha",
        "alpha_above_one": "1.5",
        "gamma_negative": "-2",
        "unknown_backbone": "resnet99",
        "weights_null": "weights",
        "input_size_too_small": "input_size",
        "input_size_below_backbone_min": "input_size 64 must be an integer >= 75",
        "undeclared_backbone": "resnet18",
        "unknown_stage_loss": "hinge",
        "empty_strategy": "strategy ''",
        "experiments_empty": "experiments",
        "fold_out_of_range": "11",
        "folds_empty": "folds",
        "train_key_typo": "batch_sise",
        "train_loss_overridden": "loss",
        "epochs_zero": "epochs",
        "lr_negative": "lr",
        "lr_not_a_number": "fast",
        "nan_policy_unknown": "ignore",
        "precision_unknown": "fp8",
        "selection_unknown": "testfold",
        "stage_key_not_a_number": "first",
        "stage_key_typo": "lrr",
        "not_yaml": "not valid YAML (line",
        "top_level_list": "top level must be a mapping",
        "empty": "top level must be a mapping",
        "tab_indent": "not valid YAML",
        "python_tag": "not valid YAML",
        "manifest_no_root": "--data ckplus=DIR",
        "root_missing": "/nonexistent/fer-bad-input/CK+",
        "duplicate_key": "'seed' is given twice",
        "dataset_name_traversal": "dataset name '../../escape'",
        "inner_two_folds": "selection: inner needs n_folds >= 3",
        "focal_without_alpha_gamma": "datasets.ckplus has no focal: block",
        "seed_and_seeds": "give seed: or seeds:, not both",
        "seeds_repeated": "lists a seed twice",
        "seeds_not_a_list": "seeds 3 must be a non-empty list",
        "deterministic_not_bool": "'sometimes'",
        "heldout_on_fixed_split": "selection: heldout would choose each stage's epoch on the test",
        "protocol_unknown": "protocol 'split'",
        "holdout_fraction_on_kfold": "holdout_fraction applies to protocol: fixed only",
    }
    found = sorted(p.stem for p in (BAD / "grids").glob("*.yaml"))
    assert found == sorted(culprits), "tests/data/bad/grids/ and this table must agree"
    cases = [
        Case("grid", name, (*LAUNCH, "--grid", f"{{bad}}/grids/{name}.yaml"), culprit)
        for name, culprit in culprits.items()
    ]
    cases.append(
        Case(
            "grid",
            "binary_file",
            (*LAUNCH, "--grid", "{in}/grid.yaml"),
            "not a text file",
            _binary("grid.yaml", b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00garbage"),
        )
    )
    return cases


def _cluster_cases() -> list[Case]:
    culprits = {
        "unknown_backend": "kubernetes",
        "no_backend": "backend",
        "key_typo": "jbos",
        "jobs_zero": "jobs",
        "jobs_not_int": "two",
        "partition_injection": "rm -rf",
        "account_subshell": "$(touch /tmp/pwned)",
        "qos_newline": "qos",
        "setup_not_list": "setup",
        "time_min_zero": "time_min",
        "mem_gb_string": "32G",
        "env_nested": "env",
        "gpus_negative": "gpus_per_trial",
        "ray_cpus_zero": "cpus_per_trial",
        "profile_not_mapping": "a profile must be a mapping",
        "not_yaml": "not valid YAML",
        "top_level_list": "top level must be a mapping",
        "python_tag": "not valid YAML",
    }
    found = sorted(p.stem for p in (BAD / "clusters").glob("*.yaml"))
    assert found == sorted(culprits), "tests/data/bad/clusters/ and this table must agree"
    cases = [
        Case(
            "cluster",
            name,
            (
                *LAUNCH,
                "--grid",
                "demo",
                "--cluster",
                "p",
                "--cluster-file",
                f"{{bad}}/clusters/{name}.yaml",
            ),
            culprit,
        )
        for name, culprit in culprits.items()
    ]
    cases += [
        Case(
            "cluster",
            "no_such_profile",
            (*LAUNCH, "--grid", "demo", "--cluster", "gpu-farm"),
            "gpu-farm",
        ),
        Case(
            "cluster",
            "cluster_file_missing",
            (*LAUNCH, "--grid", "demo", "--cluster-file", "{in}/nope.yaml"),
            "nope.yaml: file not found",
        ),
    ]
    return cases


def _data_cases() -> list[Case]:
    def index(dataset: str, root: str, *extra: str) -> tuple[str, ...]:
        return (
            "data",
            "index",
            "--dataset",
            dataset,
            "--root",
            root,
            "--out",
            "{work}/index.parquet",
            *extra,
        )

    ck = index("ckplus", "{in}/ck", "--n-folds", "3")
    oulu = index("oulu", "{in}/oulu", "--n-folds", "3")
    emotion = "S002_001_00000003_emotion.txt"
    return [
        Case(
            "dataset", "ckplus_emotion_garbage", ck, emotion, _ck(_emotion("emotion_garbage.txt"))
        ),
        Case(
            "dataset",
            "ckplus_emotion_out_of_range",
            ck,
            emotion,
            _ck(_emotion("emotion_out_of_range.txt")),
        ),
        Case(
            "dataset", "ckplus_emotion_fraction", ck, emotion, _ck(_emotion("emotion_fraction.txt"))
        ),
        Case(
            "dataset", "ckplus_two_emotion_files", ck, "holds 2 emotion files", _ck(_second_emotion)
        ),
        Case(
            "dataset",
            "ckplus_images_missing",
            ck,
            "cohn-kanade-images/S002/001: missing",
            _ck(_no_images),
        ),
        Case("dataset", "ckplus_empty_sequence", ck, "holds no .png frame", _ck(_empty_sequence)),
        Case(
            "dataset", "ckplus_short_sequence", ck, "sequence has 2 frame(s)", _ck(_short_sequence)
        ),
        Case("dataset", "ckplus_no_emotion_file", ck, "holds no *_emotion.txt", _ck(_no_emotion)),
        Case("dataset", "ckplus_bad_frame_name", ck, "frame-four.png", _ck(_bad_frame_name)),
        Case(
            "dataset",
            "ckplus_truncated_png",
            ck,
            "S003_001_00000003.png",
            _ck(_truncate("cohn-kanade-images/S003/001/S003_001_00000003.png")),
        ),
        Case("dataset", "ckplus_text_named_png", ck, "S001_001_00000004.png", _ck(_text_as_png)),
        Case(
            "dataset",
            "ckplus_more_folds_than_subjects",
            index("ckplus", "{in}/ck", "--n-folds", "5"),
            "n_folds: 5",
            _ck(lambda r: None),
        ),
        Case(
            "dataset",
            "ckplus_one_fold",
            index("ckplus", "{in}/ck", "--n-folds", "1"),
            "n_folds",
            _ck(lambda r: None),
        ),
        Case(
            "dataset",
            "launch_truncated_png",
            (*LAUNCH, "--grid", "{in}/grid.yaml"),
            "S003_001_00000003.png: not a readable image",
            _grid_truncated_frame,
        ),
        Case("dataset", "root_missing", index("ckplus", "{in}/no-such-root"), "no-such-root"),
        Case(
            "dataset",
            "root_not_ckplus",
            index("ckplus", "{in}/oulu"),
            "is not a CK+ folder",
            _oulu(lambda r: None),
        ),
        Case(
            "dataset",
            "root_not_oulu",
            index("oulu", "{in}/ck"),
            "is not an Oulu-CASIA folder",
            _ck(lambda r: None),
        ),
        Case(
            "dataset", "oulu_unknown_expression", oulu, "Contempt", _oulu(_oulu_unknown_expression)
        ),
        Case("dataset", "oulu_bad_frame_name", oulu, "first.jpeg", _oulu(_oulu_bad_frame_name)),
        Case("dataset", "oulu_empty_sequence", oulu, "P003/Sadness", _oulu(_oulu_empty_sequence)),
        Case(
            "dataset",
            "oulu_truncated_jpeg",
            oulu,
            "P002/Happiness/001.jpeg",
            _oulu(_truncate("OriginalImg/VL/Strong/P002/Happiness/001.jpeg")),
        ),
        Case(
            "dataset",
            "faces_crop_size_too_small",
            (
                "data",
                "faces",
                "--dataset",
                "ckplus",
                "--root",
                "{in}/ck",
                "--n-folds",
                "3",
                "--detector",
                "center",
                "--crop-size",
                "4",
                "--out",
                "{work}/faces",
            ),
            "crop_size",
            _ck(lambda r: None),
        ),
    ]


def _manifest_cases() -> list[Case]:
    culprits = {
        "missing_label_column": "missing column 'label'",
        "header_only": "no rows",
        "empty_file": "missing column 'path'",
        "path_leaves_root": "../outside.png",
        "absolute_path_outside": "/etc/passwd",
        "image_missing": "img/nope.png",
        "duplicate_path": "listed twice",
        "empty_subject": "empty subject",
        "frame_not_integer": "first",
        "empty_path": "empty path",
        "not_an_image": "notes.png",
        "split_unknown": "split 'dev' is not one of train, val, test",
        "split_without_test": "split column has no 'test' row",
        "label_nan": "label_nan.csv:3: label 'nan'",
        "label_null": "label_null.csv:3: label 'NULL'",
        "label_empty": "label_empty.csv:4: empty label",
    }
    found = sorted(p.stem for p in (BAD / "manifests").glob("*.csv"))
    assert found == sorted(culprits), "tests/data/bad/manifests/ and this table must agree"

    def index(manifest: str) -> tuple[str, ...]:
        return (
            "data",
            "index",
            "--dataset",
            "manifest",
            "--root",
            "{in}/m",
            "--manifest",
            manifest,
            "--n-folds",
            "2",
            "--out",
            "{work}/index.parquet",
        )

    cases = [
        Case("manifest", name, index(f"{{bad}}/manifests/{name}.csv"), culprit, _manifest_root)
        for name, culprit in culprits.items()
    ]
    cases += [
        Case("manifest", "not_utf8", index("{in}/m.csv"), "not a UTF-8 CSV", _non_utf8_manifest),
        Case(
            "manifest",
            "relative_manifest_not_in_root",
            (*LAUNCH, "--grid", "{in}/grid.yaml"),
            "m/labels.csv does not exist (a relative manifest path is taken from the root",
            _relative_manifest_grid,
        ),
        Case(
            "manifest",
            "manifest_missing",
            index("{in}/none.csv"),
            "none.csv does not exist",
            _manifest_root,
        ),
    ]
    return cases


# --- fixed-split datasets as distributed: RAF-DB, FER2013/FERPlus, AffectNet ---------------
RAF_LIST = "EmoLabel/list_patition_label.txt"
AFFECT_CSV = "Manually_Annotated_file_lists/{}.csv"
AFFECT_HEAD = (
    "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,"
    "valence,arousal"
)
FER_PIXELS = " ".join(["128"] * 2304)


def rafdb_tree(root: Path) -> Path:
    names = ("train_00001.jpg", "train_00002.jpg", "test_0001.jpg")
    for name in names:
        _jpeg(root / f"Image/aligned/{name[:-4]}_aligned.jpg")
    _write(root / RAF_LIST, "".join(f"{name} {k + 1}\n" for k, name in enumerate(names)))
    return root


def affectnet_tree(root: Path) -> Path:
    """Two training rows and one validation row, 16x16 images with 10x10 face boxes, and a
    non-expression row (code 9) that must be counted, not refused."""
    rows = {"training": ["1/a.jpg,2,2,10,10,,1,0.5,0.2", "1/b.jpg,3,3,10,10,,9,0,0"]}
    rows["validation"] = ["2/c.jpg,0,0,10,10,,0,0.1,0.1"]
    for name, lines in rows.items():
        _write(root / AFFECT_CSV.format(name), "\n".join([AFFECT_HEAD, *lines]) + "\n")
        for line in lines:
            _jpeg(root / "Manually_Annotated_Images" / line.split(",")[0])
    return root


def fer2013_tree(root: Path) -> Path:
    rows = [f"{k},{FER_PIXELS},{u}" for k, u in enumerate(("Training", "PublicTest"))]
    _write(root / "fer2013.csv", "\n".join(["emotion,pixels,Usage", *rows]) + "\n")
    plus = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,"
    votes = ("Training,fer0000000.png,8,2,0,0,0,0,0,0,0,0", "PublicTest,,0,0,0,0,0,0,0,0,0,10")
    _write(root / "fer2013new.csv", "\n".join([plus + "unknown,NF", *votes]) + "\n")
    return root


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _tree(
    build: Callable[[Path], Path], name: str, mutate: Callable[[Path], None]
) -> Callable[[Path], None]:
    def setup(inputs: Path) -> None:
        mutate(build(inputs / name))

    return setup


def _replace(relative: str, old: str, new: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / relative
        text = path.read_text()
        assert old in text, (relative, old)
        path.write_text(text.replace(old, new, 1))

    return mutate


def _remove(relative: str) -> Callable[[Path], None]:
    return lambda root: (root / relative).unlink()


def _wild_cases() -> list[Case]:
    def index(dataset: str, *extra: str) -> tuple[str, ...]:
        root = "{in}/" + dataset.replace("ferplus", "fer2013")
        out = "{work}/index.parquet"
        return ("data", "index", "--dataset", dataset, "--root", root, "--out", out, *extra)

    def raf(mutate: Callable[[Path], None]) -> Callable[[Path], None]:
        return _tree(rafdb_tree, "rafdb", mutate)

    def aff(mutate: Callable[[Path], None]) -> Callable[[Path], None]:
        return _tree(affectnet_tree, "affectnet", mutate)

    def fer(mutate: Callable[[Path], None]) -> Callable[[Path], None]:
        return _tree(fer2013_tree, "fer2013", mutate)

    training = AFFECT_CSV.format("training")
    return [
        Case("dataset", "rafdb_list_missing", index("rafdb"), RAF_LIST, raf(_remove(RAF_LIST))),
        Case(
            "dataset",
            "rafdb_label_out_of_range",
            index("rafdb"),
            "list_patition_label.txt:2: label '8' is out of range",
            raf(_replace(RAF_LIST, "train_00002.jpg 2", "train_00002.jpg 8")),
        ),
        Case(
            "dataset",
            "rafdb_image_missing",
            index("rafdb"),
            "train_00002_aligned.jpg: listed by the dataset but missing",
            raf(_remove("Image/aligned/train_00002_aligned.jpg")),
        ),
        Case(
            "dataset",
            "rafdb_original_missing",
            index("rafdb", "--images", "original"),
            "Image/original/train_00001.jpg: listed by the dataset but missing",
            raf(lambda root: None),
        ),
        Case(
            "dataset",
            "affectnet_missing_column",
            index("affectnet"),
            "training.csv: missing column 'face_height'",
            aff(_replace(training, ",face_height", ",face_h")),
        ),
        Case(
            "dataset",
            "affectnet_label_out_of_range",
            index("affectnet"),
            "training.csv:2: label '11' is out of range",
            aff(_replace(training, ",,1,0.5", ",,11,0.5")),
        ),
        Case(
            "dataset",
            "affectnet_image_missing",
            index("affectnet"),
            "Manually_Annotated_Images/2/c.jpg: listed by the dataset but missing",
            aff(_remove("Manually_Annotated_Images/2/c.jpg")),
        ),
        Case(
            "dataset",
            "affectnet_box_outside_image",
            index("affectnet"),
            "a.jpg: face box [2, 2, 20, 10] (x, y, width, height from ",
            aff(_replace(training, "1/a.jpg,2,2,10,10", "1/a.jpg,2,2,20,10")),
        ),
        Case(
            "dataset",
            "affectnet_validation_missing",
            index("affectnet"),
            "validation.csv: missing",
            aff(_remove(AFFECT_CSV.format("validation"))),
        ),
        Case(
            "dataset",
            "fer2013_pixels_wrong_count",
            index("fer2013"),
            "fer2013.csv:3: pixels hold 2303 values, need 2304",
            fer(_replace("fer2013.csv", "1," + FER_PIXELS, "1," + FER_PIXELS[4:])),
        ),
        Case(
            "dataset",
            "fer2013_label_out_of_range",
            index("fer2013"),
            "fer2013.csv:2: label '7' is out of range",
            fer(_replace("fer2013.csv", "0," + FER_PIXELS[:3], "7," + FER_PIXELS[:3])),
        ),
        Case(
            "dataset",
            "fer2013_missing_column",
            index("fer2013"),
            "fer2013.csv: missing column 'Usage'",
            fer(_replace("fer2013.csv", "Usage", "usage")),
        ),
        Case(
            "dataset",
            "fer2013_pixel_out_of_range",
            index("fer2013"),
            "fer2013.csv:2: pixels '300 128",
            fer(_replace("fer2013.csv", "0,128 ", "0,300 ")),
        ),
        Case(
            "dataset",
            "ferplus_votes_file_missing",
            index("ferplus"),
            "fer2013new.csv: missing",
            fer(_remove("fer2013new.csv")),
        ),
        Case(
            "dataset",
            "ferplus_rows_out_of_step",
            index("ferplus"),
            "fer2013new.csv:2: Usage 'PublicTest' differs from row 1 of fer2013.csv",
            fer(_replace("fer2013new.csv", "Training,fer", "PublicTest,fer")),
        ),
        Case(
            "dataset",
            "ferplus_bad_vote",
            index("ferplus"),
            "fer2013new.csv:2: neutral vote 'x' is not a count",
            fer(_replace("fer2013new.csv", "png,8,", "png,x,")),
        ),
    ]


def _cli_cases() -> list[Case]:
    small = ("--grid", "demo")
    return [
        Case("cli", "jobs_zero", (*LAUNCH, *small, "--jobs", "0"), "--jobs 0"),
        Case("cli", "jobs_not_int", (*LAUNCH, *small, "--jobs", "two"), "'two'"),
        Case("cli", "jobs_negative", (*LAUNCH, *small, "--jobs", "-3"), "--jobs -3"),
        Case(
            "cli", "data_without_equals", (*LAUNCH, *small, "--data", "ckplus"), "--data 'ckplus'"
        ),
        Case("cli", "data_unknown_dataset", (*LAUNCH, *small, "--data", "fer2013=/x"), "fer2013"),
        Case("cli", "seeds_not_integers", (*LAUNCH, *small, "--seeds", "0,one"), "--seeds '0,one'"),
        Case(
            "cli",
            "data_root_missing",
            (*LAUNCH, "--grid", "paper", "--data", "ckplus={in}/gone", "--data", "oulu={in}/gone"),
            "gone does not exist",
        ),
        Case(
            "cli",
            "data_root_wrong_layout",
            (*LAUNCH, "--grid", "paper", "--data", "ckplus={in}/oulu", "--data", "oulu={in}/oulu"),
            "not a ckplus tree",
            _oulu(lambda r: None),
        ),
        Case("cli", "grid_unknown", (*LAUNCH, "--grid", "no-such-grid"), "no-such-grid"),
        Case(
            "cli",
            "grid_is_a_folder",
            (*LAUNCH, "--grid", "{bad}/grids"),
            "grids: grid file not found",
        ),
        Case("cli", "grid_file_missing", (*LAUNCH, "--grid", "{in}/missing.yaml"), "missing.yaml"),
        Case(
            "cli",
            "run_dir_is_a_file",
            ("launch", *small, "--run-dir", "{in}/a-file"),
            "a-file: is a file",
            _file,
        ),
        Case(
            "cli",
            "run_dir_of_another_grid",
            ("launch", *small, "--run-dir", "{in}/run"),
            "holds results of grid 'other'",
            _other_grids_run,
        ),
        Case("cli", "unknown_command", ("lanch",), "invalid choice: 'lanch'"),
        Case("cli", "unknown_option", (*LAUNCH, "--gird", "demo"), "--gird"),
        Case("cli", "status_missing_run_dir", ("status", "--run-dir", "{in}/nothing"), "nothing"),
        Case("cli", "cancel_missing_run_dir", ("cancel", "--run-dir", "{in}/nothing"), "nothing"),
        Case(
            "cli",
            "query_missing_run_dir",
            ("query", "SELECT 1", "--run-dir", "{in}/nothing"),
            "nothing",
        ),
        Case("cli", "report_missing_run_dir", ("report", "--run-dir", "{in}/nothing"), "nothing"),
        Case(
            "cli",
            "synth_bad_size",
            (
                "data",
                "synth",
                "--dataset",
                "ckplus",
                "--out",
                "{work}/twin",
                "--image-size",
                "8",
                "8",
            ),
            "image_size",
        ),
    ]


CASES = (
    _grid_cases()
    + _cluster_cases()
    + _data_cases()
    + _wild_cases()
    + _manifest_cases()
    + _cli_cases()
)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line(case: Case, tmp_path, monkeypatch, capsys):
    inputs, work = tmp_path / "in", tmp_path / "work"
    inputs.mkdir()
    work.mkdir()
    if case.setup is not None:
        case.setup(inputs)
    before = sorted(p.relative_to(inputs) for p in inputs.rglob("*"))
    argv = [a.format(bad=BAD, work=work, **{"in": inputs}) for a in case.argv]
    monkeypatch.chdir(work)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.culprit in lines[0], lines[0]
    assert not any(work.iterdir()), f"wrote {sorted(work.rglob('*'))}"
    assert sorted(p.relative_to(inputs) for p in inputs.rglob("*")) == before
    assert not Path("/tmp/pwned").exists()


def test_the_corpus_is_broad():
    categories = {c.category for c in CASES}
    assert len(CASES) >= 30 and categories == {"grid", "cluster", "dataset", "manifest", "cli"}
    assert len({c.id for c in CASES}) == len(CASES)
