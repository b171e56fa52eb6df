import pytest

from fer_core.errors import FerError
from orchestrator.plan.profiles import load_profile


def test_repo_profiles_are_valid():
    for name in ("local", "slurm", "slurm-local", "ray"):
        assert load_profile(name)["backend"] in ("local", "slurm", "ray")


@pytest.mark.parametrize(
    ("body", "culprit"),
    [
        ("p: {backend: slurm, partiton: gpu}", "partiton"),
        ("p: {backend: slurm, partition: 'gpu; rm -rf ~'}", "rm -rf"),
        ("p: {backend: slurm, cpus_per_job: 0}", "cpus_per_job"),
        ("p: {backend: kubernetes}", "kubernetes"),
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


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(FerError, match="slurm-local"):
        load_profile("gpu-farm")
