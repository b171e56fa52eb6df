"""One rank of a data-parallel training stage, as a process of its own (real gloo, env://).

    python -m tests.fer_core.rank_child OUT_DIR WORK_DIR EPOCHS [kill]

Rank and world come from the environment a backend would set (`fer_core.ranks`); without it
the process is a one-process unit, the reference. It trains a small model with neither
BatchNorm nor dropout (so W ranks should take the steps one process takes), scores the
selection rows, and saves the final weights, history and probabilities to
OUT_DIR/rank<r>.pt; a FerError's message goes to OUT_DIR/rank<r>.err. `kill`: rank 1 kills
itself with SIGKILL once rank 0 has finished an epoch (progress.json).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from torch import nn

from fer_core.config import StageConfig
from fer_core.distributed import process_group
from fer_core.errors import FerError
from fer_core.train import PROGRESS, StageData, score_rows, train_stage

IMAGES, TRAIN, CLASSES, SIZE = 100, 67, 4, 16  # 67 training images: a last batch of 3


def data() -> StageData:
    generator = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (IMAGES, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, CLASSES, (IMAGES,), generator=generator)
    rows = torch.arange(IMAGES)
    return StageData(images, labels, rows[:TRAIN], rows[TRAIN:], CLASSES)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, CLASSES),
    )


def kill_after_first_epoch(work_dir: Path) -> None:
    def watch() -> None:
        while True:
            try:
                if json.loads((work_dir / PROGRESS).read_text())["epoch"] >= 1:
                    os.kill(os.getpid(), signal.SIGKILL)
            except (OSError, ValueError):
                pass
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


def main(out: Path, work_dir: Path, epochs: int, kill: bool) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    config = StageConfig(epochs=epochs, lr=0.05, lr_step_epoch=None, batch_size=16, seed=3)
    stage = data()
    net = model()
    try:
        with process_group("cpu") as (group, device):
            if kill and rank == 1:
                kill_after_first_epoch(work_dir)
            try:
                outcome = train_stage(net, stage, config, work_dir, SIZE, device, group=group)
                scored = score_rows(
                    net,
                    stage.images,
                    stage.select_rows,
                    stage.select_labels,
                    SIZE,
                    device,
                    group=group,
                )
            except RuntimeError as exc:
                raise group.failure(exc) from exc
    except FerError as exc:
        (out / f"rank{rank}.err").write_text(str(exc))
        raise SystemExit(1) from None
    torch.save(
        {
            "weights": net.state_dict(),
            "selection": [e["selection_accuracy"] for e in outcome.epochs],
            "train_loss": [e["train_loss"] for e in outcome.epochs],
            "probabilities": scored.probabilities,
            "rank_images_per_second": outcome.rank_images_per_second,
        },
        out / f"rank{rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:] == ["kill"])
