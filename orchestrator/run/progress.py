"""Progress of a run: a line per finished unit, and a live view of all units.

`Progress` prints one plain line per finished unit (count, elapsed time, headline), which
reads well in a terminal, a CI log and a SLURM log file alike. On a terminal, `LiveView`
(around a local or Ray launch) and `watch` (`status --watch`, any backend) add a block
redrawn in place below those lines: the units by state, and each running unit with its
epoch, training loss and ETA. Both read only the run dir (and the backend's states), so the
view is the same whichever process trains: each unit's worker writes `units/<id>/live.json`
after every epoch (`record_epoch`).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO, TypedDict

from fer_core.io import atomic_write_text
from fer_core.records import EpochRecord
from orchestrator.backends.base import Backend
from orchestrator.plan.unit import Unit
from orchestrator.run import states as st
from orchestrator.run.rundir import RunDir
from orchestrator.run.states import State

if TYPE_CHECKING:  # status imports this module (running_detail)
    from orchestrator.run.status import StatusRow

_ETA = re.compile(r"  ETA \S+$")
MAX_RUNNING_LINES = 12


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None):
        self.total = total
        self.count = 0
        self.started = time.monotonic()
        self.stream = stream or sys.stdout

    def finished(self, unit: Unit, state: str, detail: str = "") -> None:
        self.count += 1
        elapsed = time.monotonic() - self.started
        width = len(str(self.total))
        line = f"[{self.count:>{width}}/{self.total}] {elapsed:6.1f}s {state:<7} {unit.name}"
        if detail:
            line += f"  {detail}"
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        elapsed = time.monotonic() - self.started
        print(f"{self.count} units finished in {elapsed:.1f}s", file=self.stream, flush=True)


def unit_summary(rundir: RunDir, unit: Unit) -> str:
    """A finished unit's headline: accuracy and best epoch, or its data preparation counts."""
    if unit.kind != "train":
        table = rundir.store.read("prepare", {unit.id})
        if table is None:
            return ""
        row = table.to_pylist()[0]
        if row["detector"] == "center":
            return f"{row['images']} images, centre crops (detector: center)"
        if row["detector"] == "box":
            return f"{row['images']} images, cropped by the dataset's face boxes"
        detected, fallback = row["detected"], row["fallback"]
        return f"{row['images']} images, {detected} faces detected, {fallback} fell back"
    table = rundir.store.read("runs", {unit.id})
    if table is None:
        return ""
    row = table.to_pylist()[0]
    return f"test acc {row['test_accuracy']:.3f}, best epoch {row['best_epoch']}"


class LiveRecord(TypedDict):
    """`units/<id>/live.json`: a unit's last epoch, as its worker wrote it after the epoch."""

    epoch: int
    epochs: int
    train_loss: float
    train_accuracy: float
    selection_accuracy: float
    seconds: list[float]  # the last epochs' durations, this attempt (for the ETA)
    at: float  # time.time() when written


def _read_live(rundir: RunDir, unit_id: str) -> LiveRecord:
    live: LiveRecord = json.loads(rundir.live_path(unit_id).read_text())
    return live


def record_epoch(rundir: RunDir, unit_id: str, record: EpochRecord, epochs: int) -> None:
    """After an epoch (the worker's `on_epoch`): what the live view shows of this unit."""
    seconds = [record["seconds"]]
    try:
        previous = _read_live(rundir, unit_id)
        if previous["epoch"] < record["epoch"]:  # same attempt: keep the mean epoch time
            seconds = previous["seconds"] + seconds
    except (OSError, ValueError, KeyError):
        pass
    body: LiveRecord = {
        "epoch": record["epoch"],
        "epochs": epochs,
        "train_loss": record["train_loss"],
        "train_accuracy": record["train_accuracy"],
        "selection_accuracy": record["selection_accuracy"],
        "seconds": seconds[-20:],
        "at": time.time(),
    }
    atomic_write_text(rundir.live_path(unit_id), json.dumps(body))


