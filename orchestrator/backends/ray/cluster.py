"""Getting a Ray to run on: start a local one, or connect to a cluster within a bounded time.

Also renders an sbatch script that starts a Ray head + workers inside one SLURM allocation and
runs an orchestrator command on that Ray (`tune --cluster slurm`: for users whose GPUs are
behind SLURM but who want Ray Tune).

Environment facts this module works around (Ray 2.60):
- Ray writes `~/.ray/auth_token` unless `RAY_AUTH_MODE=disabled`; usage stats are on unless
  `RAY_USAGE_STATS_ENABLED=0`. Both are set (unless the user set them) before Ray is imported.
- `ray.init(_node_ip_address="127.0.0.1")` does not keep a local head on loopback: Ray maps
  localhost back to the machine's routable IP. What does is `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
  =0` (read when Ray is imported): the node IP is then 127.0.0.1 and GCS, raylet and workers
  listen on 127.0.0.1 only. A local Ray has no reason to be reachable from the network.
- `ray.init(address=...)` on an address that does not answer retries for minutes. So the
  address is checked with a socket connect first, then with a throw-away `ray.init` in a
  subprocess that is killed at the deadline; only then does this process connect.
- A driver must announce the node IP its local raylet registered, so `127.0.0.1:PORT` is
  resolved against the heads running on this machine (a loopback-only head, or the head's IP).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fer_core.errors import FerError
from orchestrator.plan.profiles import RayProfile, SlurmProfile, UnitRanks

RAY_ENV_DEFAULTS = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def prepare_environment(local: bool) -> None:
    """Set Ray's environment before it is imported (a user's own settings win)."""
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if local:
        os.environ[LOOPBACK_ENV] = "0"
        constants = sys.modules.get("ray._private.ray_constants")
        if constants is not None:
            # Ray was imported before us (e.g. by a test); its constant was read then.
            setattr(constants, "ENABLE_RAY_CLUSTER", False)  # noqa: B010 (no stub has it)
    elif os.environ.get(LOOPBACK_ENV) == "0":
        # Left over from a local session of this process: a cluster node needs its real IP.
        del os.environ[LOOPBACK_ENV]
        constants = sys.modules.get("ray._private.ray_constants")
        if constants is not None:
            setattr(constants, "ENABLE_RAY_CLUSTER", True)  # noqa: B010 (no stub has it)


def split_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port); anything else is an error naming the value."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FerError(
            f"ray profile: address {address!r} must be HOST:PORT (the head's GCS address, "
            "e.g. 10.0.0.5:6379) or null for a local Ray"
        )
    return host.strip("[]"), int(port)


def _local_gcs_servers() -> dict[int, str]:
    """GCS port -> node IP of the Ray heads running on this machine (from /proc)."""
    heads = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not args or not args[0].endswith("gcs_server"):
            continue
        options = dict(a[2:].split("=", 1) for a in args[1:] if a.startswith("--") and "=" in a)
        port = options.get("gcs_server_port", "")
        if port.isdigit() and "node-ip-address" in options:
            heads[int(port)] = options["node-ip-address"]
    return heads


def resolve_local_head(address: str) -> tuple[str, bool]:
    """(address to connect to, whether that head runs on loopback only) for `address`.

    A loopback address names a head on this machine, and a driver must announce the node IP
    that head registered: 127.0.0.1 for a loopback-only head (then this process must be
    loopback-only too), else the machine's IP, which Ray finds itself.
    """
    host, port = split_address(address)
    if host not in ("127.0.0.1", "localhost", "::1"):
        return address, False
    node_ip = _local_gcs_servers().get(port)
    if node_ip is None or node_ip in ("127.0.0.1", "::1"):
        return address, node_ip is not None
    return f"{node_ip}:{port}", False


_PROBE = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(json.dumps(ray.cluster_resources()))
ray.shutdown()
"""


