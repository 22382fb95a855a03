r"""How to differentiate through a fixed point: implicit differentiation, JFB and phantom gradients.

Given a map :math:`f_\theta` and its fixed point :math:`x^\star = f_\theta(x^\star)` (computed
without autograd), the implicit function theorem gives, for an upstream gradient
:math:`v = \partial \ell / \partial x^\star`,

.. math::

    \frac{\partial \ell}{\partial \theta} = u^\top \frac{\partial f_\theta(x^\star)}{\partial \theta},
    \qquad u = J_f(x^\star)^\top u + v.

:class:`ImplicitBackward` evaluates :math:`z = f_\theta(x^\star)` once with autograd and registers a
hook on :math:`z` that replaces the incoming gradient :math:`v` by :math:`u`; the ordinary backward
pass then pushes :math:`u` through the single evaluation of :math:`f_\theta` to reach every tensor
:math:`f_\theta` depends on. Each call owns its hook, so any number of calls may feed one loss.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Callable

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from ._validation import check_choice, check_float, check_int, reject_unknown
from .solvers import GMRES, SolverStats, SolverStatus, get_solver

MODES = ("implicit", "jfb", "phantom")
BACKWARD_SOLVERS = ("fixed_point", "anderson", "gmres")


class ImplicitBackward(torch.nn.Module):
    r"""Differentiate through the fixed point of a map.

    ``ib(f, x_star)`` returns :math:`z = f(x^\star)` (equal to :math:`x^\star` up to the forward
    tolerance) whose gradient is, depending on ``mode``:

    - ``"implicit"``: the exact implicit gradient. The adjoint equation
      :math:`u = J_f(x^\star)^\top u + v` is solved with ``solver``: ``"fixed_point"`` (Neumann
      series), ``"anderson"``, or ``"gmres"`` (Krylov, on :math:`(I - J_f^\top) u = v`; see
      :class:`deepinv_deq.solvers.GMRES`). Each iteration costs one vector-Jacobian product.
    - ``"jfb"``: Jacobian-free backpropagation, :math:`u = v`
      (:math:`J_f` is treated as zero); cheap, but only an approximation of the gradient.
    - ``"phantom"``: :math:`k` damped unrolled steps
      :math:`z_{i+1} = (1-\lambda) z_i + \lambda f(z_i)` from :math:`z_0 = x^\star`, backpropagated
      by autograd.

    Under :func:`torch.no_grad` the call costs a single evaluation of :math:`f`. The statistics of
    the last implicit backward solve are in ``last_stats`` (a
    :class:`deepinv_deq.solvers.SolverStats`), and
    ``ib.n_solves`` counts the backward solves run so far.

    :param str mode: ``"implicit"``, ``"jfb"`` or ``"phantom"``.
    :param str, torch.nn.Module solver: backward solver for ``mode="implicit"`` (default
        ``"anderson"``), or a solver instance.
    :param int max_iter: maximum iterations of the backward solver (default 50).
    :param float tol: relative residual tolerance of the backward solver (default ``1e-5``).
    :param int phantom_steps: :math:`k` for ``mode="phantom"`` (default 5).
    :param float phantom_damping: :math:`\lambda` for ``mode="phantom"`` (default 0.5).
    :param str on_failure: what to do for the samples whose backward solve does not converge:
        ``"warn"`` (default; the best iterate is used and a :class:`RuntimeWarning` names the
        status), ``"jfb"`` (those samples fall back to the JFB gradient :math:`u = v`, with a
        :class:`RuntimeWarning`; a safe choice when :math:`I - J_f` may be singular, e.g. early in
        training) or ``"raise"`` (a :class:`RuntimeError` is raised during ``backward()``).
    :param solver_options: further options of the backward solver (e.g. ``history_size``); an
        unknown one raises :class:`ValueError`.

    |sep|

    :Example:

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
    """

    def __init__(
        self,
        mode: str = "implicit",
        solver=None,
        max_iter: int | None = None,
        tol: float | None = None,
        phantom_steps: int | None = None,
        phantom_damping: float | None = None,
        on_failure: str = "warn",
        **solver_options,
    ):
        super().__init__()
        owner = "ImplicitBackward"
        self.mode = check_choice(owner, "mode", mode, MODES)
        self.on_failure = check_choice(owner, "on_failure", on_failure, ("warn", "jfb", "raise"))
        if self.mode != "implicit":
            given = [
                n
                for n, v in (("solver", solver), ("max_iter", max_iter), ("tol", tol))
                if v is not None
            ] + sorted(solver_options)
            if given:
                raise ValueError(
                    f"{owner}: option(s) {given} only apply to mode='implicit', not mode='{self.mode}'."
                )
        if self.mode != "phantom":
            given = [
                n
                for n, v in (("phantom_steps", phantom_steps), ("phantom_damping", phantom_damping))
                if v is not None
            ]
            if given:
                raise ValueError(
                    f"{owner}: option(s) {given} only apply to mode='phantom', not mode='{self.mode}'."
                )
        self.solver = None
        if self.mode == "implicit":
            opts = dict(solver_options)
            opts["max_iter"] = 50 if max_iter is None else max_iter
            opts["tol"] = 1e-5 if tol is None else tol
            if isinstance(solver, torch.nn.Module):
                if max_iter is not None or tol is not None or solver_options:
                    raise ValueError(
                        f"{owner}: max_iter, tol and solver options cannot be combined with a solver "
                        "instance; set them on the instance."
                    )
                self.solver = get_solver(solver, owner=owner)
            else:
                self.solver = get_solver(
                    "anderson" if solver is None else solver,
                    owner=owner,
                    allowed=BACKWARD_SOLVERS,
                    **opts,
                )
        self.phantom_steps = check_int(owner, "phantom_steps", 5 if phantom_steps is None else phantom_steps, 1)
        self.phantom_damping = check_float(
            owner, "phantom_damping", 0.5 if phantom_damping is None else phantom_damping, 0.0, 1.0, strict_min=True
        )
        self.last_stats: SolverStats | None = None
        self.n_solves = 0
        self._stats_hooks: OrderedDict = OrderedDict()

    def register_stats_hook(self, hook: Callable[[str, SolverStats], None]) -> RemovableHandle:
        r"""Call ``hook("backward", stats)`` after every implicit backward solve.

        :param Callable hook: the function to call with the kind and the
            :class:`deepinv_deq.solvers.SolverStats` of the solve.
        :return: a handle whose ``remove()`` unregisters the hook.
        """
        handle = RemovableHandle(self._stats_hooks)
        self._stats_hooks[handle.id] = hook
        return handle

    def forward(self, f: Callable[[Tensor], Tensor], x_star: Tensor) -> Tensor:
        r"""Return :math:`z = f(x^\star)` carrying the chosen gradient.

        :param Callable f: the fixed-point map, closing over parameters and inputs.
        :param torch.Tensor x_star: a fixed point of ``f`` computed without autograd.
        :return: (:class:`torch.Tensor`) :math:`f(x^\star)`.
        """
        x_star = x_star.detach()
        if not torch.is_grad_enabled():
            return f(x_star)
        if self.mode == "jfb":
            return f(x_star)
        if self.mode == "phantom":
            z = x_star
            lam = self.phantom_damping
            for _ in range(self.phantom_steps):
                z = z + lam * (f(z) - z) if lam != 1.0 else f(z)
            return z
        x_in = x_star.requires_grad_()
        z = f(x_in)
        if z.shape != x_in.shape:
            raise ValueError(
                f"ImplicitBackward: the map changed the shape of its input from {tuple(x_in.shape)} "
                f"to {tuple(z.shape)}; a fixed-point map must preserve it."
            )
        if not z.requires_grad:
            return z
        # The hook goes on an alias of z, not on z itself: the vector-Jacobian products of the
        # backward solve differentiate z, and a hook on z would fire inside them (and recurse).
        out = z.view_as(z)
        out.register_hook(self._make_hook(z, x_in))
        return out

    def _make_hook(self, z: Tensor, x_in: Tensor):
        # Everything a hook needs is captured here, per call: no state is shared between calls.
        def vjp(u: Tensor) -> Tensor:
            (g,) = torch.autograd.grad(z, x_in, u.to(z.dtype), retain_graph=True, allow_unused=True)
            return torch.zeros_like(u) if g is None else g.to(u.dtype)

        def hook(v: Tensor | None) -> Tensor | None:
            if v is None:  # no gradient flows into this call's output
                return None
            # the adjoint is solved in at least float32, whatever the dtype of the incoming
            # gradient (bfloat16 when the map's output is bfloat16 under autocast)
            grad_dtype = v.dtype
            v = v.detach().to(torch.promote_types(v.dtype, torch.float32))
            if isinstance(self.solver, GMRES):
                with torch.no_grad():
                    result = self.solver.solve_linear(lambda u: u - vjp(u), v, v)
            else:
                result = self.solver(lambda u: vjp(u) + v, v)
            self.last_stats = result.stats
            self.n_solves += 1
            for stats_hook in tuple(self._stats_hooks.values()):
                stats_hook("backward", result.stats)
            u = result.fx
            if self._check(result.stats) and self.on_failure == "jfb":
                failed = (result.stats.status != SolverStatus.CONVERGED).reshape((-1,) + (1,) * (v.ndim - 1))
                u = torch.where(failed, v, u)
            return u.to(grad_dtype)

        return hook

    def _check(self, stats: SolverStats) -> bool:
        # True when some sample failed (after warning or raising as configured)
        bad = stats.status != SolverStatus.CONVERGED
        if not bool(bad.any()):
            return False
        names = sorted(set(n for n in stats.status_names() if n != "CONVERGED"))
        msg = (
            f"ImplicitBackward: the backward solve did not converge for {int(bad.sum())} of "
            f"{bad.numel()} samples (status {names}, max relative residual "
            f"{float(stats.residual.max()):.2e} after {stats.nfe} iterations); the gradient "
            + ("falls back to JFB for them." if self.on_failure == "jfb" else "is approximate.")
            + " Increase max_iter, loosen tol, or make the map more contractive."
        )
        if self.on_failure == "raise":
            raise RuntimeError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return True

    def extra_repr(self) -> str:
        if self.mode == "implicit":
            return f"mode='implicit', solver={self.solver!r}"
        if self.mode == "phantom":
            return f"mode='phantom', phantom_steps={self.phantom_steps}, phantom_damping={self.phantom_damping}"
        return "mode='jfb'"
