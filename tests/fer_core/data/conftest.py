"""Shared fixtures: small synthetic twins written once per session, and the CK+ roster."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from fer_core.data.synthetic.twins import DEFAULT_ROSTER, write_ckplus_twin, write_oulu_twin


@pytest.fixture(scope="session")
def roster_path() -> Path:
    """The CK+ roster shipped with the package (the real 327 labelled sequences)."""
    return DEFAULT_ROSTER


@pytest.fixture(scope="session")
def roster_rows(roster_path: Path) -> list[dict[str, str]]:
    with open(roster_path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="session")
def ckplus_twin(tmp_path_factory: pytest.TempPathFactory, roster_path: Path) -> Path:
    """The full CK+ roster at a tiny image size and 3-5 frames per sequence (fast)."""
    out = tmp_path_factory.mktemp("twins") / "ckplus"
    return write_ckplus_twin(out, roster_path, image_size=(64, 49), frames_per_sequence=(3, 5))


@pytest.fixture(scope="session")
def oulu_twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Oulu-CASIA twin of 10 subjects (enough for 10 folds), tiny images."""
    out = tmp_path_factory.mktemp("twins") / "oulu"
    return write_oulu_twin(out, image_size=(64, 48), frames_per_sequence=(3, 5), n_subjects=10)


@pytest.fixture
def ckplus_copy(ckplus_twin: Path, tmp_path: Path) -> Path:
    """A private copy of the CK+ twin that a test may break."""
    return Path(shutil.copytree(ckplus_twin, tmp_path / "ckplus"))


@pytest.fixture
def oulu_copy(oulu_twin: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(oulu_twin, tmp_path / "oulu"))


@pytest.fixture(scope="session")
def wild_twin(tmp_path_factory: pytest.TempPathFactory):
    """`wild_twin(kind)`: a small fixed-split twin of `kind` with its images (scale 0.01,
    AffectNet 0.002), written once per session and kind."""
    from fer_core.data.synthetic.wild import write_wild_twin

    base = tmp_path_factory.mktemp("wild")
    scales = {"affectnet": 0.002}

    def make(kind: str) -> Path:
        return write_wild_twin(kind, base / kind, scales.get(kind, 0.01))

    return make
