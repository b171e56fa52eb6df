"""The launcher's ForkService (orchestrator.backends.ray.trial) without Ray: units forked for
several trials at once come back with the exit status their workers had."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from orchestrator.backends.ray.trial import ForkService, _fork_in_launcher
from orchestrator.run.rundir import RunDir
from tests.helpers import done_prepare_units, tiny_ckplus


def test_units_forked_for_several_trials_at_once_keep_their_exit_status(tmp_path):
    """Stress: 60 units whose workers exit 0 within milliseconds, asked for by eight trials
    at once (a thread each in the service). Every exit status must be 0: a thread that
    read its unit's status while another started a unit used to get 255."""
    root = tiny_ckplus(tmp_path / "tree", subjects=2, size=16)
    rundir = RunDir(tmp_path / "run")
    units = done_prepare_units(rundir, root, 60)
    service = ForkService()
    try:

        def fork(unit_id: str) -> int:
            log = str(rundir.unit_log(unit_id, "ray"))
            args = (str(rundir.path), unit_id, log, dict(os.environ), 1)
            return _fork_in_launcher(service.endpoint, args)

        with ThreadPoolExecutor(max_workers=8) as trials:
            ids = [u.id for u in units]
            codes = dict(zip(ids, trials.map(fork, ids), strict=True))
    finally:
        service.close()
    assert {u: c for u, c in codes.items() if c != 0} == {}
