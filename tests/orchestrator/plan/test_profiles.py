from dataclasses import fields, replace

import pytest

import orchestrator.run.launch as launch_module
from fer_core.errors import FerError
from orchestrator.cli import main
from orchestrator.plan.profiles import (
    PROFILES,
    LocalProfile,
    RayProfile,
    SlurmProfile,
    load_profile,
    with_parallelism,
)
from tests.helpers import SMALL_GRID


def test_repo_profiles_are_valid_and_typed_by_backend():
    kinds = {"local": LocalProfile, "slurm": SlurmProfile, "slurm-local": SlurmProfile}
    for name, kind in {**kinds, "ray": RayProfile}.items():
        assert type(load_profile(name)) is kind


@pytest.mark.parametrize(
    ("body", "culprit"),
    [
        ("p: {backend: slurm, partiton: gpu}", "partiton"),
        ("p: {backend: slurm, partition: 'gpu; rm -rf ~'}", "rm -rf"),
        ("p: {backend: slurm, cpus_per_job: 0}", "cpus_per_job"),
        ("p: {backend: kubernetes}", "kubernetes"),
        ("p: {backend: [slurm]}", "backend"),
        ("p: {backend: ray, gpus_per_trial: -0.5}", "gpus_per_trial"),
        ("p: {backend: local, jobs: two}", "two"),
        ("p: {backend: slurm, setup: 'module load cuda'}", "setup"),
    ],
)
def test_bad_profiles_are_rejected_by_name(tmp_path, body, culprit):
    path = tmp_path / "cluster.yaml"
    path.write_text(body)
    with pytest.raises(FerError, match=culprit) as error:
        load_profile("p", path)
    assert str(path) in str(error.value)


# Every key of every backend, from the dataclasses: each has a check, and a value no check
# takes (a mapping holding a list) is refused naming the file, the profile and that key.
KEYS = [(backend, key.name) for backend, kind in PROFILES.items() for key in fields(kind)]


@pytest.mark.parametrize(("backend", "key"), KEYS)
def test_every_key_is_checked_and_a_bad_value_names_it(tmp_path, backend, key):
    path = tmp_path / "cluster.yaml"
    path.write_text(f"p: {{backend: {backend}, {key}: {{x: [1]}}}}\n")
    with pytest.raises(FerError) as error:
        load_profile("p", path)
    assert str(error.value).startswith(f"{path}: p.{key}: {{'x': [1]}} must be ")


