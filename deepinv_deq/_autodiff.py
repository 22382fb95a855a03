r"""Private autodiff, per-sample norm and broadcast helpers shared by the solvers, the implicit
backward, the stabilisers and the diagnostics (torch only).

- :func:`batch_norm`: per-sample Euclidean norm of a batch, shape ``(B,)``;
- :func:`expand_as_batch`: reshape a per-sample tensor ``(B,)`` to broadcast against a batch;
- :func:`vjp_and_jvp`: vector-Jacobian and Jacobian-vector products of one differentiable
  evaluation, with reverse-mode autograd only.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["batch_norm", "expand_as_batch", "vjp_and_jvp"]


def batch_norm(t: Tensor) -> Tensor:
    r"""Per-sample Euclidean norm :math:`\|t_b\|_2` of a batch ``t`` of shape ``(B, ...)``.

    :param torch.Tensor t: the batch (real or complex).
    :return: (:class:`torch.Tensor`) the norms, shape ``(B,)``, real.

    :Examples:

    The norm of each sample of a batch of two:

    >>> import torch
    >>> from deepinv_deq._autodiff import batch_norm
    >>> batch_norm(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
    tensor([5., 1.])
    """
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1)


def expand_as_batch(s: Tensor, like: Tensor) -> Tensor:
    r"""Reshape a per-sample tensor of shape ``(B,)`` to ``(B, 1, ..., 1)``, broadcastable against ``like``.

    :param torch.Tensor s: per-sample values (or a per-sample boolean mask), shape ``(B,)``.
    :param torch.Tensor like: a batch of shape ``(B, ...)``.
    :return: (:class:`torch.Tensor`) a view of ``s`` with ``like.ndim`` dimensions.

    :Examples:

    Scale each sample of a batch of images by its own factor:

    >>> import torch
    >>> from deepinv_deq._autodiff import expand_as_batch
    >>> x = torch.ones(2, 1, 3, 3)
    >>> (expand_as_batch(torch.tensor([1.0, 2.0]), x) * x).sum(dim=(1, 2, 3))
    tensor([ 9., 18.])
    """
    return s.reshape((-1,) + (1,) * (like.ndim - 1))


def vjp_and_jvp(fx: Tensor, x: Tensor):
    r"""Vector-Jacobian and Jacobian-vector products of a differentiable evaluation ``fx = f(x)``.

    Returns two functions, ``vjp(u)`` :math:`= J_f(x)^\top u` and ``jvp(v)`` :math:`= J_f(x) v`; the
    JVP is computed by differentiating the (linear in :math:`u`) VJP, so only reverse-mode autograd
    is needed. Both keep the graph of ``fx``, so they can be called repeatedly.

    :param torch.Tensor fx: :math:`f(x)`, computed with autograd from ``x``.
    :param torch.Tensor x: the input, with ``requires_grad=True``.
    :return: (tuple) the functions ``(vjp, jvp)``.

    :Examples:

    For :math:`f(x) = Mx` the products are :math:`M^\top u` and :math:`Mv`:

    >>> import torch
    >>> from deepinv_deq._autodiff import vjp_and_jvp
    >>> M = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    >>> x = torch.zeros(2, requires_grad=True)
    >>> vjp, jvp = vjp_and_jvp(M @ x, x)
    >>> vjp(torch.tensor([1.0, 0.0])), jvp(torch.tensor([0.0, 1.0]))
    (tensor([1., 2.]), tensor([2., 3.]))
    """
    dummy = torch.zeros_like(fx, requires_grad=True)
    (vjp_dummy,) = torch.autograd.grad(fx, x, dummy, create_graph=True, allow_unused=True)
    independent = vjp_dummy is None  # f does not depend on x: J = 0

    def vjp(u: Tensor) -> Tensor:
        (g,) = torch.autograd.grad(fx, x, u, retain_graph=True, allow_unused=True)
        return torch.zeros_like(x) if g is None else g

    def jvp(v: Tensor) -> Tensor:
        if independent:
            return torch.zeros_like(fx)
        g = None
        if vjp_dummy.requires_grad:
            (g,) = torch.autograd.grad(vjp_dummy, dummy, v, retain_graph=True, allow_unused=True)
        if g is None:
            # J^T u does not depend on u in autograd's eyes: a once-differentiable step (e.g.
            # deepinv's least-squares solver) cut the graph; a zero J v would be silently wrong
            raise RuntimeError(
                "vjp_and_jvp: the vector-Jacobian product of this function is not differentiable "
                "(it goes through a once-differentiable operation, e.g. deepinv's least-squares "
                "solver), so Jacobian-vector products cannot be computed from it."
            )
        return g

    return vjp, jvp
