r"""The deep equilibrium reconstructor: a fixed-point map, a forward solver and a backward strategy."""

from __future__ import annotations

import inspect
import itertools
from typing import Callable

import torch
from torch import Tensor
from deepinv.models import Reconstructor

from ._autodiff import expand_as_batch
from ._report import POLICIES, HookRegistry, enforce
from ._validation import (
    check_choice,
    check_float,
    check_int,
    check_deq_arguments,
    check_measurements,
    default,
    explain_map_error,
    is_out_of_memory,
    measurement_error,
    is_given,
    reject_unknown,
    resolve,
)
from .backward import BACKWARDS, BackwardStrategy, ImplicitDifferentiation
from .maps import build_map
from .solvers import FORWARD_SOLVERS, FixedPointSolver, SolverStats
from .solvers.base import default_tol
from .splitting import SplittingMap
from .state import StatePacker, is_multi_state

INITS = ("adjoint", "pseudo_inverse")
# ImplicitBackward's names of the phantom options, accepted in backward_options
_BACKWARD_ALIASES = {"phantom_steps": "steps", "phantom_damping": "damping"}


def _parameter_names(fn) -> list[str]:
    return [n for n in inspect.signature(fn).parameters if n not in ("self", "unknown", "kwargs")]


def _explained(fmap: Callable, y, physics, init) -> Callable:
    # the map, whose errors say which input does not fit (see explain_map_error)
    def wrapped(x):
        try:
            return fmap(x)
        except RuntimeError as e:
            error = explain_map_error("DEQ", e, x, y, physics, init)
            if error is e:
                raise
            raise error from e

    return wrapped


def _merge_budget(named: dict, options: dict | None, prefix: str, instance: bool) -> dict:
    # DEQ's named options (e.g. max_iter) and the same option in the options dict: one or the other;
    # a named default gives way to the dict, and is dropped beside an instance
    options = dict(options or {})
    for name, value in named.items():
        if is_given(value) and name in options:
            options_name = "backward_options" if prefix else "solver_options"
            raise ValueError(f"DEQ: '{name}' given twice ({prefix}{name} and {options_name}).")
        if not instance and name not in options:
            options[name] = value
        elif instance and is_given(value):
            options[name] = value  # resolve() refuses options beside an instance
    return options


def _grad_leaves(module) -> list[Tensor]:
    if not isinstance(module, torch.nn.Module):
        return []
    return [t for t in (*module.parameters(), *module.buffers()) if t.requires_grad]


