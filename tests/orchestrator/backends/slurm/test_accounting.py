"""What the cluster time bought, on the real one-node SLURM: every attempt's `resources` row
(worker and sacct), one batched sacct for all jobs, a timeline with a bar per attempt
(the requeued one too), per-kind resources and site flags reaching the jobs, and a job that
runs the interpreter of the virtualenv its `setup:` line activated."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from PIL import Image

from orchestrator.backends.slurm.accounting import record_accounting
from orchestrator.backends.slurm.backend import SlurmBackend
from orchestrator.backends.slurm.control import Retry
from orchestrator.plan.profiles import load_profile
from orchestrator.report.cost import TIMELINE_FIGURE, timeline_bars
from orchestrator.report.document import write_report
from orchestrator.run.launch import launch
from orchestrator.run.resources import resource_rows
from orchestrator.run.status import print_status
from tests.helpers import (
    job_logs,
    prepare_run,
    small_grid,
    tiny_ckplus,
    wait_mid_training,
    wait_requeued_to_end,
)
from tests.orchestrator.backends.slurm.test_backend import units_by_role


def _virtualenv(folder: Path) -> Path:
    """A fresh virtualenv that sees this one's packages (a .pth file): activated in the job,
    its interpreter is the one `python` finds."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    purelib = Path(
        sysconfig.get_paths(vars={"base": str(folder), "platbase": str(folder)})["purelib"]
    )
    (purelib / "shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return folder


def _counting_sacct(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """sacct on PATH that logs each call's arguments, then runs the real one."""
    real = shutil.which("sacct")
    assert real is not None
    calls = folder / "sacct.calls"
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {real} "$@"\n')
    (bin_dir / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def _gather_interval_s() -> float | None:
    """How often this SLURM samples a step's MaxRSS; None when it gathers nothing."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True)
    if "jobacct_gather/none" in config.stdout:
        return None
    found = re.search(r"JobAcctGatherFrequency\s*=\s*(?:task=)?(\d+)", config.stdout)
    return float(found.group(1)) if found else 30.0  # SLURM's default


@pytest.mark.slurm
def test_resources_of_every_attempt_one_sacct_timeline_and_the_jobs_own_settings(
    tmp_path, twin_root, monkeypatch
):
    venv = _virtualenv(tmp_path / "venv")
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        "cost:\n"
        "  backend: slurm\n"
        "  partition: debug\n"
        "  cpus_per_job: 1\n"
        "  mem_gb: 1\n"
        "  time_min: 10\n"
        f"  setup: ['source {venv}/bin/activate']\n"
        "  python: python\n"
        "  extra_sbatch: {mail-type: NONE, begin: now}\n"
        "  resources: {prepare: {time_min: 7, mem_gb: 2}}\n"
    )
    grid = tmp_path / "cost.yaml"
    grid.write_text(
        small_grid(name="cost", folds="[1]", epochs=6, crop=48, image_size=(64, 48), root=twin_root)
    )
    run = tmp_path / "run"
    roles = units_by_role(grid, run)
    rundir = launch(str(grid), cluster="cost", cluster_file=cluster, run_dir=run)
    backend = SlurmBackend(load_profile("cost", cluster))
    try:
        # The second stage is requeued mid-training (USR2, as before a time limit).
        stage2 = roles["s2f1"]
        wait_mid_training(rundir, stage2.id, 2, 6, 240, job_logs(rundir))
        job = str(rundir.submissions()[stage2.id]["job_id"])
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        wait_requeued_to_end(backend, rundir, job, 240, "the requeued stage 2")
    finally:
        with contextlib.suppress(Exception):
            backend.cancel(rundir)

    # The jobs' own settings: the preparation job's resources, the site's flags.
    scripts = {
        unit: (run / "arrays" / str(record["array"])).glob("*_submission.sh")
        for unit, record in rundir.submissions().items()
    }
    prepare_script = next(scripts[roles["prepare"].id]).read_text()
    stage1_script = next(scripts[roles["s1f1"].id]).read_text()
    assert "#SBATCH --time=7\n" in prepare_script and "#SBATCH --mem=2GB\n" in prepare_script
    assert "#SBATCH --time=10\n" in stage1_script and "#SBATCH --mem=1GB\n" in stage1_script
    assert (
        "#SBATCH --mail-type=NONE\n" in stage1_script and "#SBATCH --begin=now\n" in stage1_script
    )

    # One sacct with --duplicates for all the run's jobs, whatever status asks besides.
    calls = _counting_sacct(tmp_path, monkeypatch)
    out = io.StringIO()
    print_status(rundir, backend, out=out)
    accounting = [c for c in calls.read_text().splitlines() if "--duplicates" in c]
    assert len(accounting) == 1, calls.read_text()
    jobs = {str(r["job_id"]).partition("_")[0] for r in rundir.submissions().values()}
    assert len(jobs) == 3 and all(j in accounting[0] for j in jobs)
    assert "GPU-hours, " in out.getvalue() and "CPU-hours over" in out.getvalue()

    rows = resource_rows(rundir)
    by_unit: dict[str, list[dict]] = {}
    for row in rows:
        by_unit.setdefault(row["unit_id"], []).append(row)
    assert set(by_unit) == {u.id for u in roles.values()}
    assert [r["requeue"] for r in by_unit[stage2.id]] == [0, 1], by_unit[stage2.id]
    last = [attempts[-1] for attempts in by_unit.values()]
    for row in last:
        assert row["state"] == "COMPLETED", row
        assert row["queue_wait_s"] is not None and row["queue_wait_s"] >= 0, row
        assert row["elapsed_s"] is not None and row["elapsed_s"] > 0, row
        assert row["max_rss_mb"] is not None and row["max_rss_mb"] > 10, row
        assert 0 < row["cpu_efficiency"] <= 1.05, row
        assert row["cpus"] == 1 and row["gpus"] == 0
        # the interpreter of the virtualenv the setup line activated
        assert row["python"] == str(venv / "bin" / "python"), row

    # The report: a cost section and one bar per attempt, the requeued one marked.
    report = write_report(run)
    text = report.path.read_text()
    assert "### Cluster time used" in text and f"]({TIMELINE_FIGURE})" in text
    assert "- prepare: mem_gb 2 requested" in text and "- tiny: mem_gb 1 requested" in text
    units = {u.id: u for u in rundir.read_dag()}
    bars = timeline_bars(rows, units)
    assert len(bars) == len(rows) == 4
    assert [b.state for b in bars if b.label.startswith(stage2.name)] == ["requeued", "done"]
    title = Image.open(report.path.parent / TIMELINE_FIGURE).text["Title"]
    assert title.startswith("4 attempts of 3 units")

    interval = _gather_interval_s()
    if interval is None:
        pytest.skip("this SLURM's JobAcctGatherType is none: sacct has no MaxRSS to check")
    # MaxRSS is sampled: an attempt that ran a few sampling intervals has at least one sample
    sampled = [row for row in last if row["elapsed_s"] >= 3 * interval]
    assert sampled, (interval, last)
    assert all(row["sacct_max_rss_mb"] for row in sampled), sampled


def test_a_relaunched_units_first_job_known_only_to_sacct_is_accounted_with_its_kind(
    tmp_path, monkeypatch
):
    """A job killed before its worker wrote a row (out of memory, a node lost), then a
    re-launch before any `status`: submissions.json keeps the first job beside the new one,
    so the one sacct call finds both attempts, each naming its unit's kind, and asks from
    the first job's submission on, days before the second's. (sacct here is a stand-in
    printing two lines and keeping its arguments: no cluster needed.)"""
    grid = tmp_path / "grid.yaml"
    grid.write_text(small_grid(root=tiny_ckplus(tmp_path / "ck", subjects=10), epochs=1))
    rundir, roles = prepare_run(grid, tmp_path / "run")
    unit = roles["s1f1"]
    for job in ("77_0", "78_0"):
        rundir.record_submissions({unit.id: {"backend": "slurm", "job_id": job}})
    records = rundir.submissions()
    record = records[unit.id]
    (first,) = record["earlier_jobs"]
    assert (record["job_id"], record["attempts"]) == ("78_0", 2)
    assert (first["backend"], first["job_id"]) == ("slurm", "77_0")
    first["submitted_at"] = record["submitted_at"] - 5 * 86400  # five days before the second
    rundir.submissions_path.write_text(json.dumps(records))
    lines = [
        f"{job}|2026-12-06T04:0{m}:00|2026-12-06T04:0{m}:00|2026-12-06T04:0{m}:05|"
        f"2026-12-06T04:0{m}:35|30|00:20.000|0|billing=1,cpu=1,node=1|{state}|0:0|vm"
        for job, m, state in (("77_0", 1, "OUT_OF_MEMORY"), ("78_0", 3, "COMPLETED"))
    ]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    args = tmp_path / "sacct.args"
    (bin_dir / "sacct").write_text(
        f"#!/bin/sh\necho \"$@\" > {args}\nprintf '%s\\n' "
        + " ".join(f"'{x}'" for x in lines)
        + "\n"
    )
    (bin_dir / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert record_accounting(rundir, Retry(0, 0.0)) == 2
    start = args.read_text().split()[args.read_text().split().index("-S") + 1]
    asked_from = time.mktime(time.strptime(start, "%Y-%m-%dT%H:%M:%S"))
    assert asked_from <= first["submitted_at"]
    rows = resource_rows(rundir)
    assert [(r["job_id"], r["kind"], r["state"], r["attempt"]) for r in rows] == [
        ("77_0", "train", "OUT_OF_MEMORY", 1),
        ("78_0", "train", "COMPLETED", 2),
    ]
