"""A process that dies for real (SIGKILL) between an atomic write's temp file and its rename.

    python -m tests.faults.crash_child train FACES_DIR WORK_DIR EPOCHS KILL_AT
        trains one stage; SIGKILL at the KILL_AT-th rename of a last.pt temp file
    python -m tests.faults.crash_child unit RUN_DIR UNIT_ID TABLE
        runs a unit through the worker; SIGKILL at the rename of its TABLE result file

The tests import `train` from here too, so the killed run and the reference run are the same
code with the same seeds.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from fer_core.config import StageConfig
from fer_core.data.faces import FaceSet
from fer_core.data.protocol import kfold_roles
from fer_core.models import build_model
from fer_core.train import StageOutcome, train_stage
from fer_core.unit import stage_data

CPU = torch.device("cpu")
INPUT = 48


def model_for(faces: FaceSet) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("tiny", len(faces.classes))
    model.reset_head(torch.Generator().manual_seed(0))
    return model


def train(
    faces_dir: Path,
    work_dir: Path,
    epochs: int,
    model: torch.nn.Module | None = None,
    on_epoch: Callable | None = None,
    **config,
) -> tuple[StageOutcome, torch.nn.Module]:
    """One stage of the tiny CNN on fold 1 of the prepared faces."""
    torch.set_num_threads(1)
    faces = FaceSet.load(Path(faces_dir))
    model = model if model is not None else model_for(faces)
    settings = {"epochs": epochs, "lr_step_epoch": max(1, epochs - 1), "batch_size": 64}
    stage = StageConfig(**{**settings, **config})
    data = stage_data(faces, kfold_roles(faces.folds, 1, 10, "heldout"))
    outcome = train_stage(model, data, stage, Path(work_dir), INPUT, CPU, on_epoch=on_epoch)
    return outcome, model


def die_at_rename(prefix: str, at: int) -> None:
    """SIGKILL this process at the `at`-th os.replace of a temp file named `prefix`*."""
    real = os.replace
    seen = [0]

    def replace(src, dst, *args, **kwargs):
        if Path(src).name.startswith(prefix):
            seen[0] += 1
            if seen[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *args, **kwargs)

    os.replace = replace


def main(argv: list[str]) -> None:
    if argv[0] == "train":
        faces_dir, work_dir, epochs, kill_at = argv[1:]
        die_at_rename(".tmp-last.pt.", int(kill_at))
        train(Path(faces_dir), Path(work_dir), int(epochs))
    elif argv[0] == "unit":
        from orchestrator.run import worker

        run_dir, unit_id, table = argv[1:]
        die_at_rename(f".tmp-{unit_id}.parquet.", 1 if table == "predictions" else 3)
        worker.run(run_dir, unit_id)
    sys.exit(3)  # not reached when the kill happened


if __name__ == "__main__":
    main(sys.argv[1:])
