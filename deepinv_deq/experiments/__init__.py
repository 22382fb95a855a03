r"""The paper's experiments: configurations, methods, training/evaluation runs, tables and figures.

The command line ``deepinv-deq`` (:mod:`deepinv_deq.experiments.cli`) drives them. The
configuration names are imported at once (they need no torch, so ``deepinv-deq --help`` stays
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
    "evaluate": "runner",
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
