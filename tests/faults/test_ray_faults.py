"""Faults on a real local Ray (started by the launch itself): a trial's worker process
SIGKILLed mid-training is retried by Tune (FailureConfig) and resumes from the unit's
checkpoint; and while that Ray runs, every port it listens on is on loopback.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from orchestrator.run.rundir import RunDir
from tests.helpers import (
    Background,
    assert_grid_done_once,
    epochs_done,
    launched_roles,
    study_grid,
    wait_mid_training,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EPOCHS = 6  # the kill lands after epoch 2, with epochs left to resume
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _start_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[19])


def trial_processes(log: Path) -> list[int]:
    """Processes whose stdout is the unit's ray.log: the trial running it."""
    found = []
    for fd in Path("/proc").glob("[0-9]*/fd/1"):
        try:
            if os.readlink(fd) == str(log):
                found.append(int(fd.parent.parent.name))
        except OSError:
            continue
    return found


def ray_listeners(since_ticks: int) -> list[tuple[str, str]]:
    """(local address, process) of every TCP/UDP listener of a Ray process started after
    `since_ticks` (this test's Ray, not another one on the machine)."""
    out = subprocess.run(["ss", "-ltunpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        local = fields[4]
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', line):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                started = _start_ticks(int(pid))
            except OSError:
                continue
            if "ray" in cmdline and started >= since_ticks:
                found.append((local, f"{name}[{pid}]"))
    return found


def _host(local: str) -> str:
    host = local.rsplit(":", 1)[0].strip("[]").split("%")[0]
    return host.removeprefix("::ffff:")  # an IPv4-mapped IPv6 address (gRPC listens so)


@pytest.fixture(scope="module")
def killed_trial_run(prepared_template, twin_root, cluster_file, tmp_path_factory):
    """A Ray launch of one EPOCHS-epoch unit whose trial process is SIGKILLed after epoch 2."""
    tmp = tmp_path_factory.mktemp("ray-faults")
    grid = tmp / "grid.yaml"
    grid.write_text(study_grid(twin_root, epochs=EPOCHS))
    run = tmp / "run"
    shutil.copytree(prepared_template / "data", run / "data")
    shutil.copytree(prepared_template / "store" / "prepare", run / "store" / "prepare")
    args = ("launch", "--grid", grid, "--cluster", "ray", "--cluster-file", cluster_file)
    launcher = Background(*args, "--run-dir", run, cwd=tmp, name="ray")
    rundir = RunDir(run)
    facts: dict = {}
    try:
        since = _start_ticks(launcher.pid)
        unit = launched_roles(run, launcher)["s1f1"]
        log = rundir.unit_dir(unit.id) / "ray.log"
        wait_mid_training(rundir, unit.id, 2, EPOCHS - 2, 300, explain=launcher.output)
        facts["listeners"] = ray_listeners(since)
        pids = trial_processes(log)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        facts["killed_after_epoch"] = epochs_done(rundir, unit.id)
        facts["code"] = launcher.wait(400)
    finally:
        launcher.kill_group()
    facts.update(rundir=rundir, unit=unit, output=launcher.output())
    return facts


def test_a_killed_trial_is_retried_from_its_checkpoint_and_the_grid_completes(killed_trial_run):
    """Fault: the Ray worker process running a unit's trial is SIGKILLed mid-training.
    Expect: Tune retries the trial (FailureConfig), the unit resumes from its last epoch
    checkpoint, the launch succeeds, one row set lands."""
    facts = killed_trial_run
    assert facts["code"] == 0, facts["output"]
    assert "its trial process died" in facts["output"]  # the launch says it retried
    rundir, unit = facts["rundir"], facts["unit"]
    row = assert_grid_done_once(rundir, EPOCHS)[unit.id]
    assert row["resumed_from_epoch"] >= facts["killed_after_epoch"] >= 2
    assert row["scheduler"] == "ray" and rundir.failure(unit.id) is None


def test_ray_listens_on_loopback_only_and_runs_no_dashboard(killed_trial_run):
    listeners = killed_trial_run["listeners"]
    assert listeners, "no listening Ray process found while the launch ran"
    exposed = [(a, p) for a, p in listeners if _host(a) not in LOOPBACK]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"
    assert not [a for a, _ in listeners if a.endswith(":8265")], "a dashboard is running"
