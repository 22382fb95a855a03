r"""``ImplicitBackward``: the public, deepinv-registered entry point to the backward strategies.

It selects a strategy of :mod:`deepinv_deq.backward` by ``mode`` (``"implicit"``, ``"jfb"`` or
``"phantom"``) and delegates to it; the strategies can also be used directly.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from ._report import POLICIES
from ._validation import check_choice, check_float, check_int, default, is_given
from .backward import BACKWARDS, BackwardStrategy, ImplicitDifferentiation, JFB, PhantomGradient
from .solvers import SolverStats


class ImplicitBackward(BackwardStrategy):
    r"""Differentiate through the fixed point of a map.

    ``ib(f, x_star)`` returns :math:`z = f(x^\star)` (equal to :math:`x^\star` up to the forward
    tolerance) whose gradient is, depending on ``mode``:

    - ``"implicit"``: the exact implicit gradient :footcite:p:`bai2019deep`
      (:class:`deepinv_deq.backward.ImplicitDifferentiation`): the adjoint equation
      :math:`u = J_f(x^\star)^\top u + v` is solved with ``solver``: ``"fixed_point"`` (Neumann
      series), ``"anderson"`` :footcite:p:`walker2011anderson`, or ``"gmres"``
      :footcite:p:`saad1986gmres` (Krylov, on :math:`(I - J_f^\top) u = v`). Each iteration costs one
      vector-Jacobian product.
    - ``"jfb"``: Jacobian-free backpropagation :footcite:p:`fung2022jfb`, :math:`u = v`
      (:math:`J_f` is treated as zero); cheap, but only an approximation of the gradient.
    - ``"phantom"``: phantom gradients :footcite:p:`geng2021phantom`, :math:`k` damped unrolled
      steps :math:`z_{i+1} = (1-\lambda) z_i + \lambda f(z_i)` from :math:`z_0 = x^\star`,
      backpropagated by autograd.

    Under :func:`torch.no_grad` the call costs a single evaluation of :math:`f`. The statistics of
    the last implicit backward solve are in ``last_stats`` (a
    :class:`deepinv_deq.solvers.SolverStats`), and ``n_solves`` counts the backward solves so far.
    Second-order derivatives through an implicit gradient (``create_graph=True``) raise a
    :class:`RuntimeError`.

    :param str mode: ``"implicit"``, ``"jfb"`` or ``"phantom"``. Default: ``"implicit"``.
    :param str, torch.nn.Module solver: backward solver for ``mode="implicit"``, or a solver
        instance. Default: ``"gmres"`` (preconditioned, see ``preconditioner`` of
        :class:`deepinv_deq.backward.ImplicitDifferentiation`, a solver option here).
    :param int max_iter: maximum iterations of the backward solver. Default: ``50``.
    :param float tol: relative residual tolerance of the backward solver. Default: ``1e-5``.
    :param int phantom_steps: :math:`k` for ``mode="phantom"``. Default: ``5``.
    :param float phantom_damping: :math:`\lambda` for ``mode="phantom"``. Default: ``0.5``.
    :param str on_failure: what to do for the samples whose backward solve does not converge:
        ``"warn"`` (the best iterate is used and a :class:`RuntimeWarning` names the status),
        ``"jfb"`` (those samples fall back to the JFB gradient :math:`u = v`, with a
        :class:`RuntimeWarning`; a safe choice when :math:`I - J_f` may be singular, e.g. early in
        training) or ``"raise"`` (a :class:`RuntimeError` is raised during ``backward()``).
        Default: ``"warn"``.
    :param solver_options: further options of the backward solver (e.g. ``history_size``); an
        unknown one raises :class:`ValueError`. Options of another mode than the one chosen
        raise :class:`ValueError` too.

    |sep|

    :Examples:

    The gradient of the fixed point :math:`x^\star = 1/(1-\theta)` of :math:`f(x) = \theta x + 1`:

    >>> import torch
    >>> from deepinv_deq import ImplicitBackward
    >>> from deepinv_deq.solvers import AndersonAcceleration
    >>> theta = torch.tensor(0.5, requires_grad=True)
    >>> f = lambda x: theta * x + 1.0  # fixed point x* = 1 / (1 - theta) = 2
    >>> x_star = AndersonAcceleration(tol=1e-10)(f, torch.zeros(1, 1)).fx
    >>> z = ImplicitBackward(tol=1e-10)(f, x_star)
    >>> z.sum().backward()
    >>> round(theta.grad.item(), 4)  # d x*/d theta = 1 / (1 - theta)^2
    4.0

    .. footbibliography::
    """

    def __init__(
        self,
        mode: str = "implicit",
        solver=default("gmres"),
        max_iter: int = default(50),
        tol: float = default(1e-5),
        phantom_steps: int = default(5),
        phantom_damping: float = default(0.5),
        on_failure: str = "warn",
        **solver_options,
    ):
        super().__init__()
        owner = "ImplicitBackward"
        mode = check_choice(owner, "mode", mode, BACKWARDS)
        given = {
            "implicit": [
                n
                for n, v in (("solver", solver), ("max_iter", max_iter), ("tol", tol))
                if is_given(v)
            ]
            + sorted(solver_options),
            "phantom": [
                n
                for n, v in (("phantom_steps", phantom_steps), ("phantom_damping", phantom_damping))
                if is_given(v)
            ],
        }
        for other, names in given.items():
            if other != mode and names:
                raise ValueError(
                    f"{owner}: option(s) {names} only apply to mode='{other}', not mode='{mode}'."
                )
        if mode == "implicit":
            strategy = ImplicitDifferentiation(solver, max_iter, tol, on_failure, **solver_options)
        elif mode == "phantom":
            strategy = PhantomGradient(
                steps=check_int(owner, "phantom_steps", phantom_steps, 1),
                damping=check_float(
                    owner, "phantom_damping", phantom_damping, 0.0, 1.0, strict_min=True
                ),
            )
        else:
            strategy = JFB()
        self.on_failure = check_choice(owner, "on_failure", on_failure, POLICIES)
        self.strategy = strategy

    @property
    def mode(self) -> str:
        r"""``"implicit"``, ``"jfb"`` or ``"phantom"``."""
        return self.strategy.name

    @property
    def solver(self):
        r"""The backward linear solver (``None`` unless ``mode="implicit"``)."""
        return getattr(self.strategy, "solver", None)

    @property
    def phantom_steps(self) -> int | None:
        return getattr(self.strategy, "steps", None)

    @property
    def phantom_damping(self) -> float | None:
        return getattr(self.strategy, "damping", None)

    @property
    def last_stats(self) -> SolverStats | None:
        return self.strategy.last_stats

    @property
    def n_solves(self) -> int:
        return self.strategy.n_solves

    def register_stats_hook(self, hook: Callable[[str, SolverStats], None]):
        return self.strategy.register_stats_hook(hook)

    def differentiate(self, f, x_star: Tensor, guard=(), fallback=None, on_stats=None) -> Tensor:
        return self.strategy.differentiate(
            f, x_star, guard=guard, fallback=fallback, on_stats=on_stats
        )

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
