r"""Solvers: how to find a fixed point :math:`x = f(x)`, and how to solve the backward linear system.

All solvers are batched (the first dimension indexes independent problems), work on any tensor
shape, device and dtype, and return a :class:`SolverResult` with per-sample :class:`SolverStats`.
Use :func:`get_solver` to build one from its name and validated options.
"""

from __future__ import annotations

from .._validation import check_choice, reject_unknown
from .anderson import AndersonAcceleration
from .base import FixedPointSolver, SolverResult, SolverStats, SolverStatus
from .fixed_point import FixedPointIteration
from .krylov import GMRES

#: solver names accepted by :func:`get_solver`
SOLVERS = {
    "fixed_point": FixedPointIteration,
    "anderson": AndersonAcceleration,
    "gmres": GMRES,
}


def get_solver(name, owner: str = "get_solver", allowed=tuple(SOLVERS), **options):
    r"""Build a solver from its name, or check and return a solver instance.

    :param str, torch.nn.Module name: ``"fixed_point"``, ``"anderson"``, ``"gmres"`` or a solver
        instance (then ``options`` must be empty).
    :param str owner: name used in error messages.
    :param tuple allowed: the names accepted in this context.
    :param options: keyword options of the solver; an unknown one raises :class:`ValueError`.

    |sep|

    :Example:

    >>> from deepinv_deq.solvers import get_solver
    >>> get_solver("anderson", max_iter=30, history_size=3)
    AndersonAcceleration(max_iter=30, tol=0.0001, atol=0.0, divergence_ratio=10000.0, history_size=3, ridge=0.0001, mixing=1.0)
    """
    if isinstance(name, (FixedPointSolver, GMRES)):
        if options:
            raise ValueError(
                f"{owner}: options {sorted(options)} cannot be combined with a solver instance; "
                "set them on the instance."
            )
        return name
    key = check_choice(owner, "solver", name, allowed)
    cls = SOLVERS[key]
    reject_unknown(f"{owner} (solver '{key}')", options, cls._options)
    return cls(**options)


__all__ = [
    "AndersonAcceleration",
    "FixedPointIteration",
    "FixedPointSolver",
    "GMRES",
    "SOLVERS",
    "SolverResult",
    "SolverStats",
    "SolverStatus",
    "get_solver",
]
