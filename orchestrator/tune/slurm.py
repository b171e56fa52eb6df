"""`tune --cluster slurm`: the search on a Ray cluster started inside one SLURM allocation.

The sbatch script comes from `orchestrator.backends.ray.cluster.render_ray_sbatch` (a Ray head
on the first node, a worker on each other node, a cluster profile pointing at the head), its
command `tune --cluster ray` with this search's grid, run dir and options. Inside the
allocation the stage-1 units, the trials and the final units all run on that Ray cluster. The
run dir must be on a file system every node sees. Submitting the same script again (or `tune` again)
resumes: units and trials that finished are kept.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fer_core.errors import FerError
from fer_core.io import atomic_write_text
from orchestrator.backends.ray.cluster import render_ray_sbatch
from orchestrator.backends.slurm.control import launcher_env
from orchestrator.plan.profiles import DEFAULT_FILE, RayProfile, SlurmProfile, load_profile
from orchestrator.run.rundir import RunDir
from orchestrator.tune.space import TuneSpec

if TYPE_CHECKING:
    from orchestrator.tune.nested import TuneRequest

SBATCH_TIMEOUT_S = 60


def render_tune_sbatch(
    spec: TuneSpec,
    run_dir: Path,
    allocation: SlurmProfile,
    trials: RayProfile,
    nodes: int = 1,
    samples: int | None = None,
    data: list[str] | None = None,
) -> str:
    """The sbatch text: Ray head + workers in the allocation, then `tune --cluster ray`."""
    command = ["tune", "--grid", str(spec.path), "--run-dir", str(run_dir)]
    if samples is not None:
        command += ["--samples", str(samples)]
    for pair in data or []:
        command += ["--data", pair]
    return render_ray_sbatch(
        f"fer-ray-{spec.grid.name}", str(run_dir), command, allocation, trials, nodes
    )


def trial_profile(allocation: SlurmProfile, cluster_file: Path | None) -> RayProfile:
    """Each trial's resources: the `ray` profile of the same cluster file; without one, the
    defaults and one GPU per trial when the allocation has GPUs."""
    try:
        trials = load_profile("ray", cluster_file)
    except FerError:  # no profile `ray` (the file itself was read when `allocation` was)
        return RayProfile(gpus_per_trial=1 if allocation.gpus_per_job else 0)
    if not isinstance(trials, RayProfile):
        raise FerError(
            f"{cluster_file or DEFAULT_FILE}: profile 'ray' has backend {trials.backend}; "
            "tune --cluster slurm takes its per-trial resources from it, so it must be ray"
        )
    return trials


def submit_tune_job(spec: TuneSpec, args: TuneRequest, profile: SlurmProfile, run_dir: Path) -> int:
    """Write the sbatch script under RUN_DIR/tune/ and submit it (unless --dry-run)."""
    nodes = args.nodes or 1
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise FerError(f"--nodes: {nodes!r} must be a positive integer")
    trials = trial_profile(profile, args.cluster_file)
    if profile.gpus_per_job and not trials.gpus_per_trial:
        print(
            "warning: the allocation has GPUs but the ray profile gives trials none; set "
            "gpus_per_trial there (fractions such as 0.25 pack trials onto one GPU)"
        )
    rundir = RunDir(run_dir.resolve())
    rundir.claim(spec.grid.name, spec.path)
    text = render_tune_sbatch(
        spec, rundir.path, profile, trials, nodes, args.samples, list(args.data) or None
    )
    path = rundir.tune_sbatch_path
    atomic_write_text(path, text)
    if args.dry_run:
        print(f"sbatch script: {path} (dry run: not submitted)")
        return 0
    try:
        done = subprocess.run(
            ["sbatch", "--parsable", str(path)],
            capture_output=True,
            text=True,
            timeout=SBATCH_TIMEOUT_S,
            env=launcher_env(),  # not the SLURM_* of an allocation it is launched from
        )
    except FileNotFoundError as exc:
        raise FerError("tune --cluster slurm: sbatch not found; run on a SLURM login node") from exc
    except subprocess.TimeoutExpired as exc:
        raise FerError(f"sbatch did not answer within {SBATCH_TIMEOUT_S}s") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise FerError(f"sbatch {path} failed: {last}")
    job_id = done.stdout.strip().split(";")[0]
    record = {"job_id": job_id, "script": str(path), "nodes": nodes, "submitted_at": time.time()}
    atomic_write_text(rundir.tune_slurm_record, json.dumps(record, indent=1))
    print(f"submitted SLURM job {job_id}: a Ray cluster on {nodes} node(s) running the search")
    print(f"  script {path}; log {rundir.path}/fer-ray-{spec.grid.name}-{job_id}.out")
    print("  when it has finished: python -m orchestrator report --run-dir " + str(rundir.path))
    return 0
