"""Shared fixtures: a small synthetic CK+ twin and its prepared face crops, built once; the small
grid and the cluster profiles the backend tests launch with; a local Ray that a module's
in-process launches and searches share."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# One thread per test process: the suite shares 2 cores with the worker processes that the
# backend tests start, and oversubscribed torch threads slow a tiny CNN down ~10x.
torch.set_num_threads(1)

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parent.parent
SMALL_IMAGE = (160, 120)  # the twin's frame size in tests (real CK+: 640 x 490)
CROP = 48


@pytest.fixture(scope="session")
def twin_root(tmp_path_factory) -> Path:
    """A CK+-layout synthetic twin (the real roster) at a small frame size."""
    from fer_core.data.synthetic import twins as synth

    root = tmp_path_factory.mktemp("twin") / "ckplus"
    synth.write_ckplus_twin(root, synth.DEFAULT_ROSTER, image_size=SMALL_IMAGE)
    return root


@pytest.fixture(scope="session")
def twin_faces(twin_root, tmp_path_factory) -> Path:
    """The twin's index and centre face crops (CROP px), as a training unit reads them."""
    from fer_core.data.faces import prepare_faces
    from fer_core.data.index import build_index

    out = tmp_path_factory.mktemp("faces")
    index = build_index("ckplus", twin_root)
    index.write(out / "index.parquet")
    prepare_faces(index, out, CROP, detector="center")
    return out


def write_grid(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


# --- a small grid ------------------------------------------------------------------------------
GRID_TEMPLATE = """
name: {name}
seed: 0
folds: {folds}
datasets:
  {dataset}:
    kind: ckplus
{source}
    crop_size: {crop}
    detector: center
    focal: {{alpha: 0.25, gamma: 0.0}}
backbones:
  tiny: {{weights: none, input_size: {crop}}}
experiments:
  - backbones: [tiny]
    strategies: {strategies}
train: {train}
"""


def small_grid(
    name: str = "small",
    folds: str = "[1]",
    strategies: str = '[ce, "ce>focal"]',
    root: Path | None = None,
    image_size: tuple[int, int] = (96, 72),
    crop: int = 32,
    dataset: str = "ckplus",
    epochs: int = 2,
    **train: object,
) -> str:
    """The text of a small grid on CK+ (tiny CNN): the twin at `root`, or, without one, the
    synthetic twin its prepare unit writes at `image_size`. Kept as text, not dumped YAML, so
    that tests can edit it by string replacement."""
    if root is None:
        source = f"    synthetic: true\n    image_size: [{image_size[0]}, {image_size[1]}]"
    else:
        source = f"    root: {root}"
    settings = {"epochs": epochs, "lr_step_epoch": max(1, epochs - 1), "batch_size": 32, **train}
    return GRID_TEMPLATE.format(
        name=name,
        folds=folds,
        dataset=dataset,
        source=source,
        crop=crop,
        strategies=strategies,
        train="{" + ", ".join(f"{k}: {v}" for k, v in settings.items()) + "}",
    )


SMALL_GRID = small_grid()


# --- cluster profiles and a shared local Ray ---------------------------------------------------
CLUSTER = """
local:
  backend: local
  jobs: 2
  threads_per_job: 1
ray:
  backend: ray
  address: null
  num_cpus: 2
  cpus_per_trial: 1
  gpus_per_trial: 0
  connect_timeout_s: 5
dead:
  backend: ray
  address: "127.0.0.1:1"
  connect_timeout_s: 5
slurm:
  backend: slurm
  partition: gpu
  gpus_per_job: 4
  cpus_per_job: 16
  time_min: 120
  setup: ["module load cuda/12.4"]
"""


@pytest.fixture(scope="session")
def cluster_file(tmp_path_factory) -> Path:
    """CLUSTER as a cluster.yaml: the tests' own profiles, whatever the shipped file says."""
    path = tmp_path_factory.mktemp("cluster") / "cluster.yaml"
    path.write_text(CLUSTER)
    return path


def ray_running() -> bool:
    """Whether this process is connected to a Ray (without importing Ray to find out)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.fixture(scope="module")
def local_ray(cluster_file) -> Iterator[dict[str, float]]:
    """A local Ray (the `ray` profile) in this process for the rest of the module.

    `ray_session` reuses a Ray its process already runs, so each in-process launch or search
    of the module skips starting and stopping its own (~6 s on 2 cores). Started by
    `ray_session` itself: the teardown checks that it shuts down the Ray it started.
    """
    from orchestrator.backends.ray.cluster import RaySettings, ray_session
    from orchestrator.plan.profiles import load_profile

    assert not ray_running(), "a Ray was left running before this module's"
    settings = RaySettings.from_profile(load_profile("ray", cluster_file))
    with ray_session(settings) as resources:
        yield resources
    assert not ray_running(), "ray_session did not shut down the Ray it started"


@pytest.fixture
def ray_left_as_found() -> Iterator[None]:
    """A test leaves Ray in this process as it found it: it starts none that outlives it, and
    it does not shut down the module's shared one (ray_session stops only what it started)."""
    before = ray_running()
    yield
    assert ray_running() == before


# --- a tiny CK+ tree on disk (for data identity and lineage tests) -----------------------------
def tiny_ckplus(root: Path, subjects: int = 6, size: int = 40) -> Path:
    """A CK+-layout tree: `subjects` subjects, one labelled 3-frame sequence each (labels
    cycle through the classes), noise images of `size` px; quick to index, crop and train."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for s in range(1, subjects + 1):
        sequence = root / f"cohn-kanade-images/S{s:03d}/001"
        sequence.mkdir(parents=True, exist_ok=True)
        for f in (1, 2, 3):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(sequence / f"S{s:03d}_001_{f:08d}.png")
        emotion = root / f"Emotion/S{s:03d}/001/S{s:03d}_001_00000003_emotion.txt"
        emotion.parent.mkdir(parents=True, exist_ok=True)
        emotion.write_text(f"   {s % 7 + 1}.0000000e+00\n")
    return root
