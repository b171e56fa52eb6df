"""`write_report`: report.md and PNGs from a fake store, full and partial, real and synthetic."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace

import pytest
from PIL import Image

from fer_core.data.index import build_index
from fer_core.errors import FerError
from orchestrator.report import document, methods
from orchestrator.report.document import write_report
from orchestrator.report.results import load_results
from orchestrator.report.study import build_study
from orchestrator.run.launch import launch
from tests.helpers import tiny_ckplus
from tests.orchestrator.report.fake_results import ERRORS, accuracy, make_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _mean_pm_std(dataset: str, strategy: str, folds=(1, 2, 3)) -> str:
    values = [accuracy(dataset, strategy, f) for f in folds]
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("report") / "run")
    return run, write_report(run.path)


def test_writes_markdown_and_pngs(full):
    run, report = full
    assert report.path == run.path / "report" / "report.md" and report.path.is_file()
    pngs = sorted(p.name for p in report.path.parent.glob("*.png"))
    assert pngs == [
        "confusion-ckplus-inception_v3-heldout.png",
        "confusion-oulu-inception_v3-heldout.png",
        "folds.png",
    ]
    text = report.path.read_text()
    for name in pngs:
        assert (report.path.parent / name).read_bytes().startswith(PNG_MAGIC)
        assert f"]({name})" in text  # linked from the markdown
    assert not list(report.path.parent.glob(".tmp-*"))


def test_strategy_table_beside_the_paper(full):
    _, report = full
    text = report.path.read_text()
    ours = _mean_pm_std("ckplus", "ce>focal")
    row = next(
        line
        for line in text.splitlines()
        if line.startswith("| ckplus | inception_v3 | ce>focal |")
    )
    assert ours in row and "98.8" in row and "3/3" in row
    assert "87.7" in text and "88.3" in text  # Oulu, Table 3
    terminal = report.strategy_table
    assert ours in terminal and "98.8" in terminal and "|" not in terminal
    lines = terminal.splitlines()
    assert len({len(line) for line in lines[1:3]}) == 1  # header and rule aligned


def test_header_data_and_protocol(full):
    _, report = full
    text = report.path.read_text()
    assert "Grid: **fake**" in text
    assert "Units done: **14 of 14**" in text
    assert "cpu ×12" in text
    assert "**heldout**: the paper's protocol" in text and "optimistic" in text
    assert "| ckplus | ckplus | 140 | 20 |" in text  # images, subjects from the prepare row
    assert "SYNTHETIC" not in text


def test_per_class_paired_and_focal_note(full):
    _, report = full
    text = report.path.read_text()
    assert "| contempt | 6 | 66.7 | 83.3 | +16.7 | +5.6 |" in text
    assert "87.1 → 89.6 (+2.5)" in text
    # ckplus: ce>focal - ce per fold = +7.14, 0, +7.14 (errors 2,1,3 -> 1,1,2 of 14)
    # Nadeau-Bengio over diffs (+7.14, 0, +7.14) with n_test/n_train = 14/126: p = 0.225;
    # Holm over the report's 2 comparisons doubles the smaller p (the other is oulu's 0.531)
    assert (
        "| ce>focal − ce | +4.76 | [-7.07, +16.59] | +2 of 42 | 3 | 0.225 | 0.451 | 0.184 | 0.5 "
        "| 2 vs 1: favours first |"
    ) in text
    assert "| ce>focal − ce | +7.14 | +0.00 | +7.14 |" in text  # per fold
    assert "makes every strategy of its Table 4 cross-entropy at another effective" in text
    assert "ckplus: the focal stage of `ce>focal` ran with γ = 0 and α = 0.25" in text


def test_gamma_zero_note_covers_joint_and_says_a_scalar_alpha_balances_no_class(tmp_path):
    """CK+'s α = 0.25, γ = 0: `focal` is 0.25 × CE and `joint` (w = 1) 1.25 × CE, so every
    strategy is CE at another effective learning rate; a scalar α weights classes alike."""
    strategies = ("ce", "focal", "joint", "ce>focal")
    errors = {("ckplus", s): [1, 2, 0] for s in strategies}
    run = make_run(tmp_path / "run", datasets=("ckplus",), strategies=strategies, errors=errors)
    text = write_report(run.path).path.read_text()
    assert (
        "ckplus: the focal stage of `focal`, `ce>focal` ran with γ = 0 and α = 0.25, so its "
        "loss is exactly 0.25 × CE."
    ) in text
    assert (
        "ckplus: the joint stage of `joint` ran with γ = 0 and α = 0.25 and focal weight 1, so "
        "its loss is exactly 1.25 × CE."
    ) in text
    assert "no class balancing comes from it" in text
    assert "4 × the weight decay" in text and "weight decay ÷ 1.25" in text


def test_a_new_report_removes_the_figures_it_no_longer_links(tmp_path):
    """A group gone (here: a dataset dropped from the DAG) leaves no figure of it behind;
    a file a person put in the folder stays."""
    run = make_run(tmp_path / "run")
    out = write_report(run.path).path.parent
    assert (out / "confusion-oulu-inception_v3-heldout.png").is_file()
    (out / "notes.png").write_bytes(PNG_MAGIC)
    dag = run.path / "dag.json"
    dag.write_text(json.dumps([u for u in json.loads(dag.read_text()) if u["dataset"] != "oulu"]))
    text = write_report(run.path).path.read_text()
    assert "oulu" not in text
    assert sorted(p.name for p in out.glob("*.png")) == [
        "confusion-ckplus-inception_v3-heldout.png",
        "folds.png",
        "notes.png",
    ]


def test_synthetic_twin_is_labelled(tmp_path):
    run = make_run(tmp_path / "run", datasets=("ckplus",), synthetic=True)
    report = write_report(run.path)
    text = report.path.read_text()
    assert "**SYNTHETIC twin: `ckplus` is not ckplus data.**" in text
    assert "paper (real data)" in text and "98.8" in text
    assert "SYNTHETIC" in report.strategy_table and "paper (real data)" in report.strategy_table


def test_partial_results(tmp_path):
    skip = {
        ("ckplus", "ce>focal", 3),
        ("oulu", "ce>focal", 1),
        ("oulu", "ce>focal", 2),
        ("oulu", "ce>focal", 3),
        ("oulu", "ce", 3),
    }
    run = make_run(tmp_path / "run", skip=skip)
    report = write_report(run.path)
    text = report.path.read_text()
    ours = _mean_pm_std("ckplus", "ce>focal", folds=(1, 2))
    assert ours in text and "2/3" in text and "0/3" in text
    assert "Units done: **9 of 14**" in text
    assert "| ce>focal − ce | +7.14 | +0.00 |\n" in text  # per fold, folds 1-2 only
    assert "| ce>focal − ce | +3.57 | [" in text and "| +1 of 28 | 2 |" in text
    assert "### oulu · inception_v3 (heldout): `ce` → `ce>focal`" not in text
    assert "0/3" in report.strategy_table


def test_one_fold_gives_na_p_values(tmp_path):
    run = make_run(tmp_path / "run", datasets=("oulu",), folds=(1,))
    text = write_report(run.path).path.read_text()
    assert (
        "| ce>focal − ce | +8.33 | – | +1 of 12 | 1 | n/a | n/a | n/a | n/a "
        "| 2 vs 1: favours first |"
    ) in text
    assert "makes 1 comparison; none has a defined corrected p yet" in text


def test_nothing_finished_yet(tmp_path):
    skip = {(d, s, f) for d in ("ckplus", "oulu") for s in ("ce", "ce>focal") for f in (1, 2, 3)}
    run = make_run(tmp_path / "run", skip=skip)
    report = write_report(run.path)
    text = report.path.read_text()
    assert "No finished folds yet." in text and "No predictions stored yet." in text
    assert "0/3" in report.strategy_table
    assert not list(report.path.parent.glob("*.png"))


def test_any_strategies_and_inner_selection(tmp_path):
    errors = {("ckplus", s): [1, 2, 0] for s in ("focal", "focal>ce")}
    run = make_run(
        tmp_path / "run",
        datasets=("ckplus",),
        strategies=("focal", "focal>ce"),
        errors=errors,
        selection="inner",
    )
    report = write_report(run.path)
    text = report.path.read_text()
    assert "**inner**" in text and "not the paper's protocol" in text
    assert "| ckplus | inception_v3 | focal>ce | inner |" in text and "98.5" in text
    assert "focal>ce − focal" in text
    assert "### ckplus · inception_v3 (inner): `focal` → `focal>ce`" in text
    assert (run.path / "report" / "confusion-ckplus-inception_v3-inner.png").is_file()


def test_missing_run_dir_or_dag(tmp_path):
    with pytest.raises(FerError, match="nowhere"):
        write_report(tmp_path / "nowhere")
    with pytest.raises(FerError, match="no dag.json"):
        write_report(tmp_path)


# --- statistics, replicates and the methods section ---------------------------------------
def _png_title(path) -> str:
    with Image.open(path) as image:
        return image.text.get("Title", "")


def test_every_figure_of_a_synthetic_run_says_so(tmp_path):
    synthetic = write_report(make_run(tmp_path / "syn", synthetic=True).path).path.parent
    real = write_report(make_run(tmp_path / "real").path).path.parent
    assert sorted(p.name for p in synthetic.glob("*.png")) == sorted(
        p.name for p in real.glob("*.png")
    )
    for png in synthetic.glob("*.png"):
        assert "SYNTHETIC" in _png_title(png), png.name
    for png in real.glob("*.png"):
        assert "heldout" in _png_title(png) and "SYNTHETIC" not in _png_title(png), png.name


def test_fold_plot_floors_chance_and_majority(tmp_path):
    run = make_run(tmp_path / "run", datasets=("ckplus",))
    study = build_study(load_results(run.path))
    chance, majority = document._floors(study, study.groups[0])
    assert chance == pytest.approx(100 / 7)
    assert majority == pytest.approx(100 * 6 / 42)  # two images per class and fold, 3 folds


def test_setup_block_from_rows_and_dag(full):
    _, report = full
    text = report.path.read_text()
    assert text.index("## Setup") < text.index("## Data")
    stage1 = "| 1 | ce | ckplus, oulu | 3 | 0.01, ×0.1 after epoch 2 | 0.9 | 0.001 | 32 | 0.4 |"
    assert stage1 in text
    assert "| 2 | focal (α 0.25, γ 0) | ckplus | 3 |" in text
    assert "| 2 | focal (α none, γ 0.5) | oulu | 3 |" in text
    assert "`inception_v3` (weights `pretrained`, input 299 px)" in text
    assert "test folds run: 1–3" in text and "**Seeds**: 0." in text
    assert "requested `auto`; used: not recorded" in text
    assert "tool commit not recorded" in text and "torch 2.5.1" in text
    assert "**Deterministic algorithms**: not recorded" in text
    assert "no copy kept in this run dir" in text
    assert "**fold-mean**" in text and "**pooled** (micro)" in text


def test_setup_block_shows_recorded_lineage(tmp_path):
    extra = {
        "git_commit": "abc1234",
        "precision_used": "bfloat16",
        "deterministic": True,
        "numpy_version": "2.1.0",
        "cuda_version": "12.4",
        "cudnn_version": "90100",
    }
    run = make_run(tmp_path / "run", datasets=("ckplus",), extra_columns=extra)
    (run.path / "grid.yaml").write_text("name: fake\n")
    text = write_report(run.path).path.read_text()
    assert "tool commit abc1234" in text
    assert "numpy 2.1.0; CUDA 12.4; cuDNN 90100" in text
    assert "torchvision not recorded (these rows predate the column)" in text
    assert "timm not recorded (these rows predate the column)" in text
    assert "requested `auto`; used: bfloat16" in text
    assert "**Deterministic algorithms**: True" in text
    assert "[`grid.yaml`](../grid.yaml) in the run dir" in text


def test_setup_block_states_the_ranks_only_when_a_unit_ran_as_several_processes(tmp_path, full):
    """A data-parallel run's setup block gives world size, nodes, process-group backend and
    per-rank throughput; a run whose units each ran as one process (rows from before the
    columns existed read so) says nothing of it."""
    extra = {
        "world_size": 2,
        "nodes": 1,
        "dist_backend": "gloo",
        "rank_images_per_second": [50.0, 60.0],
    }
    run = make_run(tmp_path / "run", datasets=("ckplus",), extra_columns=extra)
    text = write_report(run.path).path.read_text()
    units = len(run.rundir.store.read("runs"))
    line = next(x for x in text.splitlines() if x.startswith("- **Processes per unit**"))
    assert f"{units} of {units} units trained data-parallel" in line
    assert "world size 2; nodes 1; process-group backend gloo" in line
    assert (
        f"per-rank throughput median 55.0 images/s (range 50.0–60.0 over {2 * units} ranks)" in line
    )
    assert "Processes per unit" not in full[1].path.read_text()
    # a unit resumed after its last epoch trained nothing in its last attempt: no rate (NaN)
    resumed = {**extra, "rank_images_per_second": [float("nan"), 70.0]}
    run = make_run(tmp_path / "resumed", datasets=("ckplus",), extra_columns=resumed)
    text = write_report(run.path).path.read_text()
    assert f"median 70.0 images/s (range 70.0–70.0 over {units} ranks)" in text


def test_augmentation_text_matches_the_library():
    from fer_core.data import augment

    assert f"horizontal flip p = {augment.P_HFLIP:g}" in methods.AUGMENTATION
    assert f"vertical flip p = {augment.P_VFLIP:g}" in methods.AUGMENTATION
    assert f"±{augment.MAX_DEGREES:g}°" in methods.AUGMENTATION


def test_holm_family_is_listed(full):
    _, report = full
    text = report.path.read_text()
    assert "makes 2 comparisons; 2 with a defined corrected p" in text and "(m = 2)" in text
    assert "1. ckplus · inception_v3 (heldout): `ce>focal` − `ce`" in text
    assert "2. oulu · inception_v3 (heldout): `ce>focal` − `ce`" in text
    assert "heldout comparisons are optimistic" in text and "k rounds of that selection" in text
    assert "keeps the chance of any false claim among these at about 5 %" in text
    assert "heuristic whose level is itself approximate" in text


def test_heldout_caveat_claims_no_more_than_inner_removes(full):
    """`inner` stops the test fold from picking epochs; α, γ and the demo's learning rate
    were still chosen on test folds, so the report does not call `inner` unbiased."""
    _, report = full
    text = report.path.read_text()
    assert "unbiased" not in text
    assert "for a comparison with no epoch selection on the test fold" in text
    assert "That is all `inner` removes" in text and "the paper's α and γ" in text


def test_one_stage_heldout_comparisons_are_not_called_biased_toward_chains(tmp_path):
    strategies = ("ce", "focal")
    errors = {("ckplus", s): [1, 2, 0] for s in strategies}
    run = make_run(
        tmp_path / "run",
        datasets=("ckplus",),
        strategies=strategies,
        errors=errors,
        selection=("heldout", "inner"),
    )
    text = write_report(run.path).path.read_text()
    section = text[text.index("## Paired comparisons") : text.index("## Per-class")]
    assert "### ckplus · inception_v3 (heldout): epochs chosen on the test fold" in section
    assert "multi-stage" not in section and "longer chain" not in section
    assert "heldout comparisons are optimistic" in section


def test_ordering_question_and_inner_headline(tmp_path):
    strategies = ("ce", "focal", "focal>ce", "ce>focal")
    errors = {("ckplus", s): [1, 2, 0] for s in strategies}
    errors[("ckplus", "ce>focal")] = [0, 1, 0]
    run = make_run(
        tmp_path / "run",
        datasets=("ckplus",),
        strategies=strategies,
        errors=errors,
        selection=("heldout", "inner"),
    )
    text = write_report(run.path).path.read_text()
    headline = text.index("### ckplus · inception_v3 (inner): headline")
    heldout = text.index("### ckplus · inception_v3 (heldout): epochs chosen on the test fold")
    assert headline < heldout
    assert "The headline comparisons below use the `inner` results: no epoch selection" in text
    assert "| ce>focal − focal>ce | +4.76 |" in text
    assert "2 vs 2: both optimistic" in text and "| 0 vs 0 |" in text
    assert "makes 10 comparisons" in text  # 5 pairs x 2 protocols, one Holm family


def test_seeds_show_between_seed_spread(tmp_path):
    errors = {("ckplus", "ce", 1): [4, 1, 3], ("ckplus", "ce>focal", 1): [1, 0, 2], **ERRORS}
    run = make_run(tmp_path / "run", datasets=("ckplus",), seeds=(0, 1), errors=errors)
    report = write_report(run.path)
    text = report.path.read_text()
    seed_means = [
        statistics.mean(accuracy("ckplus", "ce", f, errors, seed) for f in (1, 2, 3))
        for seed in (0, 1)
    ]
    row = next(r for r in text.splitlines() if r.startswith("| ckplus | inception_v3 | ce |"))
    assert f"| 2 | {statistics.stdev(seed_means):.2f} |" in row
    assert "std between seeds" in text and "std between seeds" in report.strategy_table
    assert "**Seeds**: 0, 1 (replicates" in text
    assert "**The unit of every test is the test fold**" in text
    # seed 0 wins by 1, 0, 1 images, seed 1 by 3, 1, 1: folds 2, 0.5, 1 (3 units, not 6)
    row = next(r for r in text.splitlines() if r.startswith("| ce>focal − ce |"))
    seed_means = [100 * 2 / 42, 100 * 5 / 42]  # per-seed mean differences, points
    assert f"| +3.5 of 42 | 3 | 2 | {statistics.stdev(seed_means):.2f} |" in row


def test_a_users_dataset_is_not_set_beside_the_paper(tmp_path):
    run = make_run(tmp_path / "run", datasets=("ckplus",), kinds={"ckplus": "manifest"})
    report = write_report(run.path)
    text = report.path.read_text()
    for phrase in ("Tables 2–5", "981", "paper change", "Prior art", "paper mean", "| paper |"):
        assert phrase not in text, phrase
    assert "## Accuracy by strategy\n" in text
    assert "paper" not in report.strategy_table


def test_no_paper_column_where_the_paper_has_no_number(tmp_path):
    run = make_run(tmp_path / "run", datasets=("ckplus",), backbone="tiny", synthetic=True)
    report = write_report(run.path)
    text = report.path.read_text()
    assert "paper (real data)" not in text and "paper" not in report.strategy_table
    assert "paper change" not in text
    # no paper number, no pointer to the paper's tables and no red crosses in the fold figure
    assert "cf. the paper's Tables 2–5" not in text and "paper reports 10-fold" not in text
    assert "red crosses" not in text
    # `tiny` has no aux head: the setup block shows no aux-head weight
    assert "aux-head weight" not in text


def test_paper_pointers_and_aux_weight_where_they_apply(full):
    _, report = full
    text = report.path.read_text()
    assert "(cf. the paper's Tables 2–5)" in text and "red crosses are the paper's means" in text
    assert "| batch | aux-head weight |" in text


def test_one_fold_is_not_called_folds(tmp_path):
    run = make_run(tmp_path / "run", datasets=("ckplus",), folds=(2,))
    text = write_report(run.path).path.read_text()
    assert "1 folds" not in text
    assert "Pooled over the 1 fold both have" in text and "test fold run: 2." in text
    assert "1–1" not in text and "2–2" not in text


def test_a_run_without_a_sweep_shows_no_sweep_point(tmp_path):
    """Sweep points get a column and titles (tests/orchestrator/report/test_sweep_report.py);
    a run without a sweep keeps its tables and titles as they were."""
    run = make_run(tmp_path / "run", datasets=("ckplus",))
    text = write_report(run.path).path.read_text()
    assert "Sweep:" not in text and "sweep point" not in text
    assert "| dataset | backbone | strategy | selection | headline | accuracy (%) |" in text
    assert "### ckplus · inception_v3 (heldout)\n" in text


def test_centre_crops_are_not_reported_as_failed_detections(tmp_path):
    run = make_run(tmp_path / "run", datasets=("ckplus",))
    [row] = run.rundir.store.read("prepare").to_pylist()
    run.rundir.store.write("prepare", row["unit_id"], [{**row, "detector": "center"}])
    text = write_report(run.path).path.read_text()
    assert "| center | none (centre crops) | all " in text


def test_the_methods_table_names_the_settings_each_loss_takes():
    ce = {"loss": "ce", "alpha": None, "gamma": 0.0, "joint_weight": 0.3}
    assert methods._loss_text(ce) == "ce"
    joint = {"loss": "joint", "alpha": None, "gamma": 0.5, "joint_weight": 1.0}
    assert methods._loss_text(joint) == "joint (α none, γ 0.5, focal weight 1)"
    assert methods._loss_text({"loss": "focal", "alpha": [0.5, 1.0], "gamma": 2}) == (
        "focal (α [0.5, 1.0], γ 2)"
    )


def test_a_search_split_is_not_test_accuracy_and_stays_synthetic(tmp_path):
    """`tune` re-splits a dataset's development subjects as a manifest dataset of its own
    (manifest in RUN_DIR/tune, same raw tree); its folds are the search's inner folds. Here
    `oulu` plays that split of the synthetic `ckplus`."""
    run = make_run(tmp_path / "run", synthetic=True)
    manifest = run.rundir.tune_dir / "dev-0123.csv"
    units = []
    for unit in run.rundir.read_dag():
        if unit.kind == "prepare":
            spec = {**unit.spec, "root": str(tmp_path / "twin")}
            if unit.dataset == "oulu":
                spec |= {"dataset": "manifest", "manifest": str(manifest), "synthetic": False}
            unit = replace(unit, spec=spec)
        units.append(unit)
    run.rundir.write_dag(units)
    report = write_report(run.path)
    text = report.path.read_text()
    assert "| oulu | manifest (SYNTHETIC): the development subjects of `ckplus` for" in text
    assert "inner splits run: 1–3 (the α/γ search's re-split of `ckplus`)" in text
    assert "oulu · inception_v3" not in text  # no comparisons, figures or per-class tables
    assert "| oulu |" not in text[text.index("## Accuracy by strategy") :]
    assert "oulu" not in report.strategy_table
    assert "| ckplus | inception_v3 | ce |" in text


# A fixed split (fold 0) with three seeds: wrong predictions per seed, all of happiness (the
# test set's largest class: 8 of 20 images; 2 of every other class).
FIXED_ERRORS = {
    ("rafdb", "ce", 0): [4],
    ("rafdb", "ce", 1): [2],
    ("rafdb", "ce", 2): [6],
    ("rafdb", "ce>focal", 0): [2],
    ("rafdb", "ce>focal", 1): [2],
    ("rafdb", "ce>focal", 2): [4],
}


def _mean_class(wrong: int) -> float:
    """Six classes all right, happiness (8 images) with `wrong` of them missed."""
    return 100.0 * (6 + (8 - wrong) / 8) / 7


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    run = make_run(
        tmp_path_factory.mktemp("fixed") / "run",
        datasets=("rafdb",),
        folds=(0,),
        seeds=(0, 1, 2),
        selection="inner",
        errors=FIXED_ERRORS,
        backbone="resnet18",
    )
    return run, write_report(run.path)


def test_a_fixed_split_is_drawn_per_seed_in_its_headline_metric(fixed):
    """The fold figure of a fixed split: a dot per seed (its one test set), the headline
    metric on the axis, and the majority-class floor of mean-class accuracy, which is chance."""
    from orchestrator.report.document import fold_panels

    run, _ = fixed
    (panel,) = fold_panels(build_study(load_results(run.path)))
    assert (panel.unit, panel.metric) == ("seed", "mean-class accuracy")
    assert set(panel.folds["ce"]) == {0, 1, 2}
    assert panel.folds["ce"][1] == pytest.approx(_mean_class(FIXED_ERRORS[("rafdb", "ce", 1)][0]))
    assert panel.chance == panel.majority == pytest.approx(100 / 7)


def test_a_fixed_split_is_compared_by_seed_on_its_headline_mean_class_accuracy(fixed):
    run, _ = fixed
    study = build_study(load_results(run.path))
    assert study.headline("rafdb").column == "mean_class_accuracy"
    (comparison,) = study.comparisons
    paired = comparison.paired
    assert paired.fixed and paired.folds == (0,) and paired.n == 3  # seeds: the replicates
    expected = [_mean_class(a[0]) - _mean_class(b[0]) for a, b in zip(
        [FIXED_ERRORS[("rafdb", "ce>focal", s)] for s in (0, 1, 2)],
        [FIXED_ERRORS[("rafdb", "ce", s)] for s in (0, 1, 2)], strict=True)]  # fmt: skip
    assert paired.differences == pytest.approx(expected)
    # nothing resampled: the corrected test is the paired t-test over seeds
    assert paired.test_train_ratio == 0.0
    assert paired.corrected is not None and paired.paired_t is not None
    assert paired.corrected.pvalue == pytest.approx(paired.paired_t.pvalue)


def test_the_report_of_a_fixed_split_says_so_and_shows_every_metric(fixed):
    _, report = fixed
    text = report.path.read_text()
    assert "`rafdb`: **mean-class accuracy**: the test set is imbalanced (largest class 4.0×" in (
        text
    )
    means = [_mean_class(FIXED_ERRORS[("rafdb", "ce", s)][0]) for s in (0, 1, 2)]
    accuracies = [100.0 * (20 - FIXED_ERRORS[("rafdb", "ce", s)][0]) / 20 for s in (0, 1, 2)]
    row = next(line for line in text.splitlines() if line.startswith("| rafdb | resnet18 | ce |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == "mean-class accuracy"
    assert cells[5] == f"{statistics.mean(accuracies):.2f} ± {statistics.stdev(accuracies):.2f}"
    assert cells[6] == f"{statistics.mean(means):.2f} ± {statistics.stdev(means):.2f}"
    assert cells[8] == "fixed split"
    assert "A **fixed split** has one test set and no fold variance" in text
    assert "`rafdb`: **fixed split**" in text  # the setup block
    assert (
        "- **Class imbalance**: batches shuffled (every training image once per epoch); α of "
        "the focal stages: `rafdb` none." in text
    )
    assert "paired t-test over seeds" in text
    # per-class recall: happiness is the mean over seeds of (8 - wrong) / 8
    recall = next(
        line
        for line in text.split("## Per-class recall")[1].splitlines()
        if line.startswith("| ce |")
    )
    happiness = statistics.mean(
        100 * (8 - FIXED_ERRORS[("rafdb", "ce", s)][0]) / 8 for s in (0, 1, 2)
    )
    assert recall.split("|")[1 + 1 + 3].strip() == f"{happiness:.1f}"  # column 3: happiness


def test_published_numbers_stand_beside_ours_as_other_methods(fixed):
    _, report = fixed
    section = report.path.read_text().split("## Published numbers of other methods")[1]
    section = section.split("\n## ")[0]
    assert "### RAF-DB (`rafdb`)" in section
    assert "| POSTER++ | other method (published) | 92.21 | POSTER++ (Mao et al., 2023)" in section
    assert "| DAN | other method (published) | 89.70 |" in section
    assert "| `ce>focal`, resnet18 | this run (inner) |" in section
    assert "AffectNet" not in section  # only the benchmark this run has
    assert "enter none of this report's statistics" in section


def test_no_published_numbers_for_the_papers_datasets(full):
    _, report = full
    assert "## Published numbers of other methods" not in report.path.read_text()


def test_a_real_fixed_split_run_from_a_manifest_to_its_report(tmp_path):
    """Launched for real (local backend): a manifest with a split column is prepared, its
    units train fold-less on the training split (less the stratified hold-out) and score the
    test split, and the report shows it as a fixed split."""
    root = tiny_ckplus(tmp_path / "data")
    index = build_index("ckplus", root, n_folds=2)
    rows = ["path,subject,label,split"]
    for r in index.records:  # subjects S005, S006 (6 images) test; the rest (12) train
        split = "test" if r.subject in ("S005", "S006") else "train"
        rows.append(f"{r.path},{r.subject},{r.label_name},{split}")
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"""
name: fixedrun
seeds: [0, 1]
selection: inner
datasets:
  mine:
    kind: manifest
    root: {root}
    manifest: {root / "split.csv"}
    protocol: fixed
    crop_size: 16
    detector: center
    focal: {{alpha: null, gamma: 2.0}}
