"""The data path at scale: JPEG files + PIL vs the on-disk crop store vs copying a ready batch.

    .venv/bin/python bench/data_path.py --n 200000 --size 112 --dir /tmp/data-path-bench

Writes a synthetic set of `--n` face-crop-like images at `--size` px as `fer_core.data.store`
shards (what `prepare_faces` writes for a large dataset), and as JPEG files (the usual layout)
the rows that (a) reads (writing 200k JPEGs would take most of the run; decoding one does not
depend on how many others exist), then times, in one random order, `--batch` images at a time:
(a) usual: JPEG decode + the per-image torchvision transforms (resize, flips, rotation,
    to-tensor, normalise) in a `DataLoader` with `--workers` processes;
(b) store: `fer_core.train.batches` (the same number of worker processes read uint8 batches
    by index with positioned reads) — the batches a unit receives; the augmentation then runs
    on the device (`b+aug` adds it here on the CPU, for a CPU-only machine);
(c) bound: copying a ready uint8 batch of the same shape.
(b) runs in a fresh process, so its peak RSS (its own VmHWM, and its largest worker's
`ru_maxrss`, which includes what the worker shares with it) is its own, not the writing's.
Prints images/s, b/a, b/c and that peak RSS; `--json` writes them. Asserts nothing. The set
is deleted afterwards (7.5 GB at the defaults); `--keep` leaves it for a rerun to reuse.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bench.throughput import pil_train_transform
from fer_core.data.augment import train_transform
from fer_core.data.store import CropStore, ShardRows, write_store
from fer_core.heap import fix_mmap_threshold
from fer_core.progressbar import ProgressBar
from fer_core.train import batches

CPU = torch.device("cpu")


def synthetic_rows(start: int, stop: int, size: int) -> np.ndarray:
    """Face-crop-like uint8 images (smooth blobs plus noise), the same for the same rows."""
    g = torch.Generator().manual_seed(start)
    k = stop - start
    base = torch.nn.functional.interpolate(
        torch.rand(k, 3, 8, 8, generator=g), size=size, mode="bilinear", align_corners=False
    )
    images = (base * 0.8 + 0.2 * torch.rand(k, 3, size, size, generator=g)) * 255
    return images.byte().numpy()


CHUNK = 2048  # rows generated at a time (bounds the writer's memory)


def write_set(folder: Path, n: int, size: int, jpeg_rows: list[int]) -> list[Path]:
    """The store of n crops (kept when already complete) and the JPEG files of `jpeg_rows`."""

    def rows(start: int, stop: int, tick) -> ShardRows:  # type: ignore[no-untyped-def]
        images = np.empty((stop - start, 3, size, size), np.uint8)
        for lo in range(start, stop, CHUNK):
            hi = min(stop, lo + CHUNK)
            images[lo - start : hi - start] = synthetic_rows(lo, hi, size)
            tick(hi - lo)
        k = stop - start
        return ShardRows(
            images, np.zeros((k, 4), np.float32), np.zeros(k, bool), np.zeros(k, np.float32)
        )

    bar = ProgressBar("writing the store")
    write_store(folder / "crops", n, size, f"bench-{n}-{size}", rows, bar)
    bar.close()
    store = CropStore(folder / "crops")
    (folder / "jpeg").mkdir(exist_ok=True)
    paths = [folder / "jpeg" / f"{i:07d}.jpg" for i in jpeg_rows]
    for i, path in zip(jpeg_rows, paths, strict=True):
        if not path.is_file():
            Image.fromarray(store[i].numpy().transpose(1, 2, 0)).save(path, quality=90)
    return paths


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM). Not `ru_maxrss`: Linux carries that over an exec
    from the parent, so a child of a big parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_store(args: argparse.Namespace, rows: torch.Tensor) -> dict[str, float]:
    """(b) and (b+aug), and the peak RSS of this process and its largest loader worker."""
    store = CropStore(args.dir / "crops")
    device = torch.device(args.device)
    b = rate(batches(store, rows, args.batch, device), args.batch, args.steps)
    peak = peak_rss_mib()
    peak_workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    g = torch.Generator(device=device).manual_seed(0)
    b_aug = rate(
        batches(store, rows, args.batch, device),
        args.batch,
        args.steps,
        lambda x: train_transform(x, args.size, g),
    )
    return {"b": b, "b_aug": b_aug, "peak": peak, "peak_workers": peak_workers}


class JpegFiles(Dataset[torch.Tensor]):
    """(a): one JPEG per crop, decoded and transformed per image."""

    def __init__(self, paths: list[Path], size: int):
        self.paths, self.transform = paths, pil_train_transform(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as image:
            out: torch.Tensor = self.transform(image.convert("RGB"))
            return out


def rate(batches_iter, batch: int, count: int, work=None) -> float:  # type: ignore[no-untyped-def]
    """Images/s over `count` batches after two warm-up batches (workers starting)."""
    start = 0.0
    for done, x in enumerate(batches_iter, start=1):
        if work is not None:
            work(x)
        if done == 2:
            start = time.perf_counter()
        if done == count + 2:
            break
    return count * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100, help="batches timed per path")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/data-path-bench"))
    parser.add_argument("--device", default="cpu", help="where (b+aug) augments")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--measure-store", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    fix_mmap_threshold()  # as train_stage does
    order = torch.randperm(args.n, generator=torch.Generator().manual_seed(0))
    rows = order[: (args.steps + 2) * args.batch]
    if args.measure_store:  # the child process of (b)
        print(json.dumps(measure_store(args, rows)))
        return
    paths = write_set(args.dir, args.n, args.size, rows.tolist())
    child = subprocess.run(
        [sys.executable, *sys.argv, "--measure-store"], capture_output=True, text=True, check=True
    )
    measured = json.loads(child.stdout.strip().splitlines()[-1])
    b, b_aug = measured["b"], measured["b_aug"]
    device = torch.device(args.device)
    ready = CropStore(args.dir / "crops").gather(rows[: args.batch].numpy()).to(device)
    c = rate((ready.clone() for _ in iter(int, 1)), args.batch, args.steps)
    loader = DataLoader(
        JpegFiles(paths, args.size),
        batch_size=args.batch,
        num_workers=args.workers,
        persistent_workers=True,
    )
    a = rate(iter(loader), args.batch, args.steps)
    figures = {
        "n": args.n,
        "size": args.size,
        "batch": args.batch,
        "workers": args.workers,
        "device": str(device),
        "store_bytes": sum(p.stat().st_size for p in (args.dir / "crops").glob("*.npy")),
        "a_jpeg_pil_images_per_s": round(a, 1),
        "b_store_images_per_s": round(b, 1),
        "b_plus_augment_images_per_s": round(b_aug, 1),
        "c_copy_images_per_s": round(c, 1),
        "b_over_a": round(b / a, 2),
        "b_over_c": round(b / c, 3),
        "b_peak_rss_mib": round(measured["peak"], 1),
        "b_peak_worker_rss_mib": round(measured["peak_workers"], 1),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    if not args.keep:
        shutil.rmtree(args.dir)


if __name__ == "__main__":
    sys.exit(main())
