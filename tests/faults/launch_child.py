"""`python -m orchestrator launch ...` that SIGKILLs itself at an exact point of submitting.

    python -m tests.faults.launch_child WHEN N LAUNCH-ARGS...

WHEN `after-record`: dies right after the N-th job id was recorded in submissions.json (the
launcher killed between two `sbatch` calls). WHEN `before-record`: dies after the N-th job
was submitted but before its id was recorded (killed between `sbatch` and the record).
"""

from __future__ import annotations

import os
import signal
import sys

from orchestrator.cli import main
from orchestrator.run.rundir import RunDir


def die_at(when: str, n: int) -> None:
    real = RunDir.record_submissions
    seen = [0]

    def record_submissions(self, records):
        seen[0] += 1
        if when == "before-record" and seen[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        real(self, records)
        if when == "after-record" and seen[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)

    RunDir.record_submissions = record_submissions


if __name__ == "__main__":
    die_at(sys.argv[1], int(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
