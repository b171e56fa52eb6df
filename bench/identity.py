"""What a dataset's content identity costs at launch: a CK+-size tree hashed cold and warm.

    .venv/bin/python bench/identity.py [--keep DIR]

Builds a tree the size of the real CK+ (593 sequences, ~10,700 640x490 PNGs, 327 of them
labelled) with the synthetic twin's writer, then adds unlabelled copies of its sequences up
to CK+'s count (the real set also has sequences without an Emotion file). Then times
`fer_core.data.identity.dataset_identity`:
- cold: no digest cache, every used image read and hashed (the files are in the OS page
  cache, just written: a cold disk adds its read time);
- warm: the cache saved by the cold run, one `stat` per used image;
- after `touch`: every time changed, so every used image is read again (same identity).
The index scan (listing the tree, parsing Emotion files) is in all three and printed alone
too, beside what the identity replaced (path + size + mtime of every file under the root).
Figures are printed, never asserted; the machine's load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from fer_core.data import ckplus
from fer_core.data.identity import dataset_identity
from fer_core.data.index import build_index
from fer_core.data.synthetic import twins
from fer_core.digest_cache import DigestCache

SEQUENCES = 593  # real CK+: 593 sequences, 10,708 frames, 327 labelled


def build_tree(root: Path) -> tuple[int, int]:
    """A CK+-size tree at `root`; returns (sequences, PNG files)."""
    twins.write_ckplus_twin(root, frames_per_sequence=(15, 21), workers=os.cpu_count())
    images = root / ckplus.IMAGES_DIR
    sequences = sorted(p for p in images.glob("S*/*") if p.is_dir())
    extra = SEQUENCES - len(sequences)
    for i in range(extra):
        source = sequences[i % len(sequences)]
        subject = source.parent.name
        number = 900 + i  # unlabelled: an Emotion folder without a file, as in CK+
        target = images / subject / f"{number:03d}"
        target.mkdir()
        for frame in sorted(source.glob("*.png")):
            name = frame.name.replace(f"_{source.name}_", f"_{number:03d}_")
            shutil.copyfile(frame, target / name)
        (root / ckplus.EMOTION_DIR / subject / f"{number:03d}").mkdir(parents=True)
    pngs = sum(1 for _ in images.rglob("*.png"))
    return len(sorted(p for p in images.glob("S*/*") if p.is_dir())), pngs


def timed(root: Path, cache_path: Path) -> tuple[float, str, int]:
    cache = DigestCache(cache_path)
    start = time.perf_counter()
    identity = dataset_identity("ckplus", root, None, 10, cache)
    cache.save()
    return time.perf_counter() - start, identity, cache.hashed


def stat_walk(root: Path) -> None:
    """The identity this replaced: a stat of every file under the root (any touch, copy or
    file written into the root changed it)."""
    for directory, _, files in os.walk(root):
        for name in files:
            os.stat(os.path.join(directory, name))


def best_of(func, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="build the tree here and keep it (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        root = base / "ckplus"
        start = time.perf_counter()
        if not root.is_dir():
            sequences, pngs = build_tree(root)
        else:
            images = root / ckplus.IMAGES_DIR
            sequences = sum(1 for p in images.glob("S*/*") if p.is_dir())
            pngs = sum(1 for _ in images.rglob("*.png"))
        size = sum(p.stat().st_size for p in root.rglob("*.png")) / 2**20
        print(f"tree: {sequences} sequences, {pngs} PNGs, {size:.0f} MiB "
              f"(built in {time.perf_counter() - start:.0f} s)")  # fmt: skip
        cache_path = base / "digests.json"
        cache_path.unlink(missing_ok=True)
        time.sleep(2.5)  # let the new files leave the digest cache's racy window
        cold, first, hashed = timed(root, cache_path)
        warm, second, rehashed = timed(root, cache_path)
        for path in root.rglob("*.png"):
            os.utime(path)
        time.sleep(2.5)
        touched, third, after_touch = timed(root, cache_path)
        assert first == second == third, "the identity must not depend on the cache or times"
        warm = min(warm, best_of(lambda: timed(root, cache_path)))
        scan = best_of(lambda: build_index("ckplus", root, n_folds=10, verify=False))
        index = build_index("ckplus", root, n_folds=10, verify=False)
        used = sum(index.path_of(r).stat().st_size for r in index.records) / 2**20
        walk = best_of(lambda: stat_walk(root))
        kib = cache_path.stat().st_size // 1024
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"cold  {cold:7.3f} s  ({hashed} used images, {used:.0f} MiB, read and hashed)")
        print(f"warm  {warm:7.3f} s  ({rehashed} images read; cache {kib} KiB; best of 4)")
        print(f"touch {touched:7.3f} s  ({after_touch} images read again; identity unchanged)")
        print(f"cold / warm = {cold / warm:.1f}x")
        print(f"of which the index scan alone: {scan:.3f} s (best of 3)")
        print(f"before: stat of every file under the root: {walk:.3f} s (best of 3)")


if __name__ == "__main__":
    main()
