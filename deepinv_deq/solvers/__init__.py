r"""Solvers: how to find a fixed point :math:`x = f(x)`, and how to solve the backward linear system.

- forward solvers (:class:`FixedPointSolver` subclasses), called ``solver(f, x0)``:
  :class:`FixedPointIteration`, :class:`AndersonAcceleration`;
- linear solvers, called ``solver.solve(matvec, b, x0)`` for :math:`M u = b`: the two above (as
  the fixed point of :math:`u \mapsto u - Mu + b`) and the Krylov solver :class:`GMRES`.

All solvers are batched (the first dimension indexes independent problems), work on any tensor
shape, device and dtype, and return a :class:`SolverResult` with per-sample :class:`SolverStats`.
Use :func:`get_solver` to build one from its name and validated options.
"""

from __future__ import annotations

from .._validation import resolve
from .anderson import AndersonAcceleration
from .base import FixedPointSolver, SolverResult, SolverStats, SolverStatus
from .fixed_point import FixedPointIteration
from .krylov import GMRES

#: forward solvers of :math:`x = f(x)`, by name
FORWARD_SOLVERS = {"fixed_point": FixedPointIteration, "anderson": AndersonAcceleration}
#: solvers of the linear system :math:`M u = b` (``solve(matvec, b, x0)``), by name
LINEAR_SOLVERS = {**FORWARD_SOLVERS, "gmres": GMRES}
#: every solver name accepted by :func:`get_solver`
SOLVERS = LINEAR_SOLVERS


def get_solver(name, owner: str = "get_solver", allowed=None, **options):
    r"""Build a solver from its name, or check and return a solver instance.

    :param str, torch.nn.Module name: ``"fixed_point"``, ``"anderson"``, ``"gmres"`` or a solver
        instance (then ``options`` must be empty).
    :param str owner: name used in error messages. Default: ``"get_solver"``.
    :param dict allowed: the solvers accepted in this context, by name. Default: all of them.
    :param options: keyword options of the solver; an unknown one raises :class:`ValueError`.

    |sep|

    :Examples:

    Options are checked against the solver named:

    >>> from deepinv_deq.solvers import get_solver
    >>> get_solver("anderson", max_iter=30, history_size=3)
    AndersonAcceleration(max_iter=30, tol=0.0001, atol=0.0, divergence_ratio=10000.0, history_size=3, ridge=0.0001, mixing=1.0)
    """
    allowed = SOLVERS if allowed is None else allowed
    base = tuple(dict.fromkeys(GMRES if c is GMRES else FixedPointSolver for c in allowed.values()))
    return resolve(name, allowed, owner, "solver", base, **options)


__all__ = [
    "AndersonAcceleration",
    "FORWARD_SOLVERS",
    "FixedPointIteration",
    "FixedPointSolver",
    "GMRES",
    "LINEAR_SOLVERS",
    "SOLVERS",
    "SolverResult",
    "SolverStats",
    "SolverStatus",
    "get_solver",
]
