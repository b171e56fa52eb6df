"""`python -m orchestrator ...`: launch, status, cancel, query, report, tune, data, cluster,
predict, export, weights.

Every user error is one line on stderr (`error: ...`) and exit status 2.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

from fer_core.errors import FerError
from orchestrator.cli.stdout import QuietStdout
from orchestrator.plan.grid import parse_data_roots, parse_seeds

REPO = Path(__file__).resolve().parents[2]


def _run_dir(args: argparse.Namespace) -> Path:
    from orchestrator.run.rundir import RunDir

    return Path(args.run_dir) if args.run_dir else RunDir.default_path(args.grid)


def cmd_launch(args: argparse.Namespace) -> int:
    from orchestrator.plan.overrides import parse_settings
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
        settings=parse_settings(args.set),
        live=args.live,
        seeds=parse_seeds(args.seeds) if args.seeds is not None else None,
        estimate_from=[_existing_run_dir(path) for path in args.estimate_from or []],
    )
    if args.dry_run:
        return 0
    return _finish(RunDir(rundir.path))


def _existing_run_dir(path: str) -> Path:
    if not (Path(path) / "store").is_dir():
        raise FerError(f"--estimate-from {path}: not a run dir with a store (no {path}/store)")
    return Path(path)


def _backend_of(rundir):
    from orchestrator.backends import make_backend
    from orchestrator.plan.profiles import load_profile

    return make_backend(load_profile(*rundir.profile()))


def _finish(rundir) -> int:
    """After a launch: the state table; when everything is done, the report too."""
    from orchestrator.run.states import State, counts
    from orchestrator.run.status import unit_states

    units = rundir.read_dag()
    backend = _backend_of(rundir)
    tally = counts(unit_states(rundir, units, backend))
    print("units: " + ", ".join(f"{k} {v}" for k, v in tally.items() if v))
    if tally[State.DONE] == len(units):
        from orchestrator.report.document import write_report

        report = write_report(rundir.path)
        print(report.strategy_table)
        print(f"report: {report.path}")
        return 0
    bad = tally[State.FAILED] + tally[State.BLOCKED]
    # A local launch returns once its units have ended: one still to do neither finished nor
    # failed (stopped by a signal, or its dependency was), and the launch did not do its job.
    unfinished = tally[State.TODO] if backend.name == "local" else 0
    see = f"see `python -m orchestrator status --run-dir {rundir.path}`"
    if bad:
        print(f"{bad} units failed or blocked: {see}", file=sys.stderr)
    if unfinished:
        print(
            f"{unfinished} units neither done nor failed (stopped, or waiting on a stopped "
            f"unit): `launch` again runs them; {see}",
            file=sys.stderr,
        )
    return 1 if bad or unfinished else 0


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator.run.rundir import RunDir
    from orchestrator.run.status import print_status

    rundir = RunDir(_run_dir(args))
    rundir.info()
    if args.watch:
        from orchestrator.run.progress import watch

        if args.interval <= 0:
            raise FerError(f"--interval {args.interval}: must be > 0 seconds")
        return watch(rundir, _backend_of(rundir), args.interval)
    return print_status(rundir, _backend_of(rundir), as_json=args.json)


def cmd_cancel(args: argparse.Namespace) -> int:
    from orchestrator.run.rundir import RunDir

    rundir = RunDir(_run_dir(args))
    rundir.info()
    cancelled = _backend_of(rundir).cancel(rundir)
    print(f"cancelled {len(cancelled)} units of {rundir.path}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from orchestrator.query import describe_tables, run_query

    if args.tables:
        print(describe_tables(_run_dir(args)))
        return 0
    if not args.sql:
        raise FerError("query: give the SQL to run, or --tables to list the tables")
    fmt = "csv" if args.csv else "json" if args.json else "table"
    print(run_query(_run_dir(args), args.sql, fmt=fmt))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator.report.document import write_report
    from orchestrator.run.rundir import RunDir

    rundir = RunDir(_run_dir(args))
    try:  # the scheduler's accounting, for the cost section
        backend = _backend_of(rundir)
    except FerError:  # e.g. a SLURM run reported where there is no sbatch: as last stored
        backend = None
    if backend is not None:
        backend.record_accounting(rundir)
    report = write_report(rundir.path)
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
            settings=tuple(args.set or ()),
        )
    )


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; each option's help ends with its default, unless the help
    says it already or there is none to show (None, a False flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        hidden = default is None or default is False or default == argparse.SUPPRESS
        if "(default" in text or hidden or not text:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one line `error: ...` on stderr, exit 2
    (argparse's default prints the usage first; `--help` still shows it). Help texts show
    each option's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message}\n")


SET_HELP = (
    "override a grid key by dotted path, value read as YAML (train.lr=0.05, stages.2.epochs=40, "
    "datasets.ckplus.focal.gamma=1); KEY=a,b,c sweeps the values (cartesian across keys), "
    "each point its own units; repeatable"
)
QUERY_HELP = """Read-only SQL (DuckDB) over the run dir's result tables.

