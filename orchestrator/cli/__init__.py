"""`python -m orchestrator ...`: launch, status, cancel, query, report, tune, data, cluster.

Every user error is one line on stderr (`error: ...`) and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from fer_core.errors import FerError
from orchestrator.plan.grid import parse_data_roots

REPO = Path(__file__).resolve().parents[2]


def _run_dir(args: argparse.Namespace) -> Path:
    return Path(args.run_dir) if args.run_dir else Path("runs") / args.grid


def cmd_launch(args: argparse.Namespace) -> int:
    from orchestrator.run.launch import launch
    from orchestrator.run.rundir import RunDir

    rundir = launch(
        args.grid,
        cluster=args.cluster,
        run_dir=Path(args.run_dir) if args.run_dir else None,
        jobs=args.jobs,
        dry_run=args.dry_run,
        wait=args.wait,
        data_roots=parse_data_roots(args.data),
        cluster_file=Path(args.cluster_file) if args.cluster_file else None,
    )
    if args.dry_run:
        return 0
    return _finish(RunDir(rundir.path))


def _backend_of(rundir):
    from orchestrator.backends import make_backend
    from orchestrator.plan.profiles import load_profile

    path = rundir.path / "profile.json"
    saved = json.loads(path.read_text()) if path.is_file() else {"cluster": "local"}
    cluster_file = Path(saved["cluster_file"]) if saved.get("cluster_file") else None
    return make_backend(load_profile(saved["cluster"], cluster_file))


def _finish(rundir) -> int:
    """After a launch: the state table; when everything is done, the report too."""
    from orchestrator.run import states as st

    units = rundir.read_dag()
    states = st.unit_states(rundir, units, _backend_of(rundir))
    counts = st.counts(states)
    print("units: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    if counts[st.DONE] == len(units):
        from orchestrator.report.document import write_report

        report = write_report(rundir.path)
        print(report.strategy_table)
        print(f"report: {report.path}")
        return 0
    bad = counts[st.FAILED_STATE] + counts[st.BLOCKED]
    if bad:
        print(
            f"{bad} units failed or blocked: see `python -m orchestrator status "
            f"--run-dir {rundir.path}`",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator.run.rundir import RunDir
    from orchestrator.run.status import print_status

    rundir = RunDir(_run_dir(args))
    rundir.info()
    return print_status(rundir, _backend_of(rundir), as_json=args.json)


def cmd_cancel(args: argparse.Namespace) -> int:
    from orchestrator.run.rundir import RunDir

    rundir = RunDir(_run_dir(args))
    rundir.info()
    cancelled = _backend_of(rundir).cancel(rundir)
    print(f"cancelled {len(cancelled)} units of {rundir.path}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from orchestrator.query import run_query

    fmt = "csv" if args.csv else "json" if args.json else "table"
    print(run_query(_run_dir(args), args.sql, fmt=fmt))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator.report.document import write_report

    report = write_report(_run_dir(args))
    print(report.strategy_table)
    print(f"report: {report.path}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from orchestrator.cli import data as datacli

    return datacli.run(args)


def cmd_cluster(args: argparse.Namespace) -> int:
    script = REPO / "scripts" / "local_slurm.sh"
    return subprocess.call(["bash", str(script), args.action])


def cmd_tune(args: argparse.Namespace) -> int:
    from orchestrator.tune.nested import TuneRequest, run_tune

    return run_tune(
        TuneRequest(
            grid=args.grid,
            cluster=args.cluster,
            cluster_file=Path(args.cluster_file) if args.cluster_file else None,
            run_dir=Path(args.run_dir) if args.run_dir else None,
            samples=args.samples,
            data=tuple(args.data or ()),
            nodes=args.nodes,
            dry_run=args.dry_run,
        )
    )


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one line `error: ...` on stderr, exit 2
    (argparse's default prints the usage first; `--help` still shows it)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m orchestrator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def run_dir_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--run-dir", help="run directory (default: runs/GRID)")
        p.add_argument("--grid", default="demo", help="grid name for the default run dir")

    p = sub.add_parser("launch", help="run a grid (only what is not done yet)")
    p.add_argument("--grid", default="demo", help="jobs/NAME.yaml or a path (default: demo)")
    p.add_argument("--cluster", default="local", help="profile of cluster.yaml (default: local)")
    p.add_argument("--cluster-file", help="another cluster.yaml")
    p.add_argument("--run-dir", help="run directory (default: runs/GRID)")
    p.add_argument("--jobs", type=int, help="units at once (local) / array parallelism")
    p.add_argument("--data", action="append", metavar="NAME=DIR", help="a dataset's raw root")
    p.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    p.add_argument("--wait", action="store_true", help="block until the cluster jobs finish")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("status", help="units by state")
    run_dir_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="cancel what this run submitted")
    run_dir_args(p)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("query", help="SQL over the runs/predictions/epochs/trials tables")
    p.add_argument("sql")
    run_dir_args(p)
    p.add_argument("--csv", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("report", help="Markdown report with tables and figures")
    run_dir_args(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("tune", help="Ray Tune search over stage-2 focal alpha/gamma (nested)")
    p.add_argument("--grid", default="tune", help="a tune grid (default: jobs/tune.yaml)")
    p.add_argument(
        "--cluster",
        default="ray",
        help="profile: ray (local Ray or address:), local, or slurm (Ray in sbatch)",
    )
    p.add_argument("--cluster-file", help="another cluster.yaml")
    p.add_argument("--run-dir", help="run directory (default: runs/GRID); re-run to resume")
    p.add_argument("--samples", type=int, help="trials of a random search (overrides the grid)")
    p.add_argument("--data", action="append", metavar="NAME=DIR", help="a dataset's raw root")
    p.add_argument("--nodes", type=int, help="SLURM nodes for the Ray cluster (--cluster slurm)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (slurm: write the sbatch script), run nothing",
    )
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("data", help="synthesise, index or face-crop a dataset")
    from orchestrator.cli import data as datacli

    datacli.add_arguments(p)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("cluster", help="a real one-node SLURM on this machine")
    p.add_argument("which", choices=["local-slurm"])
    p.add_argument("action", choices=["install", "up", "down", "status"])
    p.set_defaults(func=cmd_cluster)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