def probe_address(address: str, timeout_s: float) -> dict[str, float]:
    """The cluster resources at `address`, or a FerError within about `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise FerError(
            f"ray profile: nothing answers at address {address} ({exc.strerror or exc}); "
            "start the Ray head there (`ray start --head`) or fix `address` in cluster.yaml"
        ) from exc
    remaining = max(1.0, deadline - time.monotonic())
    process = subprocess.Popen(
        [sys.executable, "-c", _PROBE, address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so the whole probe can be killed at the deadline
        env={**os.environ},
    )
    try:
        out, err = process.communicate(timeout=remaining)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise FerError(
            f"ray profile: address {address} accepts connections but no Ray cluster answered "
            f"within connect_timeout_s={timeout_s:g}s; check that it is the head's GCS port "
            "and that the Ray versions match"
        ) from None
    lines = out.strip().splitlines()
    if process.returncode != 0 or not lines:
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise FerError(f"ray profile: cannot connect to Ray at {address}: {last[:300]}")
    return json.loads(lines[-1])


@contextmanager
def ray_session(settings: RayProfile, setup_hook: str | None = None) -> Iterator[dict[str, float]]:
    """Ray for the duration of the block; yields the cluster's resources.

    Reuses a Ray this process already runs; otherwise connects to `settings.address` or
    starts a local Ray, and shuts down on exit what it started or connected. `setup_hook`
    ("module.function") runs in each Ray worker process as it starts (a session reused from
    elsewhere has its own, or none).
    """
    running = sys.modules.get("ray")
    if running is not None and running.is_initialized():
        yield running.cluster_resources()
        return
    local = settings.address is None
    address = None if local else settings.address
    loopback_head = False
    if address is not None:
        address, loopback_head = resolve_local_head(address)
    prepare_environment(local or loopback_head)
    if address is not None:  # before importing Ray (seconds): a dead address fails fast
        probe_address(address, settings.connect_timeout_s)
    import ray

    common: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False}
    if setup_hook:
        common["runtime_env"] = {"worker_process_setup_hook": setup_hook}
    if local:
        kwargs: dict[str, Any] = {"num_cpus": settings.num_cpus or os.cpu_count() or 1}
        if settings.num_gpus is not None:
            # Ray takes a whole number of GPUs for a node; trials may take fractions.
            kwargs["num_gpus"] = int(settings.num_gpus)
        try:
            # address="local": a new Ray of our own, never one found via RAY_ADDRESS or
            # /tmp/ray/ray_current_cluster (which `ray.init()` would join).
            ray.init(
                address="local",
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                **kwargs,
                **common,
            )
        except Exception as exc:  # e.g. no room in /dev/shm for the object store
            raise FerError(
                f"ray profile: could not start a local Ray ({kwargs}): "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
    else:
        ray.init(address=address, **common)
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()


def check_fits(
    settings: RayProfile, resources: dict[str, float], where: str, ranks: UnitRanks | None = None
) -> None:
    """A trial must fit on the cluster, else Tune waits for ever for resources; so must a
    unit of `ranks.world` ranks (Ray Train workers of `cpus_per_trial` CPUs and, on a GPU
    unit, one GPU each), else Ray Train waits for ever for its workers."""
    for key, ray_key, per_trial in (
        ("cpus_per_trial", "CPU", settings.cpus_per_trial),
        ("gpus_per_trial", "GPU", settings.gpus_per_trial),
    ):
        have = resources.get(ray_key, 0.0)
        if per_trial > have:
            raise FerError(
                f"{where}: {key}={per_trial:g} but the Ray cluster has {have:g} {ray_key}s; "
                f"lower {key} or give Ray more (num_cpus/num_gpus for a local Ray)"
            )
    if ranks is None or ranks.world == 1:
        return
    need = {"CPU": ranks.world * settings.cpus_per_trial, "GPU": ranks.world if ranks.gpu else 0}
    for ray_key, total in need.items():
        have = resources.get(ray_key, 0.0)
        if total > have:
            keys = "gpus_per_unit" if ranks.gpu else "procs_per_unit"
            raise FerError(
                f"{where}: a unit of {ranks.world} ranks ({keys}) needs {total:g} {ray_key}s "
                f"(cpus_per_trial={settings.cpus_per_trial:g} CPUs"
                f"{' and 1 GPU' if ranks.gpu else ''} per rank) but the Ray cluster has "
                f"{have:g}; lower {keys} or cpus_per_trial, or give Ray more"
            )


# --- Ray inside one SLURM allocation ---------------------------------------------------------

SBATCH_TEMPLATE = """#!/bin/bash
#SBATCH --job-name={job_name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task={cpus_per_node}
{gres_line}#SBATCH --time={time_min}
#SBATCH --output={log_dir}/%x-%j.out
{extra_lines}
# A Ray cluster inside this allocation: the head on the first node, a worker on each other
# node, then the orchestrator command at the end run on it (it blocks until done).
# Generated by orchestrator.backends.ray.cluster.render_ray_sbatch.
set -euo pipefail
{setup}
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head_node=${{nodes[0]}}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address | awk '{{print $1}}')
port={port}

