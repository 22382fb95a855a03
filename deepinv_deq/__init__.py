r"""deepinv-deq: deep equilibrium models for imaging inverse problems, trained with equivariant
imaging, as a plugin for `deepinv <https://deepinv.github.io>`_.

Importing this package registers :class:`DEQ` as ``deepinv.models.DEQ``,
:class:`ImplicitBackward` as ``deepinv.optim.ImplicitBackward``, the DEQ-aware losses under
``deepinv.loss`` and :class:`SparseMatrixPhysics` as ``deepinv.physics.SparseMatrixPhysics``.

Package map (data flows one way: experiments -> Trainer -> DEQ -> map, solver, backward -> physics;
nothing below ``deq`` imports from ``experiments`` or ``loss``):

- ``deq``: :class:`DEQ`, a deepinv Reconstructor composed of a map, a forward solver and a backward.
- ``maps``: fixed-point maps (PGD, HQS, RED, any callable).
- ``physics``: :class:`SparseMatrixPhysics`, a linear physics stored as sparse matrices (the same
  operator, applied faster).
- ``denoisers``: :class:`ContractiveDenoiser`, a contraction at initialisation.
- ``solvers``: fixed-point iteration, Anderson acceleration, GMRES; statuses and statistics.
- ``backward``: implicit differentiation, JFB, phantom gradients.
- ``implicit``: :class:`ImplicitBackward`, the public entry point to the backward strategies.
- ``loss``: DEQ-aware EI / robust-EI losses; ``stabilisers``, ``monitor``, ``diagnostics``.
- ``plugin``: registration into deepinv; ``data``: offline phantoms and real-data folders.
- ``experiments``: the paper's experiments and the ``deepinv-deq`` command line.
- private: ``_validation`` (option and input checks), ``_autodiff``, ``_report``.
"""

import sys as _sys

__version__ = "0.3.0"

__all__ = [
    "DEQ",
    "ImplicitBackward",
    "DEQEILoss",
    "DEQMOEILoss",
    "DEQSureGaussianLoss",
    "JacobianNormLoss",
    "SparseMatrixPhysics",
    "DEQMonitor",
    "ContractiveDenoiser",
    "spectral_radius",
    "spectral_normalize",
    "solvers",
    "backward",
    "maps",
    "physics",
    "denoisers",
    "diagnostics",
    "stabilisers",
    "__version__",
]

# `deepinv-deq --help`, `--version` and usage errors must not import torch: while the command's
# launcher (launcher/_deepinv_deq_cli.py) parses the arguments, only __version__ is defined here;
# the command line then re-runs this file (deepinv_deq.experiments.cli.load_package).
if not getattr(_sys.modules.get("_deepinv_deq_cli"), "PARSING", False):
    from .implicit import ImplicitBackward
    from .deq import DEQ
    from . import solvers, backward, maps
    from .loss import DEQEILoss, DEQMOEILoss, DEQSureGaussianLoss, JacobianNormLoss
    from .monitor import DEQMonitor
    from .denoisers import ContractiveDenoiser
    from .physics import SparseMatrixPhysics
    from .stabilisers import spectral_radius, spectral_normalize
    from . import denoisers, diagnostics, physics, stabilisers

    from .plugin import register as _register

    _register()
