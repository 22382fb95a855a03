r"""Denoisers that make a DEQ's fixed-point map a contraction at initialisation.

A DEQ is only well defined when its map :math:`F` has a unique fixed point and :math:`I - J_F` is
invertible. For the PGD map :math:`F(x) = D(x - \eta A^\top(Ax - y))` with
:math:`\eta \le 1/\|A\|^2`, :math:`J_F = J_D\,(I - \eta A^\top A)`: on the null space of :math:`A`
the data step is the identity, so :math:`\rho(J_F)` equals the denoiser's own gain there. A
residual network initialised as the identity (e.g. a DnCNN with its last layer zeroed) therefore
gives :math:`\rho(J_F) = 1`: the fixed point is not unique, the forward solve crawls and the
implicit backward system is singular. :class:`ContractiveDenoiser` starts from
:math:`D = (1-\epsilon) I` instead, so :math:`\rho(J_F) \le 1 - \epsilon` at initialisation; watch
it during training with :func:`deepinv_deq.spectral_radius` or :class:`deepinv_deq.DEQMonitor`.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from ._validation import check_float, check_int

__all__ = ["ContractiveDenoiser", "residual_cnn"]

_LAST_LAYERS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)


def residual_cnn(
    in_channels: int = 1, depth: int = 5, width: int = 16, bias: bool = True
) -> torch.nn.Module:
    r"""A plain convolutional network :math:`R` (no skip connection), the residual branch of a
    :class:`ContractiveDenoiser`: ``depth`` 3x3 convolutions with ``width`` features and ReLU in
    between (the DnCNN layout without its internal skip connection and batch normalisation).

    :param int in_channels: image channels (1 for CT, 2 for deepinv's MRI). Default: ``1``.
    :param int depth: number of convolutions (at least 2). Default: ``5``.
    :param int width: feature channels. Default: ``16``.
    :param bool bias: whether the convolutions have biases. Default: ``True``.
    :return: (:class:`torch.nn.Sequential`) the network.

    |sep|

    :Examples:

    >>> import torch
    >>> from deepinv_deq.denoisers import residual_cnn
    >>> residual_cnn(in_channels=2, depth=3, width=8)(torch.rand(1, 2, 8, 8)).shape
    torch.Size([1, 2, 8, 8])
    """
    in_channels = check_int("residual_cnn", "in_channels", in_channels, 1)
    depth = check_int("residual_cnn", "depth", depth, 2)
    width = check_int("residual_cnn", "width", width, 1)
    layers: list[torch.nn.Module] = [torch.nn.Conv2d(in_channels, width, 3, padding=1, bias=bias)]
    for _ in range(depth - 2):
        layers += [torch.nn.ReLU(), torch.nn.Conv2d(width, width, 3, padding=1, bias=bias)]
    layers += [torch.nn.ReLU(), torch.nn.Conv2d(width, in_channels, 3, padding=1, bias=bias)]
    return torch.nn.Sequential(*layers)


class ContractiveDenoiser(torch.nn.Module):
    r"""A denoiser that is a contraction at initialisation: :math:`D(x, \sigma) = (1-\epsilon)\,x + R(x, \sigma)`.

    :math:`R` is any network (by default :func:`residual_cnn`) whose last layer is set to zero, so
    that :math:`D = (1-\epsilon) I` at initialisation and the PGD, HQS and RED maps built on it have
    a unique fixed point and an invertible :math:`I - J_F` (for PGD with :math:`\eta \le 1/\|A\|^2`,
    :math:`\rho(J_F) \le 1-\epsilon`). Training may move :math:`\rho(J_F)` towards 1: monitor it
    (:class:`deepinv_deq.DEQMonitor` with ``spectral_radius_every``) and regularise it if needed
    (:class:`deepinv_deq.JacobianNormLoss`, or :func:`deepinv_deq.spectral_normalize` on the hidden
    layers of ``R``, ``spectral_normalize(D.residual[:-1])``: the zeroed last layer cannot be
    normalised). See the user guide page "Contractive DEQs".

    Do not wrap a residual network such as :class:`deepinv.models.DnCNN` (which returns
    :math:`x + \text{net}(x)`): :math:`D` would then start at :math:`(2-\epsilon) I`.

    :param torch.nn.Module residual: the network :math:`R`, called ``residual(x, sigma)`` if its
        ``forward`` accepts a second argument, else ``residual(x)``. Default: ``None``, meaning
        ``residual_cnn(in_channels, depth, width)``.
    :param float epsilon: contraction margin :math:`\epsilon \in (0, 1]`. Default: ``0.1``.
    :param bool zero_init: set the output layer of ``residual`` to zero: the last convolution or
        linear layer to run on a probe input (whatever the order in which the layers are
        defined); a :class:`ValueError` if that layer is spectrally normalised, if no probe fits
        the network, or if the branch is still not zero on the probe (an operation after that
        layer shifts it). Default: ``True``.
    :param int in_channels: image channels of the default network. Default: ``1``.
    :param int depth: convolutions of the default network. Default: ``5``.
    :param int width: features of the default network. Default: ``16``.

    |sep|

    :Examples:

    At initialisation the denoiser is :math:`0.9\,I`:

    >>> import torch
    >>> from deepinv_deq import ContractiveDenoiser
    >>> D = ContractiveDenoiser(epsilon=0.1, depth=3, width=8)
    >>> x = torch.rand(2, 1, 8, 8)
    >>> torch.allclose(D(x, 0.05), 0.9 * x)
    True
    """

    def __init__(
        self,
        residual: torch.nn.Module | None = None,
        epsilon: float = 0.1,
        zero_init: bool = True,
        in_channels: int = 1,
        depth: int = 5,
        width: int = 16,
    ):
        super().__init__()
        self.epsilon = check_float(
            "ContractiveDenoiser", "epsilon", epsilon, 0.0, 1.0, strict_min=True
        )
        if residual is None:
            residual = residual_cnn(in_channels=in_channels, depth=depth, width=width)
        elif not isinstance(residual, torch.nn.Module):
            raise ValueError(
                f"ContractiveDenoiser: 'residual' must be a torch.nn.Module, got {type(residual).__name__}."
            )
        self.residual = residual
        self._takes_sigma = _accepts_second_argument(residual)
        if zero_init:
            self._zero_output_layer(in_channels)

    def _branch(self, x: Tensor, sigma=None) -> Tensor:
        return self.residual(x, sigma) if self._takes_sigma else self.residual(x)

    def _zero_output_layer(self, in_channels: int) -> None:
        # zero the layer that produces R's output, the last convolution or linear layer to run
        # on a probe (not the last one registered: a network may define its output layer first),
        # then check on the probe that R is zero
        layers = [m for m in self.residual.modules() if isinstance(m, _LAST_LAYERS)]
        if not layers:
            raise ValueError(
                "ContractiveDenoiser: zero_init=True needs a convolution or linear layer in 'residual'; "
                "pass zero_init=False for a network without one."
            )
        probe, order = self._probe_order(layers, in_channels)
        if probe is None:
            raise ValueError(
                "ContractiveDenoiser: zero_init=True could not run a probe through 'residual' (no "
                "input shape derived from its layers fits) to find its output layer; pass "
                "zero_init=False and initialise the branch to zero yourself."
            )
        last = order[-1]
        if _is_normalised(last):
            raise ValueError(
                "ContractiveDenoiser: zero_init=True cannot zero a spectrally normalised last layer "
                "(W / sigma(W) is undefined at W = 0). Normalise the other layers only, e.g. "
                "D = ContractiveDenoiser(); spectral_normalize(D.residual[:-1])."
            )
        with torch.no_grad():
            last.weight.zero_()
            if last.bias is not None:
                last.bias.zero_()
            out = self._branch(probe, 0.05)
        if not isinstance(out, Tensor) or bool(out.abs().max() > 0):
            raise ValueError(
                f"ContractiveDenoiser: zeroing the output layer of 'residual' ({type(last).__name__}, "
                "the last such layer to run) does not make the branch zero (something after it, "
                "e.g. a bias or a non-linearity with a non-zero value at 0, shifts the output): "
                "D would not be (1 - epsilon) I at initialisation. Pass zero_init=False and "
                "initialise the branch to zero yourself."
            )

    def _probe_order(self, layers: list, in_channels: int):
        # the order in which the layers run on a probe input, trying input shapes derived from
        # the layers (channels or features of each, image or vector) until one fits
        widths = [in_channels] + [
            getattr(m, "in_channels", getattr(m, "in_features", 0)) for m in layers
        ]
        order: list = []
        hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in layers]
        try:
            for c in dict.fromkeys(w for w in widths if w):
                for shape in ((1, c, 16, 16), (1, c, 16), (1, c, 8, 8, 8), (1, c)):
                    order.clear()
                    probe = torch.rand(shape, generator=torch.Generator().manual_seed(0))
                    try:
                        with torch.no_grad():
                            self._branch(probe, 0.05)
                    except Exception:
                        continue
                    if order:
                        return probe, list(order)
        finally:
            for h in hooks:
                h.remove()
        return None, []

    def forward(self, x: Tensor, sigma=None) -> Tensor:
        r"""Denoise :math:`x`.

        :param torch.Tensor x: noisy image.
        :param float, torch.Tensor sigma: noise level, passed to :math:`R` when it accepts it.
        :return: (:class:`torch.Tensor`) :math:`(1-\epsilon) x + R(x, \sigma)`.
        """
        return (1.0 - self.epsilon) * x + self._branch(x, sigma)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}"


def _is_normalised(layer: torch.nn.Module) -> bool:
    # torch.nn.utils.parametrizations.spectral_norm (a parametrisation) or the older
    # torch.nn.utils.spectral_norm (a forward pre-hook keeping ``weight_orig``)
    from torch.nn.utils import parametrize

    return parametrize.is_parametrized(layer, "weight") or hasattr(layer, "weight_orig")


def _accepts_second_argument(module: torch.nn.Module) -> bool:
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)