ray_start=({python} -m ray.scripts.scripts start
  --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus={gpus_per_node})
srun --overlap --nodes=1 --ntasks=1 -w "$head_node" \\
  "${{ray_start[@]}}" --head --node-ip-address="$head_ip" --port=$port \\
  --include-dashboard=false --block &
for _ in $(seq {head_wait_s}); do  # wait for the head (bounded), then start the workers
  {python} -m ray.scripts.scripts status --address="$head_ip:$port" >/dev/null 2>&1 && break
  sleep 1
done
for node in "${{nodes[@]:1}}"; do
  srun --overlap --nodes=1 --ntasks=1 -w "$node" \\
    "${{ray_start[@]}}" --address="$head_ip:$port" --block &
done
sleep {worker_wait_s}  # Tune also uses workers that join later

cluster_file={run_dir}/ray/cluster-$SLURM_JOB_ID.yaml
mkdir -p {run_dir}/ray
cat > "$cluster_file" <<EOF
ray:
  backend: ray
  address: "$head_ip:$port"
  cpus_per_trial: {cpus_per_trial}
  gpus_per_trial: {gpus_per_trial}
  connect_timeout_s: {connect_timeout_s}
EOF
{python} -m orchestrator {command} \\
  --cluster ray --cluster-file "$cluster_file"
"""


def render_ray_sbatch(
    job_name: str,
    run_dir: str,
    command: list[str],
    allocation: SlurmProfile,
    trials: RayProfile,
    nodes: int,
    port: int = 6379,
) -> str:
    """An sbatch script: Ray head + workers in one allocation, then `python -m orchestrator
    COMMAND --cluster ray --cluster-file <a profile naming the head>`.

    `command`: the orchestrator arguments (e.g. `["tune", "--grid", ...]`), each quoted.
    `allocation`: each node's resources, time, partition and setup lines (a slurm profile);
    `trials`: each trial's resources and the connect timeout (a ray profile).
    `run_dir` holds the job's log and the profile; it must be on a file system every node
    sees (units' checkpoints and results are written there by whichever node runs a trial).
    """
    if nodes < 1:
        raise FerError(f"render_ray_sbatch: nodes must be >= 1, not {nodes}")
    gpus_per_node = allocation.gpus_per_job
    names = (
        ("partition", allocation.partition),
        ("account", allocation.account),
        ("qos", allocation.qos),
    )
    extra = [f"#SBATCH --{key}={value}" for key, value in names if value]
    extra += [f"#SBATCH --{k}={shlex.quote(v)}" for k, v in allocation.extra_sbatch.items()]
    quoted_run_dir = shlex.quote(run_dir)
    return SBATCH_TEMPLATE.format(
        job_name=shlex.quote(job_name),
        nodes=nodes,
        cpus_per_node=allocation.cpus_per_job,
        gres_line=f"#SBATCH --gpus-per-node={gpus_per_node}\n" if gpus_per_node else "",
        time_min=allocation.time_min,
        log_dir=run_dir,  # #SBATCH lines are not shell: no quoting there
        extra_lines="\n".join(extra),
        setup="\n".join(allocation.setup),
        port=port,
        python=allocation.python_command(),
        gpus_per_node=gpus_per_node,
        head_wait_s=120,
        worker_wait_s=5 if nodes > 1 else 0,
        run_dir=quoted_run_dir,
        cpus_per_trial=trials.cpus_per_trial,
        gpus_per_trial=trials.gpus_per_trial,
        connect_timeout_s=trials.connect_timeout_s,
        command=shlex.join(command),
    )
