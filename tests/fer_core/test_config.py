import pytest

from fer_core.config import StageConfig
from fer_core.errors import FerError


def test_defaults_are_the_papers():
    config = StageConfig()
    assert (config.epochs, config.lr, config.momentum, config.weight_decay) == (80, 0.01, 0.9, 1e-3)
    assert config.batch_size == 32
    assert config.lr_at(59) == pytest.approx(0.01)
    assert config.lr_at(60) == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("values", "culprit"),
    [
        ({"loss": "hinge"}, "hinge"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"lr": -1}, "lr"),
        ({"selection": "test"}, "selection"),
        ({"loss": "focal", "alpha": 0}, "alpha"),
        ({"loss": "focal", "gamma": -1}, "-1"),
        ({"epoch": 3}, "epoch"),
    ],
)
def test_bad_values_name_the_culprit(values, culprit):
    with pytest.raises(FerError, match=culprit):
        StageConfig.from_dict(values)
