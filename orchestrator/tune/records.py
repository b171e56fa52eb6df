"""What the search's modules hand each other, and what it leaves on disk, typed.

In memory (frozen dataclasses): a search split (`SearchSplit`, built by `nested`, bound into
every trial by `search`), a trial's α/γ choice (`TrialChoice`, parsed once from Ray's trial
config: Ray's param space itself is Ray's dict) and a split's progress (`SplitRecord`).

On disk (TypedDicts: the JSON or Parquet shape is the contract, so rows and files are these
dicts themselves, in this key order): a trial split's `split.json` (`SplitFile`), a line of a
trial's history and of the invocations log, a row of the `trials` table (`TrialRow`) and the
search's outcome, `choice.json` (`ChoiceRecord`). The readers here check the shape once and
fail with a one-line error naming the file, so a damaged record is never half-read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

from fer_core.errors import FerError
from fer_core.spec import UnitSpec
from orchestrator.run.store import Store
from orchestrator.tune.space import INVERSE_FREQUENCY, AlphaChoice, alpha_label


@dataclass(frozen=True)
class SearchSplit:
    """One inner split every trial trains on: its stage-1 unit (id and spec: a trial's spec
    follows from it, `orchestrator.tune.trial.unit_spec`), the searched chain's strategy and
    the split's inverse-frequency α (from its training images' class counts)."""

    fold: int
    parent_id: str
    parent: UnitSpec
    strategy: str
    inverse_frequency: tuple[float, ...]


@dataclass(frozen=True)
class TrialChoice:
    """What one trial tries: an α choice and a γ."""

    alpha: AlphaChoice
    gamma: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrialChoice:
        """From Ray's trial config (`orchestrator.tune.search.param_space`). α is kept as
        drawn: it is hashed into the trial's ids as it is."""
        return cls(alpha=config["alpha"], gamma=float(config["gamma"]))

    @property
    def label(self) -> str:
        return alpha_label(self.alpha)

    @property
    def alpha_value(self) -> float | None:
        """α as a number, or None (no α, or a per-split vector)."""
        return float(self.alpha) if isinstance(self.alpha, int | float) else None

    def alpha_for(self, split: SearchSplit) -> AlphaChoice | list[float]:
        """The α one split trains with: inverse_frequency becomes that split's vector."""
        return list(split.inverse_frequency) if self.alpha == INVERSE_FREQUENCY else self.alpha


@dataclass(frozen=True)
class SplitRecord:
    """One split of a trial so far: the inner-val accuracy of each epoch trained."""

    fold: int
    accuracies: tuple[float, ...]
    epochs: int  # a split's full budget

    @property
    def best(self) -> float:
        return max(self.accuracies) if self.accuracies else float("nan")

    @property
    def best_epoch(self) -> int:
        """1-based; 0 before the first epoch."""
        return self.accuracies.index(max(self.accuracies)) + 1 if self.accuracies else 0

    @property
    def complete(self) -> bool:
        return len(self.accuracies) >= self.epochs


class SplitFile(TypedDict):
    """`split.json` of a trial split, from its first write (before any epoch)."""

    spec: dict[str, Any]  # the unit's `UnitSpec` (dataclasses.asdict)
    unit_id: str
    config_id: str
    fold: int
    accuracies: list[float]  # inner-val accuracy per epoch so far


class FinishedSplitFile(SplitFile, total=False):
    """`split.json` once its unit is done: what its `runs` row says of the start weights."""

    parent_weights_sha: str | None
    start_weights_sha: str | None
    train_seconds: float | None


class HistoryLine(TypedDict):
    """A line of `<experiment>/history/<trial id>.jsonl`: one report to Tune."""

    t: int  # epochs_done, the scheduler's clock
    metric: float  # inner_val_running


class Invocation(TypedDict):
    """A line of `<experiment>/invocations.jsonl`: one start of a trial function."""

    trial_id: str
    config_id: str
    pid: int
    at: float