backbones:
  tiny: {{input_size: 16}}
experiments:
  - backbones: [tiny]
    strategies: [ce, "ce>focal"]
train: {{epochs: 2, lr_step_epoch: 1, batch_size: 8}}
"""
    )
    rundir = launch(str(grid), run_dir=tmp_path / "run", jobs=2)
    runs = rundir.store.read("runs").to_pylist()
    assert sorted(r["unit_label"] for r in runs) == [
        "mine/fixed/tiny/ce/s0",
        "mine/fixed/tiny/ce/s1",
        "mine/fixed/tiny/ce>focal/s0",
        "mine/fixed/tiny/ce>focal/s1",
    ]
    # 12 training images, one of each of their 4 classes held out to select; 6 scored
    assert {(r["fold"], r["n_train"], r["n_test"]) for r in runs} == {(0, 8, 6)}
    predictions = rundir.store.read("predictions").to_pylist()
    assert {p["subject"] for p in predictions} == {"S005", "S006"}
    text = write_report(rundir.path).path.read_text()
    assert "`mine`: **fixed split**" in text and "| fixed split |" in text


def test_the_data_section_lists_the_rows_a_dataset_marks_as_no_expression(tmp_path):
    from orchestrator.report.sections import data_section

    run = make_run(tmp_path / "run", datasets=("ckplus", "oulu"))
    table = run.rundir.store.read("prepare")
    assert table is not None
    row = next(r for r in table.to_pylist() if r["dataset"] == "ckplus")
    row["skipped"] = json.dumps({"none": 3, "non-face": 5})
    run.rundir.store.write("prepare", row["unit_id"], [row])
    text = data_section(build_study(load_results(run.path)))
    assert "`ckplus`: rows the dataset marks as no expression, dropped: non-face 5, none 3." in text
    assert "`oulu`: rows" not in text  # no skipped column (an older row) or nothing skipped
