r"""deepinv-deq: deep equilibrium models for imaging inverse problems, trained with equivariant
imaging, as a plugin for `deepinv <https://deepinv.github.io>`_.

Importing this package registers :class:`DEQ` as ``deepinv.models.DEQ``,
:class:`ImplicitBackward` as ``deepinv.optim.ImplicitBackward`` and the DEQ-aware losses under
``deepinv.loss``.
"""

import sys as _sys

__version__ = "0.1.0"

__all__ = [
    "DEQ",
    "ImplicitBackward",
    "DEQEILoss",
    "DEQMOEILoss",
    "DEQSureGaussianLoss",
    "JacobianNormLoss",
    "DEQMonitor",
    "ContractiveDenoiser",
    "spectral_radius",
    "spectral_normalize",
    "solvers",
    "maps",
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
    from . import solvers, maps
    from .loss import DEQEILoss, DEQMOEILoss, DEQSureGaussianLoss, JacobianNormLoss
    from .monitor import DEQMonitor
    from .denoisers import ContractiveDenoiser
    from .stabilisers import spectral_radius, spectral_normalize
    from . import denoisers, diagnostics, stabilisers

    from .plugin import register as _register

    _register()
