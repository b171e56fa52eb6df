"""Planning needs no torch: the orchestrator knows nothing of tensors.

Loading a grid (its stage configs validated by the loss registry), expanding its DAG, loading
the tune grid and `launch --dry-run` run in a fresh interpreter that must end without torch
(or torchvision) imported. A module-level `import torch` anywhere on that path fails this.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

PLAN = """
import contextlib, io, json, sys
from pathlib import Path
from orchestrator.cli import main
from orchestrator.plan.dag import expand
from orchestrator.plan.grid import load_grid
from orchestrator.tune.space import load_tune

run_dir = Path(sys.argv[1])
units = expand(load_grid("demo"), run_dir, problems=[])
tune = load_tune("tune")
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(["launch", "--grid", "demo", "--dry-run", "--run-dir", str(run_dir)])
heavy = sorted(m for m in ("torch", "torchvision", "facenet_pytorch") if m in sys.modules)
print(json.dumps({"units": len(units), "trials": tune.n_trials(), "code": code,
                  "dry_run": out.getvalue(), "heavy": heavy}))
"""


def test_planning_imports_no_torch(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PLAN, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["units"] == 51 and report["code"] == 0
    assert "1 preparation job + 50 trainings" in report["dry_run"]
    assert report["trials"] >= 1
    assert report["heavy"] == []
