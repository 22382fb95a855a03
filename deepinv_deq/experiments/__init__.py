r"""The paper's experiments: configurations, methods, training/evaluation runs, tables and figures.

The command line ``deepinv-deq`` (:mod:`deepinv_deq.experiments.cli`) drives them.
"""

from .configs import METHODS, PRESETS, REGIMES, TASKS, ExperimentConfig
from .methods import PseudoInverseNet, Unrolled, build_losses, build_model
from .runner import evaluate, run

__all__ = [
    "ExperimentConfig", "METHODS", "PRESETS", "REGIMES", "TASKS",
    "Unrolled", "PseudoInverseNet", "build_model", "build_losses", "run", "evaluate",
]
