r"""A linear physics stored as sparse matrices: the same operator, applied faster.

Every fixed-point iteration and every vector-Jacobian product of a DEQ applies :math:`A` and
:math:`A^\top`. Some deepinv operators compute them with general-purpose kernels: parallel-beam
:class:`deepinv.physics.Tomography` rotates the image with ``grid_sample`` for every view, and its
adjoint is a backpropagation through that. Both are linear maps with a few non-zero entries per
column (a view reaches each pixel through a few interpolation weights), i.e. small sparse
matrices. :class:`SparseMatrixPhysics` builds the matrix of :math:`A` once, by applying the
operator to the canonical basis, and then applies :math:`A` and :math:`A^\top` as sparse matrix
products. The operator is the same up to float rounding; only its cost changes (measured in
``benchmarks/README.md``, section "Sparse-matrix physics").
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict

import deepinv as dinv
import torch
from torch import Tensor

from ._validation import check_float, check_int

__all__ = ["SparseMatrixPhysics"]

#: matrices built in this process, by operator fingerprint (a physics rebuilt with the same
#: operator, e.g. once for training and once for testing, is not probed again)
_BUILT: OrderedDict = OrderedDict()
_BUILT_MAX = 8


class _SparseProduct(torch.autograd.Function):
    # x (B, N) -> (B, M): the matrix applied to each row of x. Its gradient is the product with
    # the transposed matrix, itself a _SparseProduct (differentiable to any order). The result is
    # contiguous, as deepinv's operators return theirs (a noise model draws in memory order).
    @staticmethod
    def forward(ctx, x: Tensor, matrix: Tensor, transposed: Tensor) -> Tensor:
        ctx.matrices = (matrix, transposed)
        return (matrix @ x.t()).t().contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor):
        matrix, transposed = ctx.matrices
        return _SparseProduct.apply(grad, transposed, matrix), None, None


class SparseMatrixPhysics(dinv.physics.LinearPhysics):
    r"""A linear deepinv physics whose :math:`A` and :math:`A^\top` are sparse matrix products.

    The matrix :math:`A \in \mathbb{R}^{m \times n}` of ``physics`` is built once from its
    columns :math:`A e_j`, computed by ``physics.A`` on batches of canonical basis images (its
    exact zeros are left out). Then

    .. math::

        A x = \texttt{A} \cdot x, \qquad A^\top y = \texttt{A}^\top \cdot y,

    in compressed sparse row format, on the device and in the floating-point type of the input
    (a copy per device and type is kept). Autograd differentiates both exactly: the
    vector-Jacobian product of :math:`A` is :math:`A^\top` and vice versa. The noise model and the
    sensor model are those of ``physics`` (the same objects, so the same random generator), and
    ``A_dagger`` is ``physics.A_dagger`` (e.g. filtered back-projection with ``fbp=True`` for
    :class:`deepinv.physics.Tomography`). The physics' parameters are frozen in the matrix: a
    physics whose parameters change (``update_parameters``) must be rebuilt.

    ``physics.A_adjoint`` must be the adjoint of ``physics.A`` (as deepinv's ``Tomography`` is
    by default, ``adjoint_via_backprop=True``): it is checked on a random measurement, since the
    sparse :math:`A^\top` is the exact transpose of :math:`A`, and an operator whose adjoint is
    only approximate (e.g. an inverse Radon transform) would otherwise be silently changed.

    Building costs :math:`n` applications of :math:`A` (in batches of ``chunk_size``): on one
    CPU thread about 0.1 s for ``Tomography`` at 32x32, 3 s at 64x64 and 130 s at 128x128; a
    matrix is built once per process and operator (a second physics with the same operator reuses
    it). Memory: the non-zeros, twice (:math:`A` and :math:`A^\top`), e.g. 1.8 million at
    128x128 with 50 views.

    :param deepinv.physics.LinearPhysics physics: the operator to store (real-valued).
    :param tuple img_size: shape ``(C, H, W)`` of one image. Default: ``physics.img_size`` where
        it has one (``(1, n, n)`` for ``Tomography``).
    :param float adjoint_tol: largest relative mismatch
        :math:`|\langle Ax, y\rangle - \langle x, A^\top y\rangle| / (\|Ax\|\|y\|)` accepted
        between ``physics.A_adjoint`` and the transpose of :math:`A`. Default: ``1e-5``.
    :param int chunk_size: basis images per application of ``physics.A`` while building.
        Default: ``32``.

    :raises ValueError: if ``physics`` is not a real linear physics, if the image size is unknown,
        or if its adjoint is not the transpose of :math:`A`.

    |sep|

    :Examples:

    Sparse-view tomography, the same operator as deepinv's:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq.physics import SparseMatrixPhysics
    >>> ct = dinv.physics.Tomography(angles=8, img_width=16, circle=False, normalize=True)
    >>> fast = SparseMatrixPhysics(ct)
    >>> x = torch.rand(2, 1, 16, 16)
    >>> bool(torch.allclose(fast.A(x), ct.A(x), atol=1e-5))
    True
    >>> y = ct.A(x)
    >>> bool(torch.allclose(fast.A_adjoint(y), ct.A_adjoint(y), atol=1e-5))
    True
    """

    def __init__(
        self,
        physics,
        img_size: tuple | None = None,
        adjoint_tol: float = 1e-5,
        chunk_size: int = 32,
    ):
        owner = type(self).__name__
        if not isinstance(physics, dinv.physics.LinearPhysics):
            raise ValueError(
                f"{owner}: 'physics' must be a deepinv LinearPhysics, got {type(physics).__name__}."
            )
        adjoint_tol = check_float(owner, "adjoint_tol", adjoint_tol, 0.0)
        chunk_size = check_int(owner, "chunk_size", chunk_size, 1)
        img_size = _image_size(owner, physics, img_size)
        super().__init__(
            img_size=img_size,
            noise_model=physics.noise_model,
            sensor_model=physics.sensor_model,
        )
        self.physics = physics
        key = (type(physics).__qualname__, img_size, _fingerprint(physics, img_size))
        if key not in _BUILT:
            matrix, shape, order = _matrix(owner, physics, img_size, chunk_size)
            _BUILT[key] = (matrix, matrix.t().coalesce(), shape, order)
            while len(_BUILT) > _BUILT_MAX:
                _BUILT.popitem(last=False)
        matrix, transposed, self.measurement_shape, order = _BUILT[key]
        # the rows of the matrix follow the memory order of the physics' own measurements (e.g.
        # deepinv's Tomography returns them transposed in memory), so that a noise model, which
        # draws in memory order, adds the same noise to the same entries as with ``physics``
        self._order = order
        self._stored_shape = tuple(self.measurement_shape[d] for d in order)
        self._unorder = tuple(sorted(range(len(order)), key=order.__getitem__))
        self._stored = {}  # (device, dtype) -> (A, A^T) in CSR
        self._base = (matrix, transposed)
        self.nnz = int(matrix._nnz())
        _check_adjoint(owner, physics, self, img_size, adjoint_tol)

    def _matrices(self, like: Tensor, kind: str, shape: tuple) -> tuple[Tensor, Tensor]:
        # the matrices on the device and in the type of `like`, a batch of `kind` of `shape`
        if tuple(like.shape[1:]) != tuple(shape):
            raise ValueError(
                f"{type(self).__name__}: {kind} of shape {tuple(shape)} expected, got "
                f"{tuple(like.shape[1:])}."
            )
        key = (like.device, like.dtype)
        if key not in self._stored:
            if like.is_complex() or not like.is_floating_point():
                raise ValueError(
                    f"{type(self).__name__}: real floating-point inputs only, got {like.dtype}."
                )
            with warnings.catch_warnings():  # torch's notice that its CSR format is in beta
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                self._stored[key] = tuple(
                    m.to(device=like.device, dtype=like.dtype).to_sparse_csr() for m in self._base
                )
        return self._stored[key]

    def __getstate__(self):
        # a copy keeps the matrices in COO form; the CSR copies per device and type (which torch
        # cannot deep-copy) are made again on first use
        state = dict(super().__getstate__())
        state["_stored"] = {}
        return state

    def A(self, x: Tensor, **kwargs) -> Tensor:
        r"""Apply :math:`A` to a batch of images ``(B, C, H, W)``."""
        matrix, transposed = self._matrices(x, "images", self.img_size)
        out = _SparseProduct.apply(x.reshape(x.shape[0], -1), matrix, transposed)
        out = out.view(x.shape[0], *self._stored_shape)
        return out.permute(0, *(1 + d for d in self._unorder))

    def A_adjoint(self, y: Tensor, **kwargs) -> Tensor:
        r"""Apply :math:`A^\top` to a batch of measurements."""
        matrix, transposed = self._matrices(y, "measurements", self.measurement_shape)
        stored = y.permute(0, *(1 + d for d in self._order)).reshape(y.shape[0], -1)
        out = _SparseProduct.apply(stored, transposed, matrix)
        return out.reshape(y.shape[0], *self.img_size)

    def A_dagger(self, y: Tensor, **kwargs) -> Tensor:
        r"""The pseudo-inverse of the stored physics (``physics.A_dagger(y, **kwargs)``)."""
        return self.physics.A_dagger(y, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"img_size={tuple(self.img_size)}, measurements={tuple(self.measurement_shape)}, "
            f"nnz={self.nnz}"
        )


def _image_size(owner: str, physics, img_size) -> tuple:
    if img_size is None:
        img_size = getattr(physics, "img_size", None)
        if img_size is None and isinstance(getattr(physics, "img_width", None), int):
            img_size = (1, physics.img_width, physics.img_width)
    if img_size is None:
        raise ValueError(
            f"{owner}: the image size of {type(physics).__name__} is unknown; give img_size."
        )
    img_size = tuple(int(s) for s in img_size)
    if len(img_size) == 2:
        img_size = (1, *img_size)
    if len(img_size) != 3 or min(img_size) < 1:
        raise ValueError(f"{owner}: 'img_size' must be (C, H, W), got {img_size!r}.")
    return img_size


def _matrix(owner: str, physics, img_size: tuple, chunk_size: int):
    # COO (M, N) matrix of A from A applied to the canonical basis, chunk by chunk
    n = int(torch.tensor(img_size).prod())
    device = _device(physics)
    parts, shape, order = [], None, None
    with torch.no_grad():
        for start in range(0, n, chunk_size):
            count = min(chunk_size, n - start)
            basis = torch.zeros(count, n, device=device, dtype=_dtype(physics))
            basis[torch.arange(count), torch.arange(start, start + count)] = 1.0
            columns = physics.A(basis.reshape(count, *img_size))
            if columns.is_complex():
                raise ValueError(f"{owner}: complex-valued physics are not supported.")
            shape = tuple(columns.shape[1:])
            order = _memory_order(columns) if order is None else order
            columns = columns.permute(0, *(1 + d for d in order)).reshape(count, -1).cpu()
            rows, cols = torch.nonzero(columns, as_tuple=True)
            parts.append((rows + start, cols, columns[rows, cols]))
    index = torch.stack([torch.cat([p[1] for p in parts]), torch.cat([p[0] for p in parts])])
    values = torch.cat([p[2] for p in parts])
    m = int(torch.tensor(shape).prod())
    matrix = torch.sparse_coo_tensor(index, values, (m, n), check_invariants=False)
    return matrix.coalesce(), shape, order


def _memory_order(batch: Tensor) -> tuple[int, ...]:
    # the order of the dimensions of one sample of `batch` from the outermost in memory to the
    # innermost (the identity for a contiguous tensor or a layout that is not a permutation)
    strides, sizes = batch.stride()[1:], batch.shape[1:]
    order = tuple(sorted(range(len(sizes)), key=lambda d: (-strides[d], d)))
    expected = 1
    for d in reversed(order):
        if sizes[d] > 1 and strides[d] != expected:
            return tuple(range(len(sizes)))
        expected *= sizes[d]
    return order


def _fingerprint(physics, img_size: tuple) -> tuple:
    # A applied to a fixed random image: two linear operators that agree on it bit for bit are,
    # almost surely, the same operator
    probe = torch.randn(1, *img_size, generator=torch.Generator().manual_seed(1234))
    probe = probe.to(device=_device(physics), dtype=_dtype(physics))
    with torch.no_grad():
        out = physics.A(probe).detach().cpu().contiguous()
    digest = hashlib.sha1(out.numpy().tobytes()).hexdigest()
    return tuple(out.shape), str(out.dtype), digest


def _check_adjoint(owner: str, physics, fast, img_size: tuple, tol: float) -> None:
    generator = torch.Generator().manual_seed(0)
    dtype = _dtype(physics)
    x = torch.randn(1, *img_size, generator=generator, dtype=dtype)
    with torch.no_grad():
        ax = fast.A(x)
        y = torch.randn(ax.shape, generator=generator, dtype=dtype)
        aty = physics.A_adjoint(y.to(_device(physics))).cpu()
    mismatch = float((ax * y).sum() - (x * aty).sum()).__abs__() / float(ax.norm() * y.norm())
    if mismatch > tol:
        raise ValueError(
            f"{owner}: {type(physics).__name__}.A_adjoint is not the adjoint of A (relative "
            f"mismatch {mismatch:.1e} > adjoint_tol={tol:g}); the sparse transpose would change "
            "the operator. Use an exact adjoint (e.g. Tomography(adjoint_via_backprop=True))."
        )


def _device(physics) -> torch.device:
    # where the physics computes: that of its first buffer or parameter (CPU if it has none)
    for tensor in (*physics.buffers(), *physics.parameters()):
        return tensor.device
    return torch.device("cpu")


def _dtype(physics) -> torch.dtype:
    # the real floating-point type the physics computes in: that of its first real floating
    # buffer or parameter (float32 if it has none)
    for tensor in (*physics.buffers(), *physics.parameters()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32