class TrialRow(TypedDict):
    """A row of the `trials` table (column order)."""

    trial_id: str
    experiment: str
    config_id: str
    dataset: str
    backbone: str
    loss: str
    alpha: str  # alpha_label
    alpha_value: float | None
    gamma: float
    search_folds: list[int]
    fold_inner_accuracy: list[float]
    fold_best_epoch: list[int]
    folds_done: int
    epochs_done: int
    max_epochs: int
    inner_val_mean: float  # NaN unless every split is complete
    inner_val_last: float  # the last running metric reported
    stopped_early: bool
    status: str  # complete | stopped | error
    error: str | None
    selection: str
    seconds: float | None
    chosen: bool
    recorded_at: float


class Scores(TypedDict):
    """Test accuracy of a configuration on the test folds."""

    per_fold: dict[str, float]  # fold (as text: a JSON key) -> accuracy
    mean: float
    std: float
    n_test: int


class SearchSpace(TypedDict):
    alpha: list[str]  # alpha_label of each choice
    gamma: str  # TuneSpec.describe_gamma


class SchedulerRecord(TypedDict):
    type: str
    grace_period: int
    reduction_factor: float
    max_t: int


class ChoiceRecord(TypedDict):
    """`choice.json`: the chosen configuration, how it was searched, and its test scores."""

    experiment: str
    dataset: str
    dev_dataset: str
    backbone: str
    strategy: str
    trial_id: str
    alpha: str
    alpha_value: float | None
    gamma: float
    inner_val_mean: float
    fold_inner_accuracy: list[float]
    search_folds: list[int]
    inner_folds: int
    test_folds: list[int]
    search_space: SearchSpace
    search_alg: str
    scheduler: SchedulerRecord
    seed: int
    trials: int
    trials_complete: int
    trials_stopped: int
    trials_error: int
    final_units: dict[str, str]  # test fold -> unit id
    stage1_units: dict[str, str]
    paper_protocol_units: dict[str, str] | None
    test: Scores
    paper_protocol_test: Scores | None
    wall_seconds: float
    chosen_at: float


def _json_object(path: Path, what: str) -> dict[str, Any] | None:
    """The JSON object in `path`, None if there is no file; FerError naming it if damaged."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise FerError(f"{path}: not a {what} (invalid JSON: {exc})") from None
    if not isinstance(body, dict):
        raise FerError(f"{path}: not a {what} (a JSON object was expected)")
    return body


def read_split_file(path: Path) -> SplitFile | None:
    """A trial split's `split.json`, or None before its first write. The trial rewrites
    every key but the accuracies, so those are what must be sound."""
    body = _json_object(path, "trial split record")
    if body is None:
        return None
    accuracies = body.setdefault("accuracies", [])
    if not isinstance(accuracies, list) or not all(
        isinstance(a, int | float) and not isinstance(a, bool) for a in accuracies
    ):
        raise FerError(
            f"{path}: accuracies: {accuracies!r} must be a list of numbers; delete the file "
            "and run `tune` again to retrain that split from its unit's last checkpoint"
        )
    return cast(SplitFile, body)


def read_choice(path: Path) -> ChoiceRecord | None:
    """`choice.json`, or None when the search has not chosen yet."""
    body = _json_object(path, "tune choice record")
    if body is None:
        return None
    missing = [key for key in ChoiceRecord.__required_keys__ if key not in body]
    if missing:
        raise FerError(
            f"{path}: not a tune choice record (no {sorted(missing)[0]!r}); run `tune` again "
            "on this run dir to rewrite it"
        )
    return cast(ChoiceRecord, body)


def read_trials(store: Store) -> list[TrialRow]:
    """Every row of the `trials` table (every experiment of the run dir)."""
    table = store.read("trials")
    if table is None:
        return []
    missing = [key for key in TrialRow.__required_keys__ if key not in table.column_names]
    if missing:
        raise FerError(
            f"{store.root / 'trials'}: the rows have no {sorted(missing)[0]!r} column; run "
            "`tune` again on this run dir to rewrite them"
        )
    return cast(list[TrialRow], table.to_pylist())
