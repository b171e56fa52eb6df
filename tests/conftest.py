"""Shared fixtures: a small synthetic CK+ twin and its prepared face crops, built once; the
tests' cluster profiles as a file; a local Ray that a module's in-process launches and
searches share. The plain helpers they use are in tests/helpers.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import CLUSTER, CROP, SMALL_IMAGE, ray_running, slurm_gate

# One thread per test process: the suite shares 2 cores with the worker processes that the
# backend tests start, and oversubscribed torch threads slow a tiny CNN down ~10x.
torch.set_num_threads(1)

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every `slurm`-marked test, with the reason, unless `slurm_gate` lets them run:
    they submit, hold the node, requeue and restart daemons, so only on the project's own
    one-node cluster and only when asked to. Checked once, and only if any was collected."""
    slurm = [item for item in items if item.get_closest_marker("slurm")]
    reason = slurm_gate() if slurm else None
    if reason is not None:
        for item in slurm:
            item.add_marker(pytest.mark.skip(reason=reason))


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


@pytest.fixture(scope="session")
def cluster_file(tmp_path_factory) -> Path:
    """CLUSTER as a cluster.yaml: the tests' own profiles, whatever the shipped file says."""
    path = tmp_path_factory.mktemp("cluster") / "cluster.yaml"
    path.write_text(CLUSTER)
    return path


@pytest.fixture(scope="module")
def local_ray(cluster_file) -> Iterator[dict[str, float]]:
    """A local Ray (the `ray` profile) in this process for the rest of the module.

    `ray_session` reuses a Ray its process already runs, so each in-process launch or search
    of the module skips starting and stopping its own (~6 s on 2 cores). Started by
    `ray_session` itself: the teardown checks that it shuts down the Ray it started.
    """
    from orchestrator.backends.ray.cluster import ray_session
    from orchestrator.plan.profiles import load_profile

    assert not ray_running(), "a Ray was left running before this module's"
    with ray_session(load_profile("ray", cluster_file)) as resources:
        yield resources
    assert not ray_running(), "ray_session did not shut down the Ray it started"


@pytest.fixture
def ray_left_as_found() -> Iterator[None]:
    """A test leaves Ray in this process as it found it: it starts none that outlives it, and
    it does not shut down the module's shared one (ray_session stops only what it started)."""
    before = ray_running()
    yield
    assert ray_running() == before
