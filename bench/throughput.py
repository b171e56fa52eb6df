"""Training throughput: the usual FER pipeline vs fer_core's fast path vs the compute bound.

    .venv/bin/python bench/throughput.py --backbone tiny --size 48            # CPU here
    .venv/bin/python bench/throughput.py --backbone inception_v3 --size 299   # on a GPU

(a) usual: face crops as PNG files, `ImageFolder`-style PIL loading and per-image torchvision
    transforms in a `DataLoader`, fp32;
(b) fast: the crops held once as a uint8 tensor on the device, batched augmentation on the
    device, autocast (bf16/fp16) on CUDA, channels-last — what `fer_core.train` does;
(c) bound: the same model stepping on one synthetic batch already on the device.
All three run in this process, on the same device, with the same model and batch size.
Prints images/s and the ratios b/a and b/c; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from fer_core.config import StageConfig
from fer_core.data.augment import MAX_DEGREES, MEAN, P_HFLIP, P_VFLIP, STD, train_transform
from fer_core.losses import build_loss
from fer_core.models import build_model
from fer_core.train import autocast_dtype


def pil_train_transform(
    out_size: int,
    p_hflip: float = P_HFLIP,
    p_vflip: float = P_VFLIP,
    degrees: float = MAX_DEGREES,
) -> Callable[[Image.Image], torch.Tensor]:
    """(a)'s transforms: the usual per-image torchvision pipeline for the augmentation that
    `fer_core.data.augment.train_transform` does batched (PIL in, tensor out). Note that
    RandomRotation's default interpolation is nearest; the batched one is bilinear."""
    from torchvision import transforms

    pipeline = transforms.Compose(
        [
            transforms.Resize((out_size, out_size)),
            transforms.RandomHorizontalFlip(p_hflip),
            transforms.RandomVerticalFlip(p_vflip),
            transforms.RandomRotation(degrees),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    return pipeline


class CropFiles(Dataset):
    """ImageFolder-style: one PNG per face crop, decoded and transformed per image."""

    def __init__(self, paths: list[Path], labels: list[int], transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), self.labels[i]


def synthetic_crops(n: int, crop: int, classes: int, seed: int = 0):
    """Face-crop-like uint8 images (smooth blobs plus noise) and labels."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(
        torch.rand(n, 3, 8, 8, generator=g), size=crop, mode="bilinear", align_corners=False
    )
    images = ((base * 0.8 + 0.2 * torch.rand(n, 3, crop, crop, generator=g)) * 255).byte()
    return images, torch.randint(0, classes, (n,), generator=g)


def _step(model, optimizer, criterion, batch, target, amp, device):
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        output = model(batch)
        if isinstance(output, tuple):
            output = output[0]
        loss = criterion(output, target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_usual(model, optimizer, criterion, files, labels, size, batch, steps, device, workers):
    loader = DataLoader(
        CropFiles(files, labels, pil_train_transform(size)),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    model.train()
    done, start = 0, None
    while done < steps + 2:
        for x, y in loader:
            if done == 2:  # two warm-up steps (workers start, kernels pick)
                _sync(device)
                start = time.perf_counter()
            _step(model, optimizer, criterion, x.to(device), y.to(device), None, device)
            done += 1
            if done >= steps + 2:
                break
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def run_fast(model, optimizer, criterion, images, labels, size, batch, steps, device, amp):
    images, labels = images.to(device), labels.to(device)
    generator = torch.Generator().manual_seed(0)
    channels_last = device.type == "cuda"
    model.train()
    for i in range(steps + 2):
        if i == 2:
            _sync(device)
            start = time.perf_counter()
        index = torch.randint(0, len(labels), (batch,), generator=generator).to(device)
        x = train_transform(images[index], size, generator)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        _step(model, optimizer, criterion, x, labels[index], amp, device)
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def run_bound(model, optimizer, criterion, size, batch, classes, steps, device, amp):
    x = torch.randn(batch, 3, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    model.train()
    for i in range(steps + 2):
        if i == 2:
            _sync(device)
            start = time.perf_counter()
        _step(model, optimizer, criterion, x, y, amp, device)
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--size", type=int, default=48, help="network input size")
    parser.add_argument("--crop", type=int, help="stored crop size (default: --size)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    crop = args.crop or args.size
    classes = 7
    amp = autocast_dtype(StageConfig().precision, device)

    def fresh():
        torch.manual_seed(0)
        model = build_model(args.backbone, classes).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3)
        return model, optimizer, build_loss("ce").to(device)

    images, labels = synthetic_crops(args.images, crop, classes)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, image in enumerate(images):
            path = Path(tmp) / f"{int(labels[i])}" / f"{i:05d}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
            files.append(path)
        usual = run_usual(
            *fresh(),
            files,
            labels.tolist(),
            args.size,
            args.batch,
            args.steps,
            device,
            args.workers,
        )
    fast = run_fast(*fresh(), images, labels, args.size, args.batch, args.steps, device, amp)
    bound = run_bound(*fresh(), args.size, args.batch, classes, args.steps, device, amp)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    figures = {
        "device": name,
        "backbone": args.backbone,
        "size": args.size,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "amp": str(amp),
        "usual_img_s": usual,
        "fast_img_s": fast,
        "bound_img_s": bound,
        "fast_over_usual": fast / usual,
        "fast_over_bound": fast / bound,
    }
    print(f"device {name}, {args.backbone} @ {args.size}px, batch {args.batch}, amp {amp}")
    print(f"  (a) usual pipeline  {usual:9.1f} img/s  (DataLoader, {args.workers} workers, fp32)")
    print(f"  (b) fast path       {fast:9.1f} img/s")
    print(f"  (c) compute bound   {bound:9.1f} img/s")
    print(f"  b/a = {fast / usual:.2f}x   b/c = {fast / bound:.0%}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
