"""Packing: k training processes on one GPU at once — aggregate images/s and GPU utilisation.

    python bench/packing.py --backbone inception_v3 --size 299 --packs 1 2 4

Small-data trainings (an FER epoch is ~1,000 images) leave a big GPU idle between kernels;
running several units at once (Ray fractional GPUs; one SLURM GPU job running k units)
fills it. For each k this starts k processes of the fast path (bench/throughput.py's
`run_fast`) and samples `nvidia-smi` utilisation while they run. `--device cpu` runs the
same processes on the CPU (one thread each, no utilisation figure): the script's check on a
machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import threading
import time
from pathlib import Path


def _worker(backbone: str, size: int, batch: int, steps: int, device_name: str, queue) -> None:
    import torch

    from bench.throughput import run_fast, synthetic_crops
    from fer_core.losses import build_loss
    from fer_core.models import build_model
    from fer_core.train import autocast_dtype

    device = torch.device(device_name)
    if device.type == "cpu":
        torch.set_num_threads(1)
    model = build_model(backbone, 7).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, labels = synthetic_crops(512, size, 7)
    amp = autocast_dtype("auto", device)
    queue.put(
        run_fast(
            model,
            optimizer,
            build_loss("ce").to(device),
            images,
            labels,
            size,
            batch,
            steps,
            device,
            amp,
        )
    )


def _sample_utilisation(stop: threading.Event, samples: list[float]) -> None:
    while not stop.is_set():
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if out:
            samples.append(float(out.splitlines()[0]))
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="inception_v3")
    parser.add_argument("--size", type=int, default=299)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--packs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    results = []
    for k in args.packs:
        queue = ctx.Queue()
        procs = [
            ctx.Process(
                target=_worker,
                args=(args.backbone, args.size, args.batch, args.steps, args.device, queue),
            )
            for _ in range(k)
        ]
        samples: list[float] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_utilisation, args=(stop, samples))
        for p in procs:
            p.start()
        time.sleep(5)  # model build + warm-up before sampling
        on_gpu = args.device.startswith("cuda")
        if on_gpu:
            sampler.start()
        rates = [queue.get() for _ in procs]
        stop.set()
        if on_gpu:
            sampler.join()
        for p in procs:
            p.join()
        util = sum(samples) / len(samples) if samples else float("nan")
        results.append({"k": k, "img_s": sum(rates), "gpu_util": util})
        print(f"k={k}: {sum(rates):8.1f} img/s together, GPU utilisation {util:5.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
