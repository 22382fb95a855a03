r"""Diagnostics of learned reconstructors: equivariance, and the invariant-prior test.

- :func:`equivariance_error` of a reconstructor :math:`f` with respect to a group of
  transformations :math:`\{T_g\}`:

  .. math::

      \mathcal{E}(f) = \mathbb{E}_{x, g}\,
      \frac{\|f(A T_g x) - T_g f(A x)\|_2^2}{\|T_g f(A x)\|_2^2}.

- The invariant-prior test: the proximal operator of a :math:`G`-invariant prior is
  :math:`G`-equivariant, and the proximal operator of a convex function has a symmetric Jacobian
  (it is the gradient of the Moreau envelope). :func:`operator_equivariance_error` and
  :func:`jacobian_asymmetry` measure both properties for any operator, and
  :func:`invariant_prior_test` applies them to a DEQ's learned denoiser.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Callable

import torch
from torch import Tensor

from ._validation import check_float, check_int
from ._autodiff import vjp_and_jvp

__all__ = [
    "equivariance_error",
    "operator_equivariance_error",
    "jacobian_asymmetry",
    "invariant_prior_test",
]


def _batches(data) -> Iterable[Tensor]:
    if isinstance(data, Tensor):
        yield data
        return
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(
        data, torch.utils.data.IterableDataset
    ):
        dataset = data
        data = (dataset[i] for i in range(len(dataset)))
        single = True
    else:
        single = False
    for item in data:
        if isinstance(item, (tuple, list)):
            item = item[0]
        elif isinstance(item, dict):
            item = item["x"]
        if not isinstance(item, Tensor):
            raise ValueError(
                f"equivariance: the data must yield tensors, got {type(item).__name__}."
            )
        yield item.unsqueeze(0) if single else item


def _transform_pair(transform, x: Tensor):
    # Draw g once and return T_g as a function, so that both sides use the same transformation.
    if hasattr(transform, "get_params") and hasattr(transform, "transform"):
        params = transform.get_params(x)
        return lambda t: transform.transform(t, **params)
    if callable(transform):
        return transform
    raise ValueError(
        f"equivariance: 'transform' must be a deepinv Transform or a callable, got {transform!r}."
    )


def _per_sample_sq(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).abs().pow(2).sum(1)


def operator_equivariance_error(
    operator: Callable[[Tensor], Tensor], transform, data, n_draws: int = 4
) -> Tensor:
    r"""Relative equivariance error of an operator :math:`\Phi`.

    .. math::

        \mathcal{E}(\Phi) = \mathbb{E}_{x, g}\,
        \frac{\|\Phi(T_g x) - T_g \Phi(x)\|_2^2}{\|T_g \Phi(x)\|_2^2},

    averaged over the samples of ``data`` and ``n_draws`` random transformations each.

    :param Callable operator: :math:`\Phi`, applied to a batch.
    :param deepinv.transform.Transform transform: the group action :math:`T_g` (a deepinv
        Transform, whose parameters are drawn once per draw and reused on both sides), or a
        deterministic callable.
    :param data: a batch tensor, a dataset of images, or an iterable of batches (e.g. a DataLoader).
    :param int n_draws: random transformations per batch. Default: ``4``.
    :return: (:class:`torch.Tensor`) scalar error.

    |sep|

    :Examples:

    A scaling commutes with rotations: zero error.

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq.diagnostics import operator_equivariance_error
    >>> x = torch.rand(3, 1, 8, 8)
    >>> rot = dinv.transform.Rotate(multiples=90, positive=True)
    >>> float(operator_equivariance_error(lambda t: 0.5 * t, rot, x)) < 1e-12
    True
    """
    n_draws = check_int("operator_equivariance_error", "n_draws", n_draws, 1)
    total, count = None, 0
    with torch.no_grad():
        for x in _batches(data):
            fx = operator(x)
            for _ in range(n_draws):
                T = _transform_pair(transform, x)
                t_fx = T(fx)
                err = _per_sample_sq(operator(T(x)) - t_fx) / _per_sample_sq(t_fx).clamp_min(1e-30)
                total = err.sum() if total is None else total + err.sum()
                count += err.numel()
    if count == 0:
        raise ValueError("operator_equivariance_error: 'data' is empty.")
    return total / count


def equivariance_error(
    model, physics, transform, data, n_draws: int = 4, apply_noise: bool = False
) -> Tensor:
    r"""Equivariance error of a reconstructor :math:`f` for the measurement model :math:`A`.

    .. math::

        \mathcal{E}(f) = \mathbb{E}_{x, g}\,
        \frac{\|f(A T_g x) - T_g f(A x)\|_2^2}{\|T_g f(A x)\|_2^2},

    the expectation being over the images of ``data`` and ``n_draws`` transformations
    :math:`g` per batch. Zero for a reconstructor equivariant to the group on these images.

    :param torch.nn.Module model: the reconstructor, called ``model(y, physics)``.
    :param deepinv.physics.Physics physics: the forward operator :math:`A`.
    :param deepinv.transform.Transform transform: the transformations :math:`T_g`.
    :param data: a batch of images, a dataset of images, or an iterable of batches.
    :param int n_draws: transformations drawn per batch. Default: ``4``.
    :param bool apply_noise: measure with noise (``physics(x)``) instead of :math:`Ax` (with noise
        both sides see independent noise draws). Default: ``False``.
    :return: (:class:`torch.Tensor`) scalar error.

    |sep|

    :Examples:

    A reconstructor that scales its input is shift-equivariant:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq.diagnostics import equivariance_error
    >>> physics = dinv.physics.Denoising(dinv.physics.GaussianNoise(0.1))
    >>> model = lambda y, physics: 0.5 * y    # equivariant to every pixel permutation
    >>> shift = dinv.transform.Shift()
    >>> float(equivariance_error(model, physics, shift, torch.rand(2, 1, 8, 8))) < 1e-12
    True
    """
    measure = physics if apply_noise else physics.A
    return operator_equivariance_error(
        lambda x: model(measure(x), physics), transform, data, n_draws
    )


def jacobian_asymmetry(
    operator: Callable[[Tensor], Tensor], x: Tensor, n_probes: int = 8, generator=None
) -> Tensor:
    r"""Relative asymmetry of the Jacobian of an operator, estimated with random probes.

    .. math::

        \frac{\|J - J^\top\|_F}{\|J\|_F} \approx
        \sqrt{\frac{\sum_k \|J v_k - J^\top v_k\|_2^2}{\sum_k \|J^\top v_k\|_2^2}},
        \qquad v_k \sim \mathcal{N}(0, I),

    (Hutchinson estimates of both squared Frobenius norms), with :math:`J = J_\Phi(x)`. Zero for
    the gradient of a function (e.g. a proximal operator); :math:`\sqrt{2}` for a permutation
    without symmetric pairs such as a cyclic shift. One value per sample.

    :param Callable operator: :math:`\Phi`, square (output shape = input shape).
    :param torch.Tensor x: the point, shape ``(B, ...)``.
    :param int n_probes: number of probes. Default: ``8``.
    :param torch.Generator generator: random generator of the probes. Default: ``None``.
    :return: (:class:`torch.Tensor`) estimates, shape ``(B,)``.

    |sep|

    :Examples:

    A scaling has a symmetric Jacobian:

    >>> import torch
    >>> from deepinv_deq.diagnostics import jacobian_asymmetry
    >>> x = torch.rand(2, 1, 6, 6)
    >>> jacobian_asymmetry(lambda t: 0.5 * t, x)
    tensor([0., 0.])
    """
    n_probes = check_int("jacobian_asymmetry", "n_probes", n_probes, 1)
    xg = x.detach().clone().requires_grad_()
    with torch.enable_grad():
        fx = operator(xg)
        if fx.shape != xg.shape:
            raise ValueError(
                f"jacobian_asymmetry: the operator must preserve the shape, got {tuple(xg.shape)} -> {tuple(fx.shape)}."
            )
        vjp, jvp = vjp_and_jvp(fx, xg)
        num = torch.zeros(x.shape[0], device=x.device, dtype=fx.dtype)
        den = torch.zeros_like(num)
        for _ in range(n_probes):
            v = torch.randn(fx.shape, generator=generator, device=fx.device, dtype=fx.dtype)
            jt_v = vjp(v).detach()
            j_v = jvp(v).detach()
            num = num + _per_sample_sq(j_v - jt_v)
            den = den + _per_sample_sq(jt_v)
    return (num / den.clamp_min(1e-30)).sqrt()


def invariant_prior_test(
    denoiser,
    transform,
    data,
    sigma: float | None = None,
    n_draws: int = 4,
    n_probes: int = 8,
    generator=None,
) -> dict:
    r"""Does a learned denoiser behave as the proximal operator of a :math:`G`-invariant prior?

    Evaluates the denoiser :math:`D_\sigma` at noisy images :math:`z = x + \sigma n` and returns

    - ``"equivariance_error"``: :math:`\mathbb{E}\|D(T_g z) - T_g D(z)\|^2 / \|T_g D(z)\|^2`
      (:func:`operator_equivariance_error`), zero for the prox of a :math:`G`-invariant prior;
    - ``"jacobian_asymmetry"``: the mean over samples of :math:`\|J - J^\top\|_F / \|J\|_F` at
      :math:`z` (:func:`jacobian_asymmetry`), zero for the prox of any (weakly) convex prior.

    :param denoiser: a denoiser ``D(x, sigma)``, or a :class:`deepinv_deq.DEQ` (its map's denoiser
        and noise level are used).
    :param deepinv.transform.Transform transform: the group action :math:`T_g`.
    :param data: a batch of clean images, a dataset or an iterable of batches.
    :param float sigma: noise level of the inputs and of the denoiser (required for a plain
        denoiser). Default: ``None``, meaning the DEQ's ``sigma_denoiser``.
    :param int n_draws: transformations per batch. Default: ``4``.
    :param int n_probes: probes of the Jacobian estimate. Default: ``8``.
    :param torch.Generator generator: random generator of the noise and probes. Default: ``None``.
    :return: (dict) the two scores, as Python floats.

    |sep|

    :Examples:

    The proximal operator of :math:`\tfrac{\sigma}{2}\|x\|^2` passes both tests:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq.diagnostics import invariant_prior_test
    >>> D = lambda x, sigma: x / (1 + sigma)   # prox of an invariant quadratic prior
    >>> out = invariant_prior_test(D, dinv.transform.Shift(), torch.rand(2, 1, 8, 8), sigma=0.1)
    >>> out["equivariance_error"] < 1e-12, out["jacobian_asymmetry"] < 1e-6
    (True, True)
    """
    from .deq import DEQ

    if isinstance(denoiser, DEQ):
        fmap = denoiser.map
        if not hasattr(fmap, "denoiser"):
            raise ValueError(
                "invariant_prior_test: the DEQ's map has no denoiser (a callable iteration)."
            )
        if sigma is None:
            sigma = float(fmap.sigma_denoiser)
        denoiser = fmap.denoiser
    if sigma is None:
        raise ValueError("invariant_prior_test: 'sigma' is required for a plain denoiser.")
    sigma = check_float("invariant_prior_test", "sigma", sigma, 0.0)
    if not callable(denoiser):
        raise ValueError(f"invariant_prior_test: 'denoiser' must be callable, got {denoiser!r}.")

    def D(t):
        return denoiser(t, sigma)

    noisy = []
    for x in _batches(data):
        n = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        noisy.append(x + sigma * n)
    if not noisy:
        raise ValueError("invariant_prior_test: 'data' is empty.")
    eq = operator_equivariance_error(D, transform, noisy, n_draws=n_draws)
    asym = torch.cat(
        [jacobian_asymmetry(D, z, n_probes=n_probes, generator=generator) for z in noisy]
    )
    return {"equivariance_error": float(eq), "jacobian_asymmetry": float(asym.mean())}
