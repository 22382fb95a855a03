r"""The paper's experiments: configurations, methods, training/evaluation runs, tables and figures.

Package map, one concept a module (an arrow is "imports"; there is no import cycle):

- :mod:`~deepinv_deq.experiments.configs`: settings (:class:`ExperimentConfig`), tasks, methods,
  regimes and size presets, validated (no torch).
- :mod:`~deepinv_deq.experiments.configurations`: the configurations of the claims and the
  null-space diagnostic (-> configs).
- :mod:`~deepinv_deq.experiments.tasks`: the forward operators and their linear inversions.
- :mod:`~deepinv_deq.experiments.methods`: the models and losses of each method and regime
  (-> tasks).
- :mod:`~deepinv_deq.experiments.training`: the training loop, checkpoints and solve counting
  (-> plateau).
- :mod:`~deepinv_deq.experiments.plateau`: the plateau budget (how long a run trains).
- :mod:`~deepinv_deq.experiments.seeds`: one stable seed and generator per purpose (fairness).
- :mod:`~deepinv_deq.experiments.layout`: where a run lives, and whether its stored settings
  match (resumption, ``--extend``).
- :mod:`~deepinv_deq.experiments.evaluation`: held-out measurements, PSNR/SSIM, equivariance
  error, the aggregation over seeds and the re-evaluation of stored weights (-> methods, tasks,
  training, seeds).
- :mod:`~deepinv_deq.experiments.runner`: one run: train each seed (resumable, in parallel), the
  PnP/RED settings (-> evaluation, layout, methods, tasks, training, plateau, results, seeds).
- :mod:`~deepinv_deq.experiments.results`: tables and paired differences (-> configs).
- :mod:`~deepinv_deq.experiments.figures`: reconstructions, training curves and the claims'
  figures (-> results, layout).
- :mod:`~deepinv_deq.experiments.claims`: the paper's claims, how each is judged, and their runs
  on every configuration (-> configurations, results, runner, evaluation, layout, tasks).
- :mod:`~deepinv_deq.experiments.cli`: the command line's parser and help (no torch), and
  :mod:`~deepinv_deq.experiments.commands`: what each command does (-> runner, evaluation,
  layout, results, figures, claims).

The configuration names are imported at once (they need no torch, so ``deepinv-deq --help`` stays
fast); the models and the runner are imported on first use.
"""

from importlib import import_module as _import_module

from .configs import METHODS, PRESETS, REGIMES, TASKS, ExperimentConfig

#: public name -> submodule that defines it (imported on first access)
_LAZY = {
    "Unrolled": "methods",
    "PseudoInverseNet": "methods",
    "build_model": "methods",
    "build_losses": "methods",
    "run": "runner",
    "evaluate": "evaluation",
}

__all__ = [
    "ExperimentConfig",
    "METHODS",
    "PRESETS",
    "REGIMES",
    "TASKS",
    "Unrolled",
    "PseudoInverseNet",
    "build_model",
    "build_losses",
    "run",
    "evaluate",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
