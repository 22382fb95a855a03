r"""Multi-variable states (a splitting algorithm's :math:`(x, z, u)`) packed into one tensor.

The solvers and the backward strategies work on one tensor of shape ``(B, ...)``. A map whose
state has several variables (ADMM, DRS, primal-dual, or a user's own) is iterated through
:class:`StatePacker`: the variables of each sample are flattened and concatenated into one
``(B, n)`` tensor, so per-sample stopping, Anderson acceleration on the concatenated state and
implicit differentiation through the whole state (the adjoint of the full map) apply unchanged.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["StatePacker", "is_multi_state"]


def is_multi_state(state) -> bool:
    r"""Whether ``state`` is a multi-variable state: a tuple or list of tensors (a deepinv
    :class:`deepinv.utils.TensorList` included)."""
    if isinstance(state, Tensor) and not hasattr(state, "x"):
        return False
    parts = getattr(state, "x", state)  # TensorList keeps its tensors in .x
    return isinstance(parts, (tuple, list)) and all(isinstance(p, Tensor) for p in parts)


class StatePacker:
    r"""Pack a state :math:`(s_1, \dots, s_m)` (tensors sharing the batch dimension) into one tensor
    of shape ``(B, n)`` and back.

    :param Sequence state: an example state (a tuple, list or deepinv ``TensorList`` of tensors of
        shapes ``(B, ...)``), which fixes the shapes and the dtype; :meth:`unpack` gives a tuple.

    |sep|

    :Examples:

    >>> import torch
    >>> from deepinv_deq.state import StatePacker
    >>> state = (torch.ones(2, 1, 3, 3), torch.zeros(2, 4))
    >>> packer = StatePacker(state)
    >>> packed = packer.pack(state)
    >>> packed.shape, [tuple(t.shape) for t in packer.unpack(packed)]
    (torch.Size([2, 13]), [(2, 1, 3, 3), (2, 4)])
    """

    def __init__(self, state: Sequence[Tensor]):
        parts = list(getattr(state, "x", state))
        if not parts or not all(isinstance(p, Tensor) for p in parts):
            raise ValueError("StatePacker: a state is a non-empty tuple or list of tensors.")
        batch = parts[0].shape[0] if parts[0].ndim else None
        if batch is None or any(p.ndim == 0 or p.shape[0] != batch for p in parts):
            raise ValueError(
                "StatePacker: every variable of the state needs the same batch dimension, got "
                f"shapes {[tuple(p.shape) for p in parts]}."
            )
        self.shapes = [tuple(p.shape[1:]) for p in parts]
        self.sizes = [max(int(torch.Size(s).numel()), 1) for s in self.shapes]
        self.dtype = parts[0].dtype
        for p in parts[1:]:
            self.dtype = torch.promote_types(self.dtype, p.dtype)

    def pack(self, state: Sequence[Tensor]) -> Tensor:
        r"""The state as one tensor ``(B, n)``."""
        parts = list(getattr(state, "x", state))
        if [tuple(p.shape[1:]) for p in parts] != self.shapes:
            raise ValueError(
                f"StatePacker: the map changed the shapes of the state from {self.shapes} to "
                f"{[tuple(p.shape[1:]) for p in parts]}."
            )
        return torch.cat([p.reshape(p.shape[0], -1).to(self.dtype) for p in parts], dim=1)

    def unpack(self, packed: Tensor) -> tuple:
        r"""The variables of the state from its packed form (views, in the order of the state)."""
        pieces = torch.split(packed, self.sizes, dim=1)
        return tuple(
            p.reshape((packed.shape[0],) + s) for p, s in zip(pieces, self.shapes, strict=True)
        )
