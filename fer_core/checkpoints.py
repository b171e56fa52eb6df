"""A stage's checkpoint files: written atomically, each with its sha256 in `checkpoints.json`.

- `last.pt`: everything needed to resume after the epoch it was written (weights, optimiser,
  every RNG state, best-so-far, per-epoch history). A unit killed mid-epoch redoes at most
  that epoch.
- `last.prev.pt`: the `last.pt` before it. A `last.pt` that fails its checksum or does not
  load (damaged after the fact, truncated by an older version) is not trusted: the unit
  resumes from `last.prev.pt` (one more epoch redone) and starts from scratch only if that
  is bad too. Each fallback is one line on stderr (the unit's log).
- `best.pt`: the weights of the epoch with the highest selection accuracy so far; stage 2
  starts from its parent's `best.pt`, after checking it against the parent's digest. A
  resume state whose `best.pt` is damaged is dropped (the best weights cannot be rebuilt
  without retraining).
"""

from __future__ import annotations

import json
import os
import pickletools
import random
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

import numpy as np

from fer_core.errors import FerError
from fer_core.io import (
    TEMP_PREFIX,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    sha256_file,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch is imported where a checkpoint is read or an RNG state taken: the orchestrator reads
# the file names and recorded digests (orchestrator.run.lineage) without it.

LAST = "last.pt"
LAST_PREV = "last.prev.pt"  # the resume state one epoch before last.pt
BEST = "best.pt"
DIGESTS = "checkpoints.json"


class PythonRngState(TypedDict):
    version: int
    state: list[int]
    gauss: float | None


class NumpyRngState(TypedDict):
    keys: torch.Tensor  # int64 624 (the MT19937 key, widened: weights_only loads no uint32)
    pos: int
    has_gauss: int
    cached_gaussian: float


class _RngState(TypedDict):
    python: PythonRngState
    numpy: NumpyRngState
    torch: torch.Tensor


class RngState(_RngState, total=False):
    """Every global RNG's state, as `global_rng_state` saves it into `last.pt`."""

    cuda: list[torch.Tensor]  # one per device, when CUDA is available


def load_checkpoint(path: Path, expected_digest: str | None = None) -> dict[str, Any]:
    """Load a checkpoint safely (weights_only) and, when a digest is known, verify it first.

    What it holds is the writer's business (`fer_core.train`: state dicts and records, in
    the shape of whichever version wrote it), so its values are not typed here."""
    path = Path(path)
    if not path.is_file():
        raise FerError(f"{path}: checkpoint not found")
    if expected_digest is not None and sha256_file(path) != expected_digest:
        raise FerError(f"{path}: checkpoint is corrupt (sha256 does not match checkpoints.json)")
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file or a pickle payload
        raise FerError(f"{path}: not a loadable checkpoint ({type(exc).__name__})") from exc
    if not isinstance(state, dict):
        raise FerError(f"{path}: not a checkpoint (holds a {type(state).__name__})")
    return state


def check_archive(path: Path) -> None:
    """Without torch (the orchestrator calls it): `path` is a whole `torch.save` archive, a
    zip whose every member passes its CRC, with one `data.pkl` whose pickle runs to its end.
    A digest only says a file is the one recorded; a record edited beside a damaged file
    would vouch for weights no child can load. Reads the file once; nothing is unpickled."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
            if damaged is not None:
                raise ValueError(f"member {damaged} fails its CRC")
            pickles = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
            if len(pickles) != 1:
                raise ValueError(f"{len(pickles)} data.pkl members, not 1")
            for _ in pickletools.genops(archive.read(pickles[0])):
                pass
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise FerError(f"{path}: not a loadable checkpoint ({exc})") from None


def recorded_digests(work_dir: Path) -> dict[str, str]:
    """file name -> sha256 as recorded in `work_dir/checkpoints.json` ({} when unreadable)."""
    path = Path(work_dir) / DIGESTS
    if not path.is_file():
        return {}
    try:
        digests = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return cast(dict[str, str], digests)


def load_verified_best(work_dir: Path) -> tuple[dict[str, Any], str]:
    """A stage's `best.pt` and its sha256, only if it matches the digest recorded beside it
    (a missing record is as bad as a mismatch: nothing vouches for the file)."""
    work_dir = Path(work_dir)
    digest = recorded_digests(work_dir).get(BEST)
    if digest is None:
        raise FerError(f"{work_dir / BEST}: no digest recorded in {DIGESTS}")
    return load_checkpoint(work_dir / BEST, digest), digest


def _write_digests(work_dir: Path, digests: dict[str, str]) -> None:
    atomic_write_text(work_dir / DIGESTS, json.dumps(digests, indent=1, sort_keys=True))


def save(obj: Mapping[str, object], work_dir: Path, name: str) -> None:
    """Write checkpoint `name` atomically and record its digest."""
    digest = atomic_torch_save(obj, work_dir / name)
    digests = recorded_digests(work_dir)
    digests[name] = digest
    _write_digests(work_dir, digests)


def save_last(state: Mapping[str, object], work_dir: Path, rotate: bool) -> None:
    """Write last.pt; with `rotate` (last.pt is known good) keep the old one as last.prev.pt.

    last.pt stays in place until the new one replaces it (last.prev.pt is a hard link to it,
    or a copy where links are not supported), and `checkpoints.json` stays true to the files
    at every point a crash could hit: last.prev.pt's digest is recorded before the link, and
    a crash after the new last.pt but before its digest leaves a mismatch: a fallback to prev.
    """
    last, prev = work_dir / LAST, work_dir / LAST_PREV
    digests = recorded_digests(work_dir)
    if rotate and last.is_file() and LAST in digests:
        digests[LAST_PREV] = digests[LAST]
        _write_digests(work_dir, digests)
        link = work_dir / f"{TEMP_PREFIX}{LAST_PREV}.link"
        link.unlink(missing_ok=True)
        try:
            os.link(last, link)
            os.replace(link, prev)
        except OSError:
            link.unlink(missing_ok=True)
            atomic_write_bytes(prev, last.read_bytes())
    save(state, work_dir, LAST)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def resume_state(work_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The newest good resume state and its file name, or (None, None) to start fresh.

    A state is good if its checksum matches and it loads; last.pt is tried, then
    last.prev.pt. Both rely on best.pt (the best weights so far): if that is damaged,
    nothing can be resumed.
    """
    digests = recorded_digests(work_dir)
    names = [name for name in (LAST, LAST_PREV) if (work_dir / name).exists()]
    if not names:
        return None, None
    try:
        load_checkpoint(work_dir / BEST, digests.get(BEST))
    except FerError as exc:
        _warn(f"starting from scratch: the resume state relies on {BEST}, which is bad: {exc}")
        return None, None
    for name in names:
        try:
            state = load_checkpoint(work_dir / name, digests.get(name))
        except FerError as exc:
            _warn(f"not resuming from {name}: {exc}")
            continue
        if name != LAST:
            _warn(f"resuming from {name} (after epoch {state['epoch'] + 1}) instead of {LAST}")
        return state, name
    _warn("starting from scratch: no good resume state")
    return None, None


def load_best(model: nn.Module, work_dir: Path) -> None:
    """Load the stage's best weights into `model`, verifying the recorded digest."""
    work_dir = Path(work_dir)
    state = load_checkpoint(work_dir / BEST, recorded_digests(work_dir).get(BEST))
    model.load_state_dict(state["model"])


def global_rng_state() -> RngState:
    """Python's, numpy's, torch's CPU and (when present) every CUDA device's RNG state, in
    types `torch.load(weights_only=True)` accepts, so a resumed run draws what the
    uninterrupted one would have (dropout on the GPU, anything a user adds that draws)."""
    import torch

    version, mt_state, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=True)
    if isinstance(numpy_state, dict):  # only for a non-MT19937 global bit generator
        raise FerError("numpy's global RNG is not MT19937; cannot save its state")
    _, keys, pos, has_gauss, cached = numpy_state
    state: RngState = {
        "python": {"version": version, "state": list(mt_state), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: RngState) -> None:
    """Restore what `global_rng_state` saved; a CUDA state is restored only where this
    process sees the same number of devices (a GPU state cannot be moved onto a CPU run)."""
    import torch

    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        ("MT19937", keys, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
