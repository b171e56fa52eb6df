"""Security checks: YAML is loaded safely, checkpoints never unpickle code, config values
never reach a shell, names from a grid cannot leave the run dir. (Ray's ports on loopback
only: tests/faults/test_ray_faults.py, where a real Ray runs.)
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from fer_core.checkpoints import load_checkpoint
from fer_core.data.faces import FaceSet
from fer_core.errors import FerError
from orchestrator.plan.grid import load_grid
from orchestrator.plan.profiles import SlurmProfile, load_profile
from tests.helpers import SMALL_GRID, fake_slurm_tools, sbatch_script

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for d in ("fer_core", "orchestrator") for p in (REPO / d).rglob("*.py"))


class Payload:
    """Unpickling this runs code: it touches a marker file (what an attacker would do worse)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call of `name` (an attribute like `torch.load` or a bare name) in the sources."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                called = (
                    f"{getattr(func.value, 'id', '?')}.{func.attr}"
                    if isinstance(func, ast.Attribute)
                    else getattr(func, "id", "")
                )
                if called == name:
                    found.append((path, node))
    return found


# --- YAML ---------------------------------------------------------------------------------
def test_yaml_python_tags_are_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "evil.yaml"
    grid.write_text("name: !!python/object/apply:os.system ['touch pwned-grid']\n")
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("p: !!python/object/new:subprocess.Popen [['touch', 'pwned-cluster']]\n")
    with pytest.raises(FerError, match="not valid YAML"):
        load_grid(str(grid))
    with pytest.raises(FerError, match="not valid YAML"):
        load_profile("p", cluster)
    assert not list(tmp_path.glob("pwned*"))


def test_every_yaml_load_in_the_code_uses_a_safe_loader():
    unsafe = [p for p, _ in _calls("yaml.unsafe_load") + _calls("yaml.full_load")]
    loads = _calls("yaml.load")
    assert not unsafe
    for path, call in loads:
        loader = next((k.value for k in call.keywords if k.arg == "Loader"), None)
        assert isinstance(loader, ast.Name) and loader.id == "_UniqueKeyLoader", path
    import yaml

    from orchestrator.plan.yamlio import _UniqueKeyLoader

    assert issubclass(_UniqueKeyLoader, yaml.SafeLoader)


# --- checkpoints and face caches: weights_only -----------------------------------------------
def test_a_pickle_payload_checkpoint_is_rejected_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "last.pt"
    torch.save({"model": Payload(marker)}, evil)
    with pytest.raises(FerError, match="not a loadable checkpoint"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_a_pickle_payload_in_a_resume_state_or_parent_is_never_run(twin_faces, tmp_path):
    from tests.faults.crash_child import train

    marker = tmp_path / "pwned"
    work = tmp_path / "work"
    work.mkdir()
    torch.save({"epoch": 0, "best_epoch": 1, "x": Payload(marker)}, work / "last.pt")
    torch.save({"model": Payload(marker)}, work / "best.pt")
    outcome, _ = train(twin_faces, work, epochs=1)  # not trusted: trains from scratch
    assert outcome.resumed_from_epoch == 0 and not marker.exists()

    from fer_core.spec import UnitSpec
    from fer_core.unit import run_unit

    parent = tmp_path / "parent"
    parent.mkdir()
    torch.save({"model": Payload(marker)}, parent / "best.pt")
    # its digest recorded, as if its training wrote it: the load itself must refuse the pickle
    digest = hashlib.sha256((parent / "best.pt").read_bytes()).hexdigest()
    (parent / "checkpoints.json").write_text(json.dumps({"best.pt": digest}))
    spec = {
        "unit_id": "u2",
        "dataset": "ckplus",
        "data_dir": str(twin_faces),
        "fold": 1,
        "backbone": "tiny",
        "strategy": "ce>focal",
        "stage": 2,
        "config": {"loss": "focal", "epochs": 1},
        "parent_id": "u1",
        "parent_dir": str(parent),
        "input_size": 48,
    }
    with pytest.raises(FerError, match="not a loadable checkpoint"):
        run_unit(UnitSpec.from_dict(spec), tmp_path / "u2")
    assert not marker.exists()


def test_a_pickle_payload_face_cache_is_rejected(twin_faces, tmp_path):
    import shutil

    cache = tmp_path / "faces"
    shutil.copytree(twin_faces, cache)
    marker = tmp_path / "pwned"
    torch.save({"images": Payload(marker)}, cache / "faces.pt")
    with pytest.raises(FerError, match="faces"):
        FaceSet.load(cache)
    assert not marker.exists()


def test_every_torch_load_in_the_code_is_weights_only():
    calls = _calls("torch.load")
    assert calls, "expected torch.load calls in fer_core"
    for path, call in calls:
        flag = next((k.value for k in call.keywords if k.arg == "weights_only"), None)
        assert isinstance(flag, ast.Constant) and flag.value is True, (path, call.lineno)
    assert not _calls("pickle.load") and not _calls("pickle.loads")


# --- no shell -------------------------------------------------------------------------------
def test_no_config_value_reaches_a_shell():
    """Subprocesses take argv lists: no shell=True, os.system or os.popen anywhere."""
    for name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
        assert not _calls(name), name
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "shell":
                assert isinstance(node.value, ast.Constant) and node.value.value is False, path


@pytest.mark.parametrize(
    "value", ["debug; rm -rf ~", "debug\nrm -rf ~", "debug\n", "$(touch /tmp/pwned)", "a b"]
)
def test_a_slurm_name_with_shell_in_it_is_refused(tmp_path, value):
    import yaml

    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"p": {"backend": "slurm", "partition": value}}))
    with pytest.raises(FerError, match=r"partition: .* must be a SLURM name"):
        load_profile("p", path)


def test_slurm_values_are_single_argv_items_even_when_unvalidated(tmp_path, monkeypatch):
    """Defence in depth: even a value that slipped past validation is one quoted #SBATCH
    option (a newline, which quoting cannot tame, is refused by validation above), and the
    unit's name becomes a job name of safe characters."""
    fake_slurm_tools(monkeypatch, tmp_path)
    from orchestrator.backends.slurm.backend import SlurmBackend, job_name
    from orchestrator.plan.unit import Unit
    from orchestrator.run.rundir import RunDir

    unit = Unit("u1", "train", "x; rm -rf ~/f01/tiny/ce", "x", (), {}, 1, 1, "tiny", "ce")
    backend = SlurmBackend(SlurmProfile(partition="debug; touch /tmp/pwned", time_min=5))
    text = sbatch_script(backend.executor(RunDir(tmp_path / "run"), [(unit,)], "", "KEY"))
    partition = [line for line in text.splitlines() if "--partition" in line]
    assert partition == ["#SBATCH --partition='debug; touch /tmp/pwned'"]  # one quoted value
    assert not any(line.startswith("touch") for line in text.splitlines())
    assert job_name(unit) == "fer-x_rm_-rf_f01_tiny_ce"


# --- names from a grid stay inside the run dir ------------------------------------------------
@pytest.mark.parametrize("name", ["../../escape", "a/b", ".hidden", "x y", "ck;rm"])
def test_a_dataset_name_cannot_leave_the_run_dir(tmp_path, name):
    grid = tmp_path / "grid.yaml"
    grid.write_text(SMALL_GRID.replace("  ckplus:\n", f"  '{name}':\n"))
    with pytest.raises(FerError, match="dataset name"):
        load_grid(str(grid))
