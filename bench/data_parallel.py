"""Data-parallel scaling: one training stage as 1 rank vs W ranks (fer_core's trainer, D-24).

    python bench/data_parallel.py --device cpu --procs 1 2                  # gloo, this machine
    python bench/data_parallel.py --device cuda --procs 1 2 4 8 --backbone resnet18 --size 224

For each W it starts W processes with torch's env:// variables (as the local backend does),
each runs `fer_core.train.train_stage` on synthetic crops with the same global batch, and
rank 0 reports the stage's images per second (every image of the epoch over rank 0's busy
time, selection scoring included: a small selection set keeps that minor). Printed: images/s
per W, the speed-up over W = 1 measured in the same run, and the scaling efficiency
(speed-up / W). On CPU each rank gets `--threads` threads, and W = 1 gets the same per-rank
budget, so the ideal speed-up is W when the machine has W x threads cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rank_main(args: argparse.Namespace) -> None:
    """One rank: train a stage on synthetic crops; rank 0 writes its figures to --result."""
    import torch

    from bench.throughput import synthetic_crops
    from fer_core.config import StageConfig
    from fer_core.distributed import process_group
    from fer_core.models import build_model
    from fer_core.train import StageData, train_stage

    torch.set_num_threads(args.threads)
    images, labels = synthetic_crops(args.images + args.select, args.size, 7)
    rows = torch.arange(len(images))
    data = StageData(images, labels, rows[: args.images], rows[args.images :], 7)
    config = StageConfig(
        epochs=args.epochs, lr_step_epoch=None, batch_size=args.batch, precision="auto"
    )
    torch.manual_seed(0)
    model = build_model(args.backbone, 7)
    with process_group(args.device) as (group, device):
        with tempfile.TemporaryDirectory() as work:
            outcome = train_stage(model, data, config, Path(work), args.size, device, group=group)
        if group.leader:
            figures = {
                "world": group.world,
                "images_per_second": outcome.images_per_second,
                "rank_images_per_second": outcome.rank_images_per_second,
                "backend": group.backend,
            }
            Path(args.result).write_text(json.dumps(figures))


def run(args: argparse.Namespace, world: int) -> dict:
    """Start `world` ranks of this script and return rank 0's figures."""
    from fer_core.ranks import free_port, rank_env

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        port = free_port()
        argv = [sys.executable, "-m", "bench.data_parallel", *sys.argv[1:], "--rank-child"]
        argv += ["--result", str(result)]
        procs = []
        for rank in range(world):
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
            if world > 1:
                env.update(rank_env(rank, world, port, timeout_s=600))
            procs.append(subprocess.Popen(argv, env=env, cwd=ROOT))
        codes = [p.wait() for p in procs]
        if any(codes):
            raise SystemExit(f"W={world}: ranks exited with {codes}")
        return dict(json.loads(result.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--batch", type=int, default=64, help="the global batch")
    parser.add_argument("--images", type=int, default=4096, help="training images")
    parser.add_argument("--select", type=int, default=64, help="selection images")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per rank")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json")
    parser.add_argument("--rank-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_child:
        rank_main(args)
        return
    results = [run(args, world) for world in args.procs]
    base = next((r for r in results if r["world"] == 1), results[0])
    print(f"{args.backbone} @ {args.size}, global batch {args.batch}, {args.device}:")
    print("| ranks | backend | images/s | per rank | speed-up | efficiency |")
    print("|---:|---|---:|---|---:|---:|")
    for r in results:
        speedup = r["images_per_second"] / base["images_per_second"]
        r["speedup"], r["efficiency"] = speedup, speedup / r["world"]
        ranks = ", ".join(f"{v:.0f}" for v in r["rank_images_per_second"])
        print(
            f"| {r['world']} | {r['backend']} | {r['images_per_second']:.1f} | {ranks} | "
            f"{speedup:.2f}x | {r['efficiency']:.0%} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
