r"""Stabilisers of DEQ training: spectral radius of the map's Jacobian, spectral normalisation.

A DEQ's solves converge when the fixed-point map :math:`F` is contractive near its fixed point,
i.e. when the spectral radius :math:`\rho(J_F(x^\star)) < 1` (for the forward iteration and the
backward Neumann series; :math:`\|J_F(x^\star)\|_2 < 1` is the stronger, norm-wise condition).
:func:`spectral_radius` estimates either by power iteration with vector-Jacobian products;
:func:`spectral_normalize` constrains a denoiser's layers; the Jacobian-norm regulariser is
:class:`deepinv_deq.JacobianNormLoss`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._autodiff import batch_norm, expand_as_batch, vjp_and_jvp
from ._validation import check_choice, check_float, check_int

__all__ = ["spectral_radius", "spectral_normalize", "vjp_and_jvp"]

_LAYERS = (
    torch.nn.Linear,
    torch.nn.Conv1d,
    torch.nn.Conv2d,
    torch.nn.Conv3d,
    torch.nn.ConvTranspose1d,
    torch.nn.ConvTranspose2d,
    torch.nn.ConvTranspose3d,
)


def _map_and_point(model_or_map, y, physics, x_star):
    from .deq import DEQ

    if isinstance(model_or_map, DEQ):
        fmap = model_or_map.map
        if x_star is None:
            with torch.no_grad():
                x_star = model_or_map(y, physics)
        return fmap, x_star
    if not callable(model_or_map):
        raise ValueError(
            f"spectral_radius: 'model_or_map' must be a deepinv_deq.DEQ or a map F(x, y, physics), "
            f"got {type(model_or_map).__name__}."
        )
    if x_star is None:
        raise ValueError("spectral_radius: 'x_star' is required when a map (not a DEQ) is given.")
    return model_or_map, x_star


def spectral_radius(
    model_or_map,
    y: Tensor,
    physics,
    x_star: Tensor | None = None,
    n_iter: int = 50,
    tol: float = 1e-5,
    mode: str = "radius",
    generator: torch.Generator | None = None,
    init: Tensor | None = None,
) -> Tensor:
    r"""Power-iteration estimate of the spectral radius (or norm) of :math:`J_F` at the fixed point.

    With ``mode="radius"`` the iteration :math:`v_{k+1} = J_F^\top v_k / \|J_F^\top v_k\|` returns
    :math:`\|J_F^\top v_k\| \to \rho(J_F)` (:math:`J_F^\top` and :math:`J_F` share their spectrum;
    convergence assumes a single dominant real eigenvalue). With ``mode="norm"`` the iteration on
    :math:`J_F^\top J_F` returns :math:`\sigma_{\max}(J_F) = \|J_F\|_2`. The batch is treated as
    independent problems: one estimate per sample. Each iteration costs one vector-Jacobian
    product through one differentiable evaluation of :math:`F` (two in ``"norm"`` mode).

    A DEQ is well posed when :math:`\rho(J_F(x^\star)) < 1`: the fixed point is locally unique,
    the forward iteration converges linearly with rate :math:`\rho`, and :math:`I - J_F` is
    invertible, so the implicit backward system has a solution :footcite:`bai2019deep`.

    :param model_or_map: a :class:`deepinv_deq.DEQ` (its map is used and, if ``x_star`` is not
        given, its reconstruction) or a map ``F(x, y, physics)``.
    :param torch.Tensor y: measurements.
    :param deepinv.physics.Physics physics: forward operator.
    :param torch.Tensor x_star: the point at which :math:`J_F` is taken (required for a plain map).
        Default: ``None``.
    :param int n_iter: maximum power iterations. Default: ``50``.
    :param float tol: stop when every sample's estimate changes by less than ``tol`` relatively.
        Default: ``1e-5``.
    :param str mode: ``"radius"`` or ``"norm"``. Default: ``"radius"``.
    :param torch.Generator generator: random generator of the initial vector. Default: ``None``.
    :param torch.Tensor init: initial vector (e.g. the vector of a previous estimate, to converge
        in fewer iterations); random if ``None``. Default: ``None``.
    :return: (:class:`torch.Tensor`) estimates, shape ``(B,)``.

    |sep|

    :Examples:

    A map whose Jacobian is half a permutation has spectral radius 0.5:

    >>> import torch
    >>> from deepinv_deq.stabilisers import spectral_radius
    >>> F = lambda x, y, physics: 0.5 * x.flip(-1) + y   # J = 0.5 P, P a permutation
    >>> x = torch.rand(2, 1, 4, 4)
    >>> rho = spectral_radius(F, y=x, physics=None, x_star=x)
    >>> torch.allclose(rho, torch.full((2,), 0.5), atol=1e-4)
    True

    .. footbibliography::
    """
    n_iter = check_int("spectral_radius", "n_iter", n_iter, 1)
    tol = check_float("spectral_radius", "tol", tol, 0.0)
    mode = check_choice("spectral_radius", "mode", mode, ("radius", "norm"))
    fmap, x_star = _map_and_point(model_or_map, y, physics, x_star)
    return _power_iteration(fmap, x_star, y, physics, n_iter, tol, mode, generator, init)[0]


def _power_iteration(
    fmap,
    x_star: Tensor,
    y,
    physics,
    n_iter: int,
    tol: float,
    mode: str = "radius",
    generator=None,
    init=None,
):
    r"""The power iteration of :func:`spectral_radius` on a map, without option checks.

    :param Callable fmap: the map ``F(x, y, physics)``.
    :param torch.Tensor x_star: the point.
    :param torch.Tensor y: measurements.
    :param deepinv.physics.Physics physics: forward operator.
    :param int n_iter: maximum iterations.
    :param float tol: relative change at which every sample stops.
    :param str mode: ``"radius"`` or ``"norm"``. Default: ``"radius"``.
    :param torch.Generator generator: random generator of the initial vector. Default: ``None``.
    :param torch.Tensor init: initial vector, random if ``None`` or of another shape. Default: ``None``.
    :return: (tuple) the estimates, shape ``(B,)``, and the last (normalised) vector, to warm-start
        a later call.
    """
    x = x_star.detach().clone().requires_grad_()
    with torch.enable_grad():
        if mode == "radius":  # only vector-Jacobian products: no double-backward graph
            fx = fmap(x, y, physics)

            def apply(u):
                (g,) = torch.autograd.grad(fx, x, u, retain_graph=True, allow_unused=True)
                return torch.zeros_like(x) if g is None else g

        elif hasattr(fmap, "differentiable_vjp"):
            # the map's own differentiable VJP (exact also through once-differentiable prox steps);
            # J v is the derivative of <J^T u, v> with respect to u
            vjp = fmap.differentiable_vjp(x_star, y, physics)
            dummy = torch.zeros_like(x, requires_grad=True)
            fx = vjp(dummy)

            def apply(u):
                (jv,) = torch.autograd.grad(fx, dummy, u, retain_graph=True, allow_unused=True)
                jv = torch.zeros_like(x) if jv is None else jv
                return vjp(jv).detach()

        else:
            fx = fmap(x, y, physics)
            vjp, jvp = vjp_and_jvp(fx, x)

            def apply(u):
                return vjp(jvp(u))

        if init is not None and init.shape == fx.shape:
            v = init.detach().to(device=fx.device, dtype=fx.dtype)
        else:
            v = torch.randn(fx.shape, generator=generator, device=fx.device, dtype=fx.dtype)
        tiny = torch.finfo(fx.dtype).tiny
        v = v / expand_as_batch(batch_norm(v).clamp_min(tiny), v)
        est = torch.zeros(fx.shape[0], device=fx.device, dtype=fx.dtype)
        for _ in range(n_iter):
            w = apply(v).detach()
            norm = batch_norm(w)
            new = norm if mode == "radius" else norm.sqrt()
            done = bool(((new - est).abs() <= tol * new.abs()).all())
            est = new
            v = w / expand_as_batch(norm.clamp_min(tiny), w)
            if done:
                break
    return est.detach(), v.detach()


def spectral_normalize(denoiser: torch.nn.Module, n_power_iterations: int = 1) -> torch.nn.Module:
    r"""Put spectral normalisation on every convolution and linear layer of a denoiser, in place.

    Each weight :math:`W` is reparametrised as :math:`W / \sigma_{\max}(W)` with
    :func:`torch.nn.utils.parametrizations.spectral_norm` (power iteration on the weight reshaped
    to a matrix; for a convolution this bounds the layer's Lipschitz constant only up to a factor
    depending on the kernel size). With 1-Lipschitz activations this keeps the denoiser's
    Lipschitz constant moderate, a common stabiliser of DEQ training. Layers already normalised
    are left alone.

    :param torch.nn.Module denoiser: the network to modify.
    :param int n_power_iterations: power iterations per training forward pass. Default: ``1``.
    :return: the same module, for chaining.

    |sep|

    :Examples:

    After a few training passes, the first layer's largest singular value is 1
    :footcite:`miyato2018spectral`:

    >>> import torch
    >>> from deepinv_deq.stabilisers import spectral_normalize
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3))
    >>> net = spectral_normalize(net)
    >>> _ = [net(torch.rand(1, 1, 8, 8)) for _ in range(50)]  # power iterations run in training
    >>> s = torch.linalg.matrix_norm(net[0].weight.reshape(4, -1), ord=2)
    >>> bool(abs(s - 1) < 1e-2)
    True

    .. footbibliography::
    """
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import spectral_norm

    if not isinstance(denoiser, torch.nn.Module):
        raise ValueError(
            f"spectral_normalize: 'denoiser' must be a torch.nn.Module, got {type(denoiser).__name__}."
        )
    n_power_iterations = check_int(
        "spectral_normalize", "n_power_iterations", n_power_iterations, 1
    )
    layers = [m for m in denoiser.modules() if isinstance(m, _LAYERS)]
    for m in layers:
        if parametrize.is_parametrized(m, "weight"):
            continue
        dim = (
            1
            if isinstance(
                m, (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
            )
            else None
        )
        spectral_norm(m, n_power_iterations=n_power_iterations, dim=dim)
    return denoiser