def test_an_unknown_key_lists_the_dataclass_fields(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("p: {backend: local, jbos: 2}\n")
    with pytest.raises(
        FerError, match="allowed: collective_timeout_s, jobs, procs_per_unit, threads_per_job$"
    ):
        load_profile("p", path)


def test_a_profile_naming_only_its_backend_takes_each_keys_one_default(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("l: {backend: local}\ns: {backend: slurm}\nr: {backend: ray}\n")
    assert load_profile("l", path) == LocalProfile(jobs=1, threads_per_job=1)
    slurm = load_profile("s", path)
    assert slurm == SlurmProfile()
    assert (slurm.time_min, slurm.array_parallelism, slurm.units_per_job) == (60, None, 1)
    assert (slurm.timeout_requeues, slurm.retries, slurm.retry_backoff_s) == (3, 8, 2.0)
    assert (slurm.setup, slurm.env, slurm.python, slurm.mem_gb) == ((), {}, None, None)
    ray = load_profile("r", path)
    assert ray == RayProfile()
    assert (ray.address, ray.max_concurrent, ray.max_failures) == (None, None, 2)
    assert (ray.cpus_per_trial, ray.gpus_per_trial, ray.connect_timeout_s) == (1.0, 0.0, 30.0)


def test_yaml_values_become_the_field_types(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("p: {backend: slurm, setup: [a, b], env: {N: 4, F: 0.5, S: x}}\n")
    profile = load_profile("p", path)
    assert isinstance(profile, SlurmProfile)
    assert profile.setup == ("a", "b")
    assert profile.env == {"N": "4", "F": "0.5", "S": "x"}


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(FerError, match="slurm-local"):
        load_profile("gpu-farm")


# --- --jobs ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("profile", "key"),
    [
        (LocalProfile(), "jobs"),
        (SlurmProfile(), "array_parallelism"),
        (RayProfile(), "max_concurrent"),
    ],
)
def test_jobs_sets_the_one_key_that_means_units_at_once(profile, key):
    assert with_parallelism(profile, 3) == replace(profile, **{key: 3})
    for bad in (0, -3, True, 2.5):
        with pytest.raises(FerError, match=f"^--jobs {bad!r}: must be an integer >= 1$"):
            with_parallelism(profile, bad)


class Captured(Exception):
    """Stops a launch at make_backend, with the profile it was given."""


@pytest.mark.parametrize(
    ("cluster", "expected"),
    [
        ("local", LocalProfile(jobs=3, threads_per_job=1)),
        (
            "slurm",
            SlurmProfile(
                partition="gpu",
                gpus_per_job=4,
                cpus_per_job=16,
                time_min=120,
                setup=("module load cuda/12.4",),
                array_parallelism=3,
            ),
        ),
        (
            "ray",
            RayProfile(
                num_cpus=2,
                cpus_per_trial=1,
                gpus_per_trial=0,
                connect_timeout_s=5,
                max_concurrent=3,
            ),
        ),
    ],
)
def test_launch_jobs_reaches_the_backend_as_its_own_key(
    cluster, expected, cluster_file, tmp_path, monkeypatch
):
    def capture(profile):
        raise Captured(profile)

    monkeypatch.setattr(launch_module, "make_backend", capture)
    grid = tmp_path / "grid.yaml"
    grid.write_text(SMALL_GRID)
    argv = ["launch", "--grid", str(grid), "--run-dir", str(tmp_path / "run")]
    argv += ["--cluster", cluster, "--cluster-file", str(cluster_file), "--jobs", "3"]
    with pytest.raises(Captured) as captured:
        main(argv)
    assert captured.value.args[0] == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{backend: slurm, gpus_per_unit: 2, procs_per_unit: 2}", "set one"),
        ("{backend: slurm, gpus_per_unit: 4, nodes_per_unit: 3}", "does not divide"),
        ("{backend: slurm, procs_per_unit: 2, units_per_job: 2}", "use one or the other"),
        ("{backend: ray, gpus_per_unit: 2, procs_per_unit: 3}", "set one"),
    ],
)
def test_rank_keys_that_do_not_go_together_are_refused_naming_the_profile(tmp_path, body, message):
    path = tmp_path / "cluster.yaml"
    path.write_text(f"p: {body}\n")
    with pytest.raises(FerError, match=f"cluster.yaml: p: .*{message}"):
        load_profile("p", path)


def test_a_multi_gpu_unit_asks_each_node_for_its_share_of_the_gpus():
    from orchestrator.plan.unit import Unit

    train = Unit("t", "train", "ds/f00/tiny/ce", "ds", (), {"config": {"batch_size": 8}})
    prepare = Unit("p", "prepare", "prepare ds", "ds", (), {})
    profile = SlurmProfile(gpus_per_job=1, gpus_per_unit=8, nodes_per_unit=2)
    ranks = profile.unit_ranks(train)
    assert (ranks.world, ranks.nodes, ranks.per_node, ranks.gpu) == (8, 2, 4, True)
    assert profile.resources_for([train]).gpus == 4
    assert profile.unit_ranks(prepare).world == 1
    assert profile.resources_for([prepare]).gpus == 1
    cpu = SlurmProfile(procs_per_unit=2)
    assert (cpu.unit_ranks(train).world, cpu.unit_ranks(train).gpu) == (2, False)


def test_a_global_batch_that_does_not_split_over_the_ranks_is_refused():
    from orchestrator.plan.profiles import check_unit_ranks
    from orchestrator.plan.unit import Unit

    train = Unit("t", "train", "ds/f00/tiny/ce", "ds", (), {"config": {"batch_size": 9}})
    check_unit_ranks(LocalProfile(procs_per_unit=3), [train], "--cluster p")
    with pytest.raises(FerError, match="batch_size 9 of ds/f00/tiny/ce .* 2 ranks"):
        check_unit_ranks(LocalProfile(procs_per_unit=2), [train], "--cluster p")