class DEQ(Reconstructor):
    r"""Deep equilibrium model: the reconstruction is the fixed point of one iteration of an algorithm.

    .. math::

        \hat{x} = x^\star \quad\text{with}\quad x^\star = F_\theta(x^\star; y, A),

    where :math:`F_\theta` is e.g. a proximal gradient step whose proximal operator is the learned
    denoiser :math:`D_\theta` :footcite:p:`bai2019deep,gilton2021deep`. ``DEQ`` composes three
    parts: the map (:mod:`deepinv_deq.maps`), a forward solver that finds :math:`x^\star` without
    an autograd graph (fixed-point iteration or Anderson acceleration
    :footcite:p:`walker2011anderson`, per-sample stopping), and a backward strategy
    (:mod:`deepinv_deq.backward`): implicit differentiation, JFB :footcite:p:`fung2022jfb` or
    phantom gradients :footcite:p:`geng2021phantom`. Memory is constant in the number of iterations.

    One failure policy, ``on_failure``, covers both solves: samples whose forward solve stops
    without meeting ``tol`` (budget, divergence, NaN) and samples whose backward solve does not
    meet ``backward_tol`` warn (``"warn"``), fall back to the JFB gradient (``"jfb"``) or raise
    (``"raise"``). A sample whose map never gives a finite value returns its initial iterate,
    with a zero upstream gradient; the map is still evaluated on the whole batch, so where its
    backward turns that sample's Inf into NaN (an overflow inside the denoiser), the parameters'
    gradients are NaN and a gradient scaler skips the step. In bfloat16 or float16 (a model
    cast with ``.to(dtype)``, or under :func:`torch.autocast`), residuals below the unit roundoff
    of that dtype are out of reach: the default ``tol`` and ``backward_tol`` are then raised to
    it (``7.8e-3`` for bfloat16, ``9.8e-4`` for float16); tolerances set explicitly are kept.

    :param torch.nn.Module denoiser: the denoiser :math:`D_\theta`, called ``denoiser(x, sigma)``
        (e.g. :class:`deepinv_deq.ContractiveDenoiser`). Required for the built-in iterations.
    :param str, Callable iteration: ``"PGD"``, ``"HQS"``, ``"RED"``, ``"GD"`` (see
        :mod:`deepinv_deq.maps`),
        the splitting iterations ``"ADMM"``, ``"DRS"``, ``"PDCP"`` (:mod:`deepinv_deq.splitting`;
        their state has several variables, the reconstruction is the primal one), a map instance,
        or a callable ``F(x, y, physics) -> x`` (then ``denoiser``, ``stepsize``,
        ``sigma_denoiser``, ``data_fidelity``, ``lambda_reg`` and ``trainable_params`` must be left
        unset). A callable may iterate a multi-variable state: when ``init`` gives a tuple (or
        a deepinv ``TensorList``) of tensors, ``F`` receives and returns such tuples and the
        reconstruction is their first element. Default: ``"PGD"``.
    :param float stepsize: step size :math:`\eta`. Default: ``1.0``.
    :param float sigma_denoiser: denoiser noise level :math:`\sigma`, passed to a denoiser that
        takes one (no effect on the default :class:`deepinv_deq.ContractiveDenoiser`). Default: ``0.05``.
    :param deepinv.optim.DataFidelity data_fidelity: the data fidelity. Default:
        :class:`deepinv.optim.L2`.
    :param int max_iter: maximum forward map evaluations (with a solver instance, set it on the
        instance). Default: ``50``.
    :param float tol: forward relative residual tolerance (likewise). Default: ``1e-4``.
    :param str, torch.nn.Module solver: ``"anderson"``, ``"fixed_point"`` or a
        :class:`deepinv_deq.solvers.FixedPointSolver` instance. Default: ``"anderson"``.
    :param str, torch.nn.Module backward: ``"implicit"``, ``"jfb"``, ``"phantom"`` or an instance
        of :class:`deepinv_deq.ImplicitBackward` or of a
        :class:`deepinv_deq.backward.BackwardStrategy`. Default: ``"implicit"``.
    :param int backward_max_iter: maximum iterations of the backward linear solve. Default: ``50``.
    :param float backward_tol: tolerance of the backward linear solve. Default: ``1e-5``.
    :param str backward_solver: ``"anderson"``, ``"fixed_point"`` or ``"gmres"``. Default:
        ``"gmres"``, right-preconditioned by a
        :class:`deepinv_deq.preconditioners.FourierPreconditioner` (``backward_options=
        {"preconditioner": None}`` turns it off). These three options are validated with every named ``backward`` and used
        by those that solve a linear system (``"implicit"``); with ``"jfb"`` or ``"phantom"`` they
        are unused, so that a sweep over ``backward`` may keep them fixed.
    :param float lambda_reg: regularisation weight of the RED iteration. Default: ``1.0``.
    :param tuple trainable_params: scalar parameters to learn, among ``"stepsize"``,
        ``"sigma_denoiser"`` (and ``"lambda_reg"`` for RED). Default: none.
    :param str, Callable init: initial iterate when none is passed: ``"adjoint"`` (:math:`A^\top y`,
        as deepinv's optimisers), ``"pseudo_inverse"`` (:math:`A^\dagger y`) or a callable
        ``init(y, physics)``. Default: ``"adjoint"``.
    :param str on_failure: ``"warn"``, ``"jfb"`` or ``"raise"``, see above. Default: ``"warn"``
        (with a backward instance: the instance's policy).
    :param int eval_max_iter: forward budget in evaluation mode (after ``model.eval()``), e.g. a
        larger one to evaluate than to train. Default: ``None``, meaning ``max_iter``.
    :param float eval_tol: forward tolerance in evaluation mode. Default: ``None``, meaning ``tol``.
    :param deepinv.optim.Prior prior: the differentiable prior :math:`g` of the ``"GD"`` iteration
        :math:`F(x) = x - \eta(\nabla f(x) + \lambda \nabla g(x))` (e.g.
        ``dinv.optim.prior.RED(denoiser)``); only with ``iteration="GD"``, which takes no
        ``denoiser``. Default: ``None``.
    :param dict solver_options: further options of the forward solver (e.g. ``history_size``).
    :param dict backward_options: further options of the backward strategy (e.g.
        ``phantom_steps``, or ``history_size`` of its linear solver).
    :param str, torch.device device: device of the model. Default: that of its parameters.

    After each call, :attr:`forward_stats` holds the :class:`deepinv_deq.solvers.SolverStats` of the
    forward solve and :attr:`backward_stats` those of the last implicit backward solve of this
    model; to see every solve (an EI step makes several), use :meth:`register_stats_hook` or
    :class:`deepinv_deq.DEQMonitor`. A backward instance may be shared by several models. For
    several devices use :class:`torch.nn.parallel.DistributedDataParallel`;
    :class:`torch.nn.DataParallel`, whose replicas would lose the statistics, is refused with a
    :class:`RuntimeError` (on a machine without GPUs it runs the model itself, which works).

    |sep|

    :Examples:

    Reconstruct an inpainting problem and differentiate through the fixed point:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq import DEQ, ContractiveDenoiser
    >>> physics = dinv.physics.Inpainting(img_size=(1, 16, 16), mask=0.7)
    >>> model = DEQ(denoiser=ContractiveDenoiser(), iteration="PGD", max_iter=30, tol=1e-4)
    >>> x = torch.rand(2, 1, 16, 16)
    >>> y = physics(x)
    >>> x_hat = model(y, physics)
    >>> x_hat.shape, model.forward_stats.all_converged
    (torch.Size([2, 1, 16, 16]), True)
    >>> torch.nn.functional.mse_loss(x_hat, x).backward()  # implicit differentiation
    >>> model.backward_stats.solver, model.backward_stats.all_converged
    ('gmres', True)

    .. footbibliography::
    """

    def __init__(
        self,
        denoiser: torch.nn.Module | None = None,
        iteration="PGD",
        stepsize: float = default(1.0),
        sigma_denoiser: float = default(0.05),
        data_fidelity=None,
        max_iter: int = default(50),
        tol: float = default(1e-4),
        solver="anderson",
        backward="implicit",
        backward_max_iter: int = default(50),
        backward_tol: float = default(1e-5),
        backward_solver: str = default("gmres"),
        lambda_reg: float = default(1.0),
        trainable_params=(),
        init="adjoint",
        on_failure: str = default("warn"),
        solver_options: dict | None = None,
        backward_options: dict | None = None,
        eval_max_iter: int | None = None,
        eval_tol: float | None = None,
        prior=None,
        device=None,
        **unknown,
    ):
        super().__init__()
        check_deq_arguments(
            unknown, _parameter_names(DEQ.__init__), iteration, denoiser, solver, prior
        )
        given = lambda v: v if is_given(v) else None
        self.map = build_map(
            iteration,
            denoiser=denoiser,
            prior=prior,
            data_fidelity=data_fidelity,
            stepsize=given(stepsize),
            sigma_denoiser=given(sigma_denoiser),
            lambda_reg=given(lambda_reg),
            trainable_params=tuple(trainable_params),
        )
        budget = {"max_iter": max_iter, "tol": tol}
        options = _merge_budget(
            budget, solver_options, "", instance=isinstance(solver, FixedPointSolver)
        )
        self._auto_tol = not isinstance(solver, FixedPointSolver) and not is_given(
            options.get("tol")
        )
        self.solver = resolve(solver, FORWARD_SOLVERS, "DEQ", "solver", FixedPointSolver, **options)
        linear = {"max_iter": backward_max_iter, "tol": backward_tol, "solver": backward_solver}
        self.on_failure, self.backward = self._build_backward(
            backward, linear, dict(backward_options or {}), on_failure
        )
        self.init = init if callable(init) else check_choice("DEQ", "init", init, INITS)
        self.eval_max_iter = (
            None if eval_max_iter is None else check_int("DEQ", "eval_max_iter", eval_max_iter, 1)
        )
        self.eval_tol = None if eval_tol is None else check_float("DEQ", "eval_tol", eval_tol, 0.0)
        self.forward_stats: SolverStats | None = None
        self._backward_stats: SolverStats | None = None
        self._hooks = HookRegistry()
        if device is not None:
            self.to(device)

    @staticmethod
    def _build_backward(backward, linear: dict, options: dict, on_failure):
        instance = isinstance(backward, BackwardStrategy)
        if instance and (options or any(is_given(v) for v in linear.values())):
            raise ValueError(
                "DEQ: backward_max_iter, backward_tol, backward_solver and backward_options "
                "cannot be combined with an ImplicitBackward instance (or another backward "
                "strategy instance); set them on the instance."
            )
        own = getattr(backward, "on_failure", None) if instance else options.pop("on_failure", None)
        if is_given(on_failure) and own is not None and on_failure != own:
            raise ValueError(
                f"DEQ: on_failure={on_failure!r} differs from the backward's {own!r}; set one policy."
            )
        policy = check_choice("DEQ", "on_failure", on_failure if own is None else own, POLICIES)
        if instance:
            return policy, backward
        options = _merge_budget(linear, options, "backward_", instance=False)
        name = check_choice("DEQ", "backward", backward, BACKWARDS)
        if name == "phantom":  # ImplicitBackward's names of its options
            options = {_BACKWARD_ALIASES.get(k, k): v for k, v in options.items()}
        if name == "implicit":
            options["on_failure"] = policy
        else:  # the linear-solve options are validated, though this strategy does not use them
            own_options = BACKWARDS[name]._options
            linear_keys = [
                k for k in options if k in ImplicitDifferentiation._options and k not in own_options
            ]
            ImplicitDifferentiation(**{k: options.pop(k) for k in linear_keys})
        return policy, resolve(name, BACKWARDS, "DEQ", "backward", BackwardStrategy, **options)

    def register_stats_hook(self, hook: Callable[[str, SolverStats], None]):
        r"""Call ``hook(kind, stats)`` after every solve of this model.

        ``kind`` is ``"forward"`` for a forward solve and ``"backward"`` for an implicit backward
        solve; ``stats`` is its :class:`deepinv_deq.solvers.SolverStats` (tensors stay on the device).
        An EI training step calls the hook several times: one forward and one backward per DEQ call.

        :param Callable hook: the function to call.
        :return: a handle whose ``remove()`` unregisters the hook.
        """
        return self._hooks.register(hook)

    def _on_backward_stats(self, kind: str, stats: SolverStats) -> None:
        self._backward_stats = stats
        self._hooks(kind, stats)

    @property
    def backward_stats(self) -> SolverStats | None:
        r"""Statistics of the last implicit backward solve of this model (``None`` before the first)."""
        return self._backward_stats

    def initial_iterate(self, y: Tensor, physics) -> Tensor:
        r"""The default initial iterate :math:`x_0` (:math:`A^\top y`, :math:`A^\dagger y` or the
        user's ``init`` callable)."""
        if callable(self.init):
            return self.init(y, physics)
        if self.init == "pseudo_inverse":
            return physics.A_dagger(y)
        return physics.A_adjoint(y)

    def forward(
        self,
        y: Tensor,
        physics,
        init: Tensor | None = None,
        x_gt: Tensor | None = None,
        compute_metrics: bool = False,
        **kwargs,
    ):
        r"""Reconstruct :math:`x^\star` from the measurements.

        :param torch.Tensor y: measurements (a :class:`deepinv.utils.TensorList` for stacked physics).
        :param deepinv.physics.Physics physics: forward operator.
        :param torch.Tensor init: optional initial iterate (warm start). Default: from ``init``.
        :param torch.Tensor x_gt: ground truth, used only with ``compute_metrics``.
        :param bool compute_metrics: if ``True``, also return per-iteration metrics in the format of
            :attr:`deepinv.Trainer.plot_convergence_metrics` (``{"residual": [[...]], "psnr":
            [[...]]}``, indexed by sample then iteration). Default: ``False``.
        :return: the reconstruction, or ``(x, metrics)`` when ``compute_metrics`` is ``True``.
        """
        reject_unknown("DEQ.forward", kwargs, _parameter_names(DEQ.forward))
        if getattr(self, "_is_replica", False):
            raise RuntimeError(
                "DEQ: torch.nn.DataParallel is not supported: the statistics of each solve would "
                "be set on its short-lived replicas and lost, and its threads would share the "
                "statistics hooks. Use torch.nn.parallel.DistributedDataParallel (one process per "
                "device), which keeps each process's statistics and is tested."
            )
        ref = next(
            (
                t
                for t in itertools.chain(self.parameters(), self.buffers())
                if t.is_floating_point()
            ),
            None,
        )
        check_measurements("DEQ", y, None if is_multi_state(init) else init, ref)
        x0 = self._initial_iterate(y, physics, init)
        packer, x0 = self._packed_state(x0, y, physics)
        psnr, callback = self._metrics_recorder(x_gt, packer) if compute_metrics else (None, None)
        if packer is None:
            fmap = lambda x: self.map(x, y, physics)
        else:  # a multi-variable state, iterated packed into one tensor
            fmap = lambda s: packer.pack(self.map(packer.unpack(s), y, physics))
        tol = default_tol(self.solver.tol, x0) if self._auto_tol else None
        max_iter = None
        if not self.training:
            tol = self.eval_tol if self.eval_tol is not None else tol
            max_iter = self.eval_max_iter
        result = self.solver(
            _explained(fmap, y, physics, init), x0, callback=callback, tol=tol, max_iter=max_iter
        )
        failed = self._report(result.stats)
        x = self._differentiate(fmap, result, physics, failed)
        if packer is not None:
            x = packer.unpack(x)[0]  # the reconstruction is the primal variable
        return (x, self._metrics(result.stats, psnr)) if compute_metrics else x

    def _packed_state(self, x0, y, physics):
        # (packer, start): the start packed into one tensor when the state has several variables
        # (a splitting map, or a callable iteration whose init gives a tuple/TensorList)
        if isinstance(self.map, SplittingMap) and not is_multi_state(x0):
            x0 = self.map.init_state(x0, y, physics)
        if not is_multi_state(x0):
            return None, x0
        packer = StatePacker(x0)
        return packer, packer.pack(x0)

    def _initial_iterate(self, y, physics, init):
        if init is not None:
            if is_multi_state(init):
                return tuple(t.detach() for t in getattr(init, "x", init))
            return init.detach()
        with torch.no_grad():
            try:
                start = self.initial_iterate(y, physics)
            except RuntimeError as e:
                if is_out_of_memory(e):
                    raise
                raise measurement_error("DEQ", y, e) from e
        if is_multi_state(start):
            return tuple(t.detach() for t in getattr(start, "x", start))
        return start.detach()

    def _report(self, stats: SolverStats) -> Tensor | None:
        # statistics to the hooks, then the failure policy; returns the samples to fall back to JFB
        self.forward_stats = stats
        self._hooks("forward", stats)
        failed = enforce(stats, self.on_failure, "DEQ", "forward")
        return failed if self.on_failure == "jfb" else None

    def _differentiate(self, fmap, result, physics, failed: Tensor | None) -> Tensor:
        if not torch.is_grad_enabled():
            return result.fx
        z = self.backward(
            fmap,
            result.x,
            guard=_grad_leaves(physics),
            fallback=failed,
            on_stats=self._on_backward_stats,
        )
        # a sample whose map never gave a finite value returns its initial iterate (result.fx)
        never = ~torch.isfinite(result.stats.residual)
        return torch.where(expand_as_batch(never, z), result.fx.to(z.dtype), z)

    @staticmethod
    def _metrics_recorder(x_gt: Tensor | None, packer=None):
        # PSNR of every iterate is kept on the device and read once after the solve; the residuals
        # come from the solver's own trace (see _metrics)
        from deepinv.loss.metric import PSNR

        psnr = PSNR()
        values: list = []

        def callback(k, x, fx):
            if x_gt is not None:
                image = fx if packer is None else packer.unpack(fx)[0]
                values.append(psnr(image, x_gt).detach())

        return values, callback

    @staticmethod
    def _metrics(stats: SolverStats, psnr_values: list) -> dict:
        residual = stats.trace.T.tolist()  # (B, nfe)
        psnr = torch.stack(psnr_values).T.tolist() if psnr_values else [[] for _ in residual]
        return {"residual": residual, "psnr": psnr}
