"""The one state vocabulary: values read as the plain strings they replaced (JSON, f-strings,
records written before the enum), and the module stays importable on its own (a SLURM job's
light modules import it before anything heavy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from orchestrator.run.states import ACTIVE, ORDER, State, counts
from tests.helpers import REPO


def test_a_state_reads_and_writes_as_its_plain_string():
    assert str(State.RUNNING) == "running" and f"{State.BLOCKED}" == "blocked"
    assert json.dumps({"state": State.DONE}) == '{"state": "done"}'
    assert State("pending") is State.PENDING  # a record written as a string reads back
    assert State.FAILED == "failed" and "failed" in {State.FAILED}


def test_counts_follow_the_status_order_and_leave_out_scheduler_only_words():
    states = {"a": "done", "b": State.RUNNING, "c": "done", "d": State.CANCELLED, "e": "todo"}
    found = counts(states)
    assert list(found) == list(ORDER)
    assert found[State.DONE] == 2 and found[State.RUNNING] == 1 and found[State.TODO] == 1
    assert found[State.FAILED] == 0 and State.CANCELLED not in found
    assert set(ACTIVE) <= set(ORDER)


def test_importing_the_states_loads_no_other_project_module():
    code = (
        "import sys, orchestrator.run.states; "
        "print(sorted(m for m in sys.modules if m.startswith(('orchestrator', 'fer_core'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},  # this tree, not an installed copy
    ).stdout
    assert json.loads(loaded.replace("'", '"')) == [
        "orchestrator",
        "orchestrator.run",
        "orchestrator.run.states",
    ]