def running_detail(rundir: RunDir, unit_id: str, now: float | None = None) -> str:
    """`epoch 3/4  loss 1.234  ETA 5s` for a running unit (empty before its first epoch)."""
    try:
        live = _read_live(rundir, unit_id)
        epoch, epochs, seconds = live["epoch"], live["epochs"], live["seconds"]
    except (OSError, ValueError, KeyError):
        return ""
    per_epoch = sum(seconds) / len(seconds)
    left = max(0.0, per_epoch * (epochs - epoch) - ((now or time.time()) - live["at"]))
    return f"epoch {epoch}/{epochs}  loss {live['train_loss']:.3f}  ETA {_duration(left)}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def render(
    rundir: RunDir, rows: list[StatusRow], width: int, elapsed: float | None = None
) -> list[str]:
    """The live block: a line of counts, then the running units, then failures, as lines of
    at most `width` characters (a wrapped line would break the redraw)."""
    counts = st.counts({r["unit_id"]: r["state"] for r in rows})
    head = f"{len(rows)} units: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    if elapsed is not None:
        head += f"  ({_duration(elapsed)})"
    lines = [head]
    running = [r for r in rows if r["state"] == State.RUNNING]
    named = max((len(r["name"]) for r in running), default=0)
    for row in running[:MAX_RUNNING_LINES]:
        detail = running_detail(rundir, row["unit_id"]) or "starting"
        lines.append(f"  running  {row['name']:<{named}}  {detail}")
    if len(running) > MAX_RUNNING_LINES:
        lines.append(f"  ... and {len(running) - MAX_RUNNING_LINES} more running")
    for row in rows:
        if row["state"] in (State.FAILED, State.BLOCKED):
            lines.append(f"  {row['state']:<8} {row['name']}  {row['detail']}")
    return [line if len(line) <= width else line[: width - 1] + "…" for line in lines]


class _Block:
    """A block of lines at the bottom of a terminal, redrawn in place."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.height = 0

    def clear(self) -> None:
        if self.height:
            self.stream.write(f"\x1b[{self.height}F\x1b[J")  # up N lines, erase below
            self.height = 0

    def draw(self, lines: list[str]) -> None:
        self.clear()
        self.stream.write("".join(line + "\n" for line in lines))
        self.stream.flush()
        self.height = len(lines)


class LiveView:
    """`with LiveView(rundir, backend):` around a launch's `submit` on a terminal: redraws
    the block every `interval` seconds; whatever the launch prints (per-unit lines) goes
    above it (sys.stdout is routed through the view while it runs)."""

    def __init__(self, rundir: RunDir, backend: Backend | None, interval: float = 1.0):
        self.rundir, self.backend, self.interval = rundir, backend, interval
        self.stream = sys.stdout
        self.block = _Block(self.stream)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.partial = ""
        self.thread = threading.Thread(target=self._loop, name="live-view", daemon=True)

    def __enter__(self) -> LiveView:
        sys.stdout = self
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        with self.lock:
            sys.stdout = self.stream
            self.block.clear()
            if self.partial:
                self.stream.write(self.partial)
            self.stream.flush()

    # the file-like side: lines printed during the launch
    def write(self, text: str) -> int:
        with self.lock:
            self.partial += text
            if "\n" in self.partial:
                done, _, self.partial = self.partial.rpartition("\n")
                self.block.clear()
                self.stream.write(done + "\n")
                self._draw()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def _draw(self) -> None:
        try:
            rows = _status_rows(self.rundir, self.backend)
        except (OSError, ValueError):  # a file replaced mid-read: the next tick redraws
            return
        width = shutil.get_terminal_size().columns
        self.block.draw(render(self.rundir, rows, width, time.monotonic() - self.started))

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            with self.lock:
                self._draw()


def _status_rows(rundir: RunDir, backend: Backend | None) -> list[StatusRow]:
    from orchestrator.run.status import status_rows

    return status_rows(rundir, backend)


def watch(rundir: RunDir, backend: Backend | None, interval: float, out: TextIO | None = None):
    """`status --watch`: redraw (a terminal) or print when it changes (a log) until no unit
    is queued or running and no launch is at work on the run dir (a local or Ray launch
    starts units as their dependencies finish); exit status 1 if any unit failed or is
    blocked, else 0."""
    out = out or sys.stdout
    tty = out.isatty()
    block = _Block(out)
    shown: list[str] = []
    while True:
        rows = _status_rows(rundir, backend)
        width = shutil.get_terminal_size().columns if tty else 10_000
        lines = render(rundir, rows, width)
        state = [_ETA.sub("", line) for line in lines]  # a log gets a block per change
        if tty:
            block.draw(lines)
        elif state != shown:
            print("\n".join(lines), file=out, flush=True)
        shown = state
        active = any(r["state"] in st.ACTIVE for r in rows)
        if not active and rundir.launcher() is None:  # a blocking launch starts more
            break
        time.sleep(interval)
    return 1 if any(r["state"] in (State.FAILED, State.BLOCKED) for r in rows) else 0
