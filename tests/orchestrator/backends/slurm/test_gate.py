"""The SLURM tests' gate (tests.helpers.slurm_gate): on a machine whose `sbatch` belongs to
some other cluster (a university login node), `pytest` skips them with the reason and submits
nothing. Run in a pytest subprocess over a real SLURM test file, with stand-in `sbatch` and
`scontrol` first on PATH: the stand-in sbatch records every call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SLURM_TESTS = REPO / "tests" / "orchestrator" / "backends" / "slurm" / "test_local_slurm.py"


def _stand_ins(folder: Path, cluster: str, conf: Path) -> Path:
    """sbatch/scontrol stand-ins: scontrol reports `cluster` on `conf`; sbatch appends its
    arguments to the returned file (absent until it is called)."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    calls = folder / "sbatch.calls"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho 4242\n')
    (bin_dir / "scontrol").write_text(
        f'#!/bin/sh\necho "$@" >> {calls}.scontrol\n'
        f'echo "ClusterName             = {cluster}"\necho "SLURM_CONF              = {conf}"\n'
    )
    for tool in ("sbatch", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    return calls


@pytest.mark.parametrize(
    ("opt_in", "cluster", "conf_first_line", "reason"),
    [
        ("1", "uni", "# Written by scripts/local_slurm.sh", "scontrol reports cluster 'uni'"),
        ("1", "fer", "# the university's own slurm.conf", "scripts/local_slurm.sh did not write"),
        (None, "fer", "# Written by scripts/local_slurm.sh", "only with FER_TEST_SLURM=1"),
    ],
    ids=["another-cluster", "a-real-cluster-named-fer", "no-opt-in"],
)
def test_slurm_tests_are_skipped_off_the_projects_cluster(
    tmp_path, opt_in, cluster, conf_first_line, reason
):
    conf = tmp_path / "slurm.conf"
    conf.write_text(f"{conf_first_line}\nClusterName={cluster}\n")
    calls = _stand_ins(tmp_path, cluster, conf)
    env = {k: v for k, v in os.environ.items() if k not in ("FER_TEST_SLURM", "FER_SLURM_CLUSTER")}
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    if opt_in is not None:
        env["FER_TEST_SLURM"] = opt_in
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "--basetemp", str(tmp_path / "pt"), str(SLURM_TESTS)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "skipped" in out and "passed" not in out and "failed" not in out, out
    assert reason in out, out
    assert not calls.exists(), f"the stand-in sbatch was called: {calls.read_text()}"
