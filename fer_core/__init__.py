"""fer_core: the training library for the two-stage CE -> focal method (Gan, Zou & Zhang, 2019).

Usable without the orchestrator: datasets and folds (`fer_core.data`), backbones
(`fer_core.models`), losses (`fer_core.losses`), one training stage (`fer_core.train`),
evaluation (`fer_core.evaluate`) and the single entry point a scheduler calls
(`fer_core.unit.run_unit`).
"""

__version__ = "0.1.0"
