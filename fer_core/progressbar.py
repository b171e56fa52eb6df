"""A progress bar for long loops over images (indexing, face cropping), with rate and ETA.

On a terminal the bar redraws itself in place (`\\r`, at most 10 times a second); anywhere else
(a log file, CI, a SLURM output file) it prints a plain line at every tenth of the work and at
the end, so a log shows progress without thousands of lines. It writes to stdout: stderr
is kept for the one-line `error: ...` of a failure (the CLI's contract).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

REDRAW_S = 0.1
STEPS = 10  # plain lines per run when not on a terminal
WIDTH = 24


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class ProgressBar:
    """`bar(done, total)` after each step (the `progress` callback shape of
    `fer_core.data.faces.prepare_faces`); `close()` ends the line on a terminal."""

    def __init__(self, what: str, stream: TextIO | None = None, tty: bool | None = None):
        self.what = what
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.started = time.monotonic()
        self.drawn_at = 0.0
        self.step = 0  # tenths already printed (plain mode)
        self.open = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        finished = done >= total
        if self.tty:
            if finished or now - self.drawn_at >= REDRAW_S:
                self.drawn_at = now
                self.stream.write("\r" + self.line(done, total, now, bar=True) + "\x1b[K")
                self.stream.flush()
                self.open = not finished
                if finished:
                    self.stream.write("\n")
            return
        step = STEPS if finished else done * STEPS // max(total, 1)
        if step > self.step:
            self.step = step
            print(self.line(done, total, now, bar=False), file=self.stream, flush=True)

    def line(self, done: int, total: int, now: float, bar: bool) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        share = done / total if total else 1.0
        if done >= total:
            tail = f"{rate:.1f}/s, took {_duration(elapsed)}"
        elif done:
            tail = f"{rate:.1f}/s, ETA {_duration((total - done) / rate)}"
        else:
            tail = "starting"
        if bar:
            filled = int(WIDTH * share)
            return f"{self.what} [{'#' * filled}{'.' * (WIDTH - filled)}] {done}/{total} {tail}"
        return f"{self.what}: {done}/{total} ({share:.0%}) {tail}"

    def close(self) -> None:
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False
