"""Which code produced a number: the git commit of the checkout this package runs from."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


@functools.cache
def git_commit() -> str | None:
    """The checkout's HEAD commit, with `-dirty` appended when tracked files differ from it
    (the numbers then came from uncommitted code); None outside a git checkout or without
    git. Asked once per process, with argument lists (no shell)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(CHECKOUT), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        lines = head.stdout.splitlines()
        # An installed copy inside some other repository (a venv in a project) is not ours.
        if head.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != CHECKOUT:
            return None
        changes = subprocess.run(
            ["git", "-C", str(CHECKOUT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = lines[1]
    return f"{commit}-dirty" if changes.returncode == 0 and changes.stdout.strip() else commit