Tables (the units of the run dir's current DAG, dag.json, i.e. of the last launch):
  runs         one row per finished training: config, accuracies, timings, versions
  predictions  one row per test image: label, prediction, probabilities
  epochs       one row per epoch of each training: loss, accuracy, LR, seconds
  prepare      one row per prepared dataset: images, subjects, face detector counts
  trials       one row per tune trial (written by `tune`)
predictions and epochs also carry the unit's dataset, backbone, strategy, fold, seed, stage
and selection. Rows of units that an earlier version of the grid launched into this run dir
stay reachable as runs_all, predictions_all, epochs_all, prepare_all (same columns plus
`current`, true for the current DAG's units). `--tables` lists tables and columns.
Reading statements work (SELECT, WITH, PIVOT, DESCRIBE, SUMMARIZE, SHOW, EXPLAIN); writes,
settings and file access are refused.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m orchestrator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str | None = None) -> _Parser:
        return sub.add_parser(name, help=summary, description=description or summary)

    def run_dir_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--run-dir", help="run directory (default: runs/GRID)")
        p.add_argument("--grid", default="demo", help="grid name, for the default run dir")

    p = command("launch", "run a grid (only what is not done yet); re-run to resume")
    p.add_argument("--grid", default="demo", help="jobs/NAME.yaml, or a path to a grid file")
    p.add_argument("--cluster", default="local", help="execution profile of cluster.yaml")
    p.add_argument("--cluster-file", help="another cluster.yaml (default: the repo's)")
    p.add_argument("--run-dir", help="run directory (default: runs/GRID)")
    p.add_argument(
        "--jobs",
        type=int,
        help="units at once: sets the profile's jobs (local), array_parallelism (slurm: "
        "tasks of an array at once) or max_concurrent (ray: trials at once)",
    )
    p.add_argument(
        "--data", action="append", metavar="NAME=DIR", help="a dataset's raw root; repeatable"
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", dest="set", help=SET_HELP)
    p.add_argument(
        "--seeds",
        metavar="N,N,...",
        help="replicates: run every unit once per seed (replaces the grid's seed/seeds)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    p.add_argument(
        "--estimate-from",
        action="append",
        metavar="RUN_DIR",
        help="--dry-run --cluster slurm: estimate from this earlier run's measured epochs "
        "(same backbone, input size and device kind only); repeatable",
    )
    p.add_argument(
        "--wait", action="store_true", help="block until the cluster jobs finish (slurm, ray)"
    )
    p.add_argument(
        "--live",
        choices=["auto", "on", "off"],
        default="auto",
        help="a live view of the units while a local/ray launch runs (auto: on a terminal)",
    )
    p.set_defaults(func=cmd_launch)

    p = command("status", "units by state; running ones with epoch, loss and ETA")
    run_dir_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--watch",
        action="store_true",
        help="redraw until nothing is queued or running (any backend)",
    )
    p.add_argument("--interval", type=float, default=2.0, help="seconds between redraws")
    p.set_defaults(func=cmd_status)

    p = command("cancel", "cancel what this run submitted (nothing else)")
    run_dir_args(p)
    p.set_defaults(func=cmd_cancel)

    p = command("query", "read-only SQL over the result tables", QUERY_HELP)
    p.add_argument("sql", nargs="?", help="the SQL; several statements print the last's rows")
    run_dir_args(p)
    p.add_argument("--tables", action="store_true", help="list the tables and their columns")
    p.add_argument("--csv", action="store_true", help="print CSV with a header (default: a table)")
    p.add_argument(
        "--json", action="store_true", help="print a JSON list of records (default: a table)"
    )
    p.set_defaults(func=cmd_query)

    p = command("report", "write the Markdown report with tables and figures")
    run_dir_args(p)
    p.set_defaults(func=cmd_report)

    p = command("tune", "Ray Tune search over stage-2 focal alpha/gamma (nested)")
    p.add_argument("--grid", default="tune", help="a tune grid: jobs/NAME.yaml or a path")
    p.add_argument(
        "--cluster",
        default="ray",
        help="profile: ray (local Ray or address:), local, or slurm (Ray in sbatch)",
    )
    p.add_argument("--cluster-file", help="another cluster.yaml (default: the repo's)")
    p.add_argument("--run-dir", help="run directory (default: runs/GRID); re-run to resume")
    p.add_argument(
        "--samples", type=int, help="trials of a random search (default: the grid's search.samples)"
    )
    p.add_argument(
        "--data", action="append", metavar="NAME=DIR", help="a dataset's raw root; repeatable"
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        dest="set",
        help="override a grid key by dotted path (train.lr=0.05, search.samples=8); "
        "single values only; repeatable",
    )
    p.add_argument(
        "--nodes", type=int, help="SLURM nodes for the Ray cluster (--cluster slurm) (default: 1)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (slurm: write the sbatch script), run nothing",
    )
    p.set_defaults(func=cmd_tune)

    from orchestrator.cli import data as datacli

    p = command("data", "synthesise, index or face-crop a dataset by hand", datacli.__doc__)
    datacli.add_arguments(p)
    p.set_defaults(func=cmd_data)

    from orchestrator.cli import export, predict, weights

    for module, text in (
        (predict, "a run's trained model on your images (the same face crop as training)"),
        (export, "a trained model as TorchScript or ONNX, checked against PyTorch"),
        (weights, "make a backbone's pre-trained file (import vgg_face FILE)"),
    ):
        p = command(module.__name__.rsplit(".", 1)[-1], text)
        module.add_arguments(p)
        p.set_defaults(func=module.run)

    p = command(
        "cluster",
        "manage a real one-node SLURM on this machine",
        """Manage a real one-node SLURM (slurmctld, slurmd, slurmdbd with MariaDB accounting,
munge) on this machine, for `--cluster slurm-local` or CI (scripts/local_slurm.sh; run as
root). Every daemon listens on 127.0.0.1 only; state in $FER_SLURM_STATE
(default /var/lib/fer-slurm), logs in its log/ folder.

actions:
  install  apt-install the daemons (quick when they are present)
  up       install if needed, configure, start, wait until the node is idle
  down     stop slurmd, slurmctld, slurmdbd, munged, mariadbd
  status   each daemon and sinfo; exit 0 only if jobs can run and sacct works
""",
    )
    p.add_argument("which", choices=["local-slurm"], help="the cluster to manage")
    p.add_argument(
        "action", choices=["install", "up", "down", "status"], help="what to do (see above)"
    )
    p.set_defaults(func=cmd_cluster)
    return parser


def main(argv: list[str] | None = None) -> int:
    stdout = sys.stdout
    sys.stdout = QuietStdout(stdout)  # `... | head`: quiet, and the work goes on
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except FerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout.flush()
        sys.stdout = stdout
