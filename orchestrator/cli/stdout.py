"""The CLI's stdout: a reader that goes away (`status | head`) ends the output, not the work.

Python reports a closed pipe as BrokenPipeError on the next write or flush of stdout: a
traceback for `status | head`, and for `launch | head` a launcher that dies with its units
half run. Wrapped by `QuietStdout`, the first such error points file descriptor 1 at
/dev/null, and every later write, including the interpreter's final flush, goes there; the
units' own output is in their logs.
"""

from __future__ import annotations

import io
import os
from typing import TextIO


class QuietStdout(io.TextIOBase):
    """`stream` (sys.stdout), with its output dropped once its reader has closed the pipe."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            self.stream.write(text)
        except BrokenPipeError:
            self._drop()
        return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._drop()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]  # typeshed: a writable attribute
        return self.stream.encoding

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return self.stream.errors

    def __getattr__(self, name: str) -> object:
        """The rest of a text stream (`buffer`, `reconfigure`, ...): the wrapped one's, for
        libraries that look for them on sys.stdout."""
        return getattr(self.stream, name)

    def _drop(self) -> None:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, self.stream.fileno())
        os.close(null)
