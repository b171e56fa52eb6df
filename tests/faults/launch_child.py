"""`python -m orchestrator launch ...` that SIGKILLs itself at an exact point of submitting.

    python -m tests.faults.launch_child WHEN N LAUNCH-ARGS...

WHEN `after-record`: dies right after the N-th job id was recorded in submissions.json (the
launcher killed between two `sbatch` calls). WHEN `before-record`: dies after the N-th job
was submitted but before its id was recorded (killed between `sbatch` and the record). WHEN
`stop-controller`: stops slurmctld (SIGTERM, waits for it to exit) right after the N-th
record and goes on submitting (the controller gone in the middle of a submission).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from orchestrator.cli import main
from orchestrator.run.rundir import RunDir
from tests.helpers import alive, wait_until


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
        if when == "stop-controller" and seen[0] == n:
            stop_slurmctld()

    RunDir.record_submissions = record_submissions


def stop_slurmctld() -> None:
    state = Path(os.environ.get("FER_SLURM_STATE", "/var/lib/fer-slurm"))
    pid = int((state / "run" / "slurmctld.pid").read_text().strip())
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not alive(pid), 120, "slurmctld to exit (its state saved, its port closed)")
    print(f"launch_child: stopped slurmctld (pid {pid})", flush=True)


if __name__ == "__main__":
    die_at(sys.argv[1], int(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
