"""Project the paper grid's GPU-hours from measured throughput and per-unit start-up.

    .venv/bin/python bench/grid_cost.py --throughput figures.json --startup-s 25
    .venv/bin/python bench/grid_cost.py --usual 180 --fast 900 --startup-s 25

Throughput figures come from `bench/throughput.py --json` (images/s of the usual pipeline and
of the fast path for one backbone on one device); start-up is process start -> first
training step (the `startup_seconds` column of `runs`). Every unit of `jobs/paper.yaml` is
costed: its epochs x (training images + selection images, evaluated at ~3x the training
rate) / throughput + start-up. Dataset sizes are the real ones (CK+ 981, Oulu 1440 images;
9 of 10 folds train). Prints hours per pipeline and the ratio; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from orchestrator.plan.dag import expand
from orchestrator.plan.grid import load_grid

IMAGES = {"ckplus": 981, "oulu": 1440}
EVAL_SPEEDUP = 3.0  # a forward pass without backward or augmentation


def unit_seconds(unit, images_per_second: float, startup: float) -> float:
    total = IMAGES[unit.spec["dataset"]]
    train, select = total * 0.9, total * 0.1
    epochs = unit.spec["config"]["epochs"]
    per_epoch = train / images_per_second + select / (images_per_second * EVAL_SPEEDUP)
    return epochs * per_epoch + startup


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--throughput", help="JSON written by bench/throughput.py --json")
    parser.add_argument("--usual", type=float, help="usual pipeline images/s")
    parser.add_argument("--fast", type=float, help="fast path images/s")
    parser.add_argument("--startup-s", type=float, default=20.0, help="per-unit start-up (s)")
    parser.add_argument("--usual-startup-s", type=float, help="start-up of the usual pipeline")
    args = parser.parse_args(argv)
    if args.throughput:
        figures = json.loads(Path(args.throughput).read_text())
        usual, fast = figures["usual_img_s"], figures["fast_img_s"]
        label = f"{figures['backbone']} @ {figures['size']}px on {figures['device']}"
    else:
        if args.usual is None or args.fast is None:
            parser.error("give --throughput FILE or both --usual and --fast")
        usual, fast, label = args.usual, args.fast, "given figures"
    usual_startup = args.usual_startup_s if args.usual_startup_s is not None else args.startup_s

    with tempfile.TemporaryDirectory() as tmp:
        problems: list[str] = []
        units = [u for u in expand(load_grid("paper"), Path(tmp), problems) if u.kind == "train"]
    hours_usual = sum(unit_seconds(u, usual, usual_startup) for u in units) / 3600
    hours_fast = sum(unit_seconds(u, fast, args.startup_s) for u in units) / 3600
    startup_share = len(units) * args.startup_s / 3600 / hours_fast
    print(f"paper grid: {len(units)} trainings; throughput from {label}")
    print(f"  usual pipeline  {usual:8.1f} img/s  -> {hours_usual:7.1f} GPU-hours")
    print(f"  fast path       {fast:8.1f} img/s  -> {hours_fast:7.1f} GPU-hours")
    print(
        f"  saving: {hours_usual / hours_fast:.2f}x; start-up is {startup_share:.0%} of the "
        f"fast path's time ({args.startup_s:.0f} s per unit)"
    )


if __name__ == "__main__":
    main()
