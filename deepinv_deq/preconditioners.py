r"""Preconditioners of the implicit backward's linear system, learned from its own products.

The adjoint system of implicit differentiation, :math:`(I - J_F(x^\star)^\top) u = v`, is solved
with one vector-Jacobian product per iteration. For imaging maps built from convolutional
denoisers and shift-invariant (or nearly so) operators, such as a PGD step on sparse-view
tomography, MRI or deblurring, :math:`M = I - J_F^\top` is close to a per-frequency matrix in the
Fourier domain. :class:`FourierPreconditioner` estimates that symbol from a few products with
random images and applies its inverse; Krylov iterations then need far fewer products. The
preconditioner never changes *which* system is solved: the solver is run on
:math:`M P^{-1} t = v` with :math:`u = P^{-1} t`, whose residual :math:`v - M u` is the true one,
so the solution meets the same tolerance as without it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ._validation import check_float, check_int

__all__ = ["FourierPreconditioner"]


class FourierPreconditioner(torch.nn.Module):
    r"""Circulant (Fourier-diagonal) right preconditioner of a linear operator on image batches.

    For a linear operator :math:`M` acting on images of shape ``(C, H, W)``, the model is a
    :math:`C \times C` matrix :math:`S(\omega)` per spatial frequency :math:`\omega`,
    :math:`\widehat{Mz}(\omega) \approx S(\omega)\, \hat z(\omega)` (hats: 2-D FFT, of the image
    itself for a circular convolution, or zero-padded by ``pad_fraction`` of its size for a linear
    one). :math:`S` is the least-squares fit over random probes :math:`z` (white Gaussian images
    drawn from the preconditioner's own generator),

    .. math::

        S(\omega) = N(\omega) D(\omega)^{-1},\qquad N = \sum_z \widehat{Mz}\,\hat z^{H},
        \quad D = \sum_z \hat z\, \hat z^{H},

    the best circulant approximation of :math:`M` (T. Chan's preconditioner for Toeplitz
    systems), estimated from products only. :math:`P^{-1}` applies
    :math:`(S^H S + \delta I)^{-1} S^H` per frequency (:math:`\delta` = ``ridge`` times the mean
    of :math:`|S|^2`) and crops back to ``(H, W)``.

    **When it is used.** The first solve for a new image shape makes two probes and
    cross-validates the model on them (fit on one, relative error :math:`\|\widehat{Mz} - S\hat
    z\| / \|\widehat{Mz}\|` on the other, both ways) for the unpadded (circular) and the padded
    (linear) FFT. The circular model is kept where its error is below half that of the linear
    one (circular operators: FFT blur, MRI), the linear one otherwise (it converged faster on
    tomography, whose operator has boundaries), provided its error is at most ``max_fit_error``.
    Far from a convolution (error above ``trial_fit_error``, e.g. inpainting with a random mask)
    the preconditioner stays off, having cost those two products once. It is also off for tensors
    that are not image batches ``(B, C, H, W)`` with :math:`H, W \ge 4`.

    **Trials.** Between the two thresholds the fit error does not tell whether the model pays
    (measured: it cut the backward products of trained DEQs by 19–47 % at errors 0.33–0.38 and
    made an inpainting solve 5x longer at 0.43), so it is *tried*: the next ``4 * trial_rounds`` solves alternate with
    and without it in the order on, off, off, on (so that the two DEQ calls of an EI step, whose
    backward solves alternate, are seen by both arms equally) and the arm whose solves needed fewer
    products (reported by the solver through :meth:`observe`) is kept. Every solve is exact either
    way; a trial only changes how many products it takes. A decision to stay off is revisited
    after ``revisit_every`` solves (a training run's operator drifts).

    **Recycling.** The operator of a training run drifts slowly, so the estimate is reused across
    solves and refreshed with one probe every ``refresh_every`` solves, merged with weight
    ``forgetting`` on the past; a refresh probe that the current model predicts worse than
    ``max_fit_error`` discards the estimate (the next solve probes afresh). The estimate, the
    counters and the generator are extra state of the module's ``state_dict``, so a
    checkpointed run resumes exactly.

    :param int refresh_every: one probe every this many solves (``0``: never). Default: ``10``.
    :param float forgetting: weight :math:`\gamma \in [0, 1)` of the past estimate at a refresh,
        :math:`N \leftarrow \gamma N + N_\text{new}` (likewise :math:`D`). Default: ``0.5``.
    :param float pad_fraction: zero-padding of each spatial side of the padded candidate, as a
        fraction of its size. Default: ``0.25``.
    :param float max_fit_error: largest cross-validated relative error of the model for which the
        preconditioner is used without a trial (``0``: every decision is a trial). Default:
        ``0.3``.
    :param float trial_fit_error: largest cross-validated error for which the preconditioner is
        tried (see above); ``trial_fit_error <= max_fit_error`` turns the trials off. Default:
        ``0.6``.
    :param int trial_rounds: rounds of four solves (on, off, off, on) of a trial. Default: ``2``.
    :param int revisit_every: solves after which a decision to stay off is made afresh (``0``:
        never). Default: ``200``.
    :param float ridge: relative Tikhonov weight :math:`\delta` of the per-frequency inversion.
        Default: ``1e-6``.
    :param int seed: seed of the probes' generator. Default: ``0``.

    |sep|

    :Examples:

    A circular convolution is diagonal in the Fourier domain, so two probes recover its inverse:

    >>> import torch
    >>> from deepinv_deq.preconditioners import FourierPreconditioner
    >>> k = torch.zeros(1, 1, 16, 16); k[..., 0, 0] = 1.0; k[..., 0, 1] = 0.4
    >>> M = lambda z: torch.fft.ifft2(torch.fft.fft2(z) * torch.fft.fft2(k)).real
    >>> P = FourierPreconditioner()
    >>> apply_inverse = P.prepare(M, torch.zeros(2, 1, 16, 16))
    >>> z = torch.randn(2, 1, 16, 16)
    >>> torch.allclose(M(apply_inverse(z)), z, atol=1e-4), P.last_probes, P.pad
    (True, 2, (0, 0))

    A random pixel mask is far from a convolution: the preconditioner stays off.

    >>> mask = (torch.rand(1, 1, 16, 16) > 0.5).float()
    >>> Q = FourierPreconditioner()
    >>> Q.prepare(lambda z: z * (0.1 + mask), torch.zeros(2, 1, 16, 16)) is None, Q.enabled
    (True, False)
    """

    def __init__(
        self,
        refresh_every: int = 10,
        forgetting: float = 0.5,
        pad_fraction: float = 0.25,
        max_fit_error: float = 0.3,
        trial_fit_error: float = 0.6,
        trial_rounds: int = 2,
        revisit_every: int = 200,
        ridge: float = 1e-6,
        seed: int = 0,
    ):
        super().__init__()
        owner = type(self).__name__
        self.refresh_every = check_int(owner, "refresh_every", refresh_every, 0)
        self.forgetting = check_float(owner, "forgetting", forgetting, 0.0, 1.0)
        if self.forgetting >= 1.0:
            raise ValueError(f"{owner}: 'forgetting' must be below 1, got {forgetting!r}.")
        self.pad_fraction = check_float(owner, "pad_fraction", pad_fraction, 0.0)
        self.max_fit_error = check_float(owner, "max_fit_error", max_fit_error, 0.0)
        self.trial_fit_error = check_float(owner, "trial_fit_error", trial_fit_error, 0.0)
        self.trial_rounds = check_int(owner, "trial_rounds", trial_rounds, 1)
        self.revisit_every = check_int(owner, "revisit_every", revisit_every, 0)
        self.ridge = check_float(owner, "ridge", ridge, 0.0)
        self.seed = check_int(owner, "seed", seed, 0)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._reset(None)

    def _reset(self, key) -> None:
        self._key = key
        self._num: Tensor | None = None
        self._den: Tensor | None = None
        self._inverse: Tensor | None = None
        self._solves = 0
        #: zero-padding ``(rows, columns)`` of the model in use; ``None`` until chosen
        self.pad: int | tuple | None = None
        #: whether the preconditioner is used for the current shape (``None`` until decided)
        self.enabled: bool | None = None
        #: number of products with random images made by the last :meth:`prepare`
        self.last_probes = 0
        #: cross-validated relative error of the model at the last decision or refresh
        self.fit_error: float | None = None
        # a running trial: the products of its solves so far, and the arm of the pending solve
        self._trial: list | None = None
        self._arm: bool | None = None
        #: mean products per solve ``(with, without)`` of the last finished trial, else ``None``
        self.trial_products: tuple[float, float] | None = None
        #: whether the model in use was kept by a trial (then refreshes accept errors up to
        #: ``trial_fit_error``)
        self.tried = False

    # -- the model ----------------------------------------------------------------------------
    @staticmethod
    def applies_to(like: Tensor) -> bool:
        r"""Whether tensors shaped like ``like`` can be preconditioned (image batches
        ``(B, C, H, W)`` with :math:`H, W \ge 4`, real or complex floating point)."""
        return (
            like.ndim == 4
            and like.shape[-1] >= 4
            and like.shape[-2] >= 4
            and (like.is_floating_point() or like.is_complex())
        )

    @staticmethod
    def _size(like: Tensor, pad) -> tuple[int, int]:
        return like.shape[-2] + pad[0], like.shape[-1] + pad[1]

    def _fft(self, z: Tensor, pad) -> Tensor:
        # (B, C, H, W) -> (B, F, C): per-frequency vectors of the (zero-padded) image
        size = self._size(z, pad)
        Z = torch.fft.fft2(z, s=size) if z.is_complex() else torch.fft.rfft2(z, s=size)
        return Z.flatten(2).transpose(1, 2)

    def _ifft(self, Z: Tensor, like: Tensor, pad) -> Tensor:
        B, C = like.shape[:2]
        size = self._size(like, pad)
        spectrum = Z.transpose(1, 2).reshape(B, C, size[0], -1)
        if like.is_complex():
            z = torch.fft.ifft2(spectrum, s=size)
        else:
            z = torch.fft.irfft2(spectrum, s=size)
        return z[..., : like.shape[-2], : like.shape[-1]].to(like.dtype)

    def _probe(self, matvec: Callable[[Tensor], Tensor], like: Tensor):
        # one product with a batch of white images; None if no sample gave a finite product
        work = torch.promote_types(like.dtype, torch.float32)
        z = torch.randn(like.shape, generator=self._generator, dtype=work).to(like.device)
        mz = matvec(z.to(like.dtype)).to(work)
        self.last_probes += 1
        # a sample whose product is not finite (e.g. a failed forward solve) is left out
        real = torch.view_as_real(mz) if mz.is_complex() else mz
        finite = torch.isfinite(real).reshape(mz.shape[0], -1).all(dim=1)
        return (z[finite], mz[finite]) if bool(finite.any()) else None

    @staticmethod
    def _moments(Z: Tensor, MZ: Tensor):
        return (
            torch.einsum("bfi,bfj->fij", MZ, Z.conj()),
            torch.einsum("bfi,bfj->fij", Z, Z.conj()),
        )

    @staticmethod
    def _symbol(num: Tensor, den: Tensor) -> Tensor:
        C = num.shape[-1]
        eye = torch.eye(C, dtype=num.dtype, device=num.device)
        scale = den.diagonal(dim1=1, dim2=2).real.mean()
        return torch.linalg.solve(den + 1e-12 * scale * eye, num, left=False)

    @classmethod
    def _error(cls, num: Tensor, den: Tensor, Z: Tensor, MZ: Tensor) -> float:
        # relative error on (Z, MZ) of the model fitted on the moments (num, den)
        S = cls._symbol(num, den)
        return float((MZ - torch.einsum("fij,bfj->bfi", S, Z)).norm() / MZ.norm())

    def _inverse_symbol(self) -> Tensor:
        # (F, C, C): (S^H S + delta I)^{-1} S^H
        S = self._symbol(self._num, self._den)
        C = S.shape[-1]
        eye = torch.eye(C, dtype=S.dtype, device=S.device)
        SH = S.conj().transpose(1, 2)
        delta = self.ridge * (S.abs() ** 2).sum(dim=(1, 2)).mean() / C
        return torch.linalg.solve(SH @ S + delta * eye, SH)

    def _decide(self, matvec, like: Tensor) -> None:
        # two probes; cross-validate the unpadded (circular) and the padded (linear) model
        probes = [self._probe(matvec, like) for _ in range(2)]
        self.enabled = False
        if any(p is None for p in probes):
            return
        H, W = like.shape[-2:]
        pads = [(0, 0), (round(self.pad_fraction * H), round(self.pad_fraction * W))]
        fits = []
        for pad in pads:
            spectra = [(self._fft(z, pad), self._fft(mz, pad)) for z, mz in probes]
            moments = [self._moments(Z, MZ) for Z, MZ in spectra]
            error = max(
                self._error(*moments[0], *spectra[1]), self._error(*moments[1], *spectra[0])
            )
            fits.append((error, pad, moments))
        # the circular model only where it fits much better (a circular operator: FFT blur,
        # MRI); the linear one otherwise, which converged faster on tomography although its fit
        # error was higher (operators with boundaries)
        circular, linear = fits
        error, pad, moments = circular if circular[0] < 0.5 * linear[0] else linear
        self.fit_error = error
        if error <= max(self.max_fit_error, self.trial_fit_error):
            self.enabled, self.pad = True, pad
            self._num = moments[0][0] + moments[1][0]
            self._den = moments[0][1] + moments[1][1]
            self._inverse = None
            if error > self.max_fit_error:  # neither clearly good nor clearly bad: try it
                self._trial = []

    def _refresh(self, matvec, like: Tensor) -> None:
        probe = self._probe(matvec, like)
        if probe is None:
            return
        Z, MZ = self._fft(probe[0], self.pad), self._fft(probe[1], self.pad)
        self.fit_error = self._error(self._num, self._den, Z, MZ)
        limit = (
            self.trial_fit_error if self.tried or self._trial is not None else self.max_fit_error
        )
        if self.fit_error > limit:  # the operator moved away: probe afresh
            error = self.fit_error
            self._reset(self._key)
            self.last_probes, self.fit_error = 1, error
            return
        num, den = self._moments(Z, MZ)
        self._num = self.forgetting * self._num + num
        self._den = self.forgetting * self._den + den
        self._inverse = None

    # -- the interface used by the implicit backward ------------------------------------------
    def prepare(self, matvec: Callable[[Tensor], Tensor], like: Tensor):
        r"""Update the estimate as scheduled (products with ``matvec``) and return :math:`P^{-1}`.

        :param Callable matvec: :math:`z \mapsto Mz`, batched like ``like``.
        :param torch.Tensor like: a right-hand side of the system (shape, dtype and device).
        :return: the function :math:`t \mapsto P^{-1} t`, or ``None`` when the preconditioner is
            not used for this system (then solve without one).
        """
        self.last_probes = 0
        if not self.applies_to(like):
            return None
        key = (tuple(like.shape[1:]), like.dtype, like.device)
        if self._key is not None and key[:2] == self._key[:2] and key[2] != self._key[2]:
            # the same system on another device (e.g. a state dict loaded on the CPU): follow it
            if self._num is not None:
                self._num, self._den = self._num.to(like.device), self._den.to(like.device)
            self._key, self._inverse = key, None
        if key != self._key:
            self._reset(key)
        self._arm = None
        with torch.no_grad():
            if self.enabled is False and self.revisit_every and self._solves >= self.revisit_every:
                self._reset(key)  # an operator that drifts may have come closer to a convolution
            if self.enabled is None:
                self._decide(matvec, like)
            elif self.enabled and self.refresh_every and self._solves % self.refresh_every == 0:
                self._refresh(matvec, like)
            self._solves += 1
            if not self.enabled:
                return None
            if self._trial is not None:
                self._arm = len(self._trial) % 4 in (0, 3)  # on, off, off, on
                if not self._arm:
                    return None
            if self._inverse is None:
                self._inverse = self._inverse_symbol()
        inverse, pad = self._inverse, self.pad

        def apply_inverse(t: Tensor) -> Tensor:
            T = self._fft(t.to(torch.promote_types(t.dtype, torch.float32)), pad)
            return self._ifft(torch.einsum("fij,bfj->bfi", inverse, T), t, pad)

        return apply_inverse

    def observe(self, products: int) -> None:
        r"""Report the products of the solve prepared last (its probes excluded).

        During a trial this is what decides it; otherwise it does nothing.

        :param int products: products with the operator made by that solve's solver.
        """
        if self._trial is None or self._arm is None:
            return
        self._trial.append((self._arm, int(products)))
        self._arm = None
        if len(self._trial) < 4 * self.trial_rounds:
            return
        on = [n for arm, n in self._trial if arm]
        off = [n for arm, n in self._trial if not arm]
        self.trial_products = (sum(on) / len(on), sum(off) / len(off))
        self._trial = None
        # a tie goes to the plain solve, whose products are cheaper (no FFTs)
        self.tried = self.trial_products[0] < self.trial_products[1]
        self.enabled = self.tried

    def get_extra_state(self) -> dict:
        key = None if self._key is None else (self._key[0], str(self._key[1]))
        return {
            "key": key,
            "num": self._num,
            "den": self._den,
            "solves": self._solves,
            "pad": self.pad,
            "enabled": self.enabled,
            "fit_error": self.fit_error,
            "trial": None if self._trial is None else list(self._trial),
            "trial_products": self.trial_products,
            "tried": self.tried,
            "generator": self._generator.get_state(),
        }

    def set_extra_state(self, state: dict) -> None:
        self._reset(None)
        self._generator.set_state(state["generator"].cpu())
        if state.get("key") is None:
            return
        shape, dtype = state["key"]
        device = state["num"].device if state.get("num") is not None else torch.device("cpu")
        self._key = (tuple(shape), getattr(torch, dtype.replace("torch.", "")), device)
        self._num, self._den = state.get("num"), state.get("den")
        self._solves = int(state["solves"])
        self.pad, self.enabled, self.fit_error = state["pad"], state["enabled"], state["fit_error"]
        trial = state.get("trial")
        self._trial = None if trial is None else [(bool(a), int(n)) for a, n in trial]
        self.trial_products = state.get("trial_products")
        self.tried = bool(state.get("tried", False))

    def _apply(self, fn, recurse=True):
        # the estimate follows .to(device) (the generator stays on the CPU)
        super()._apply(fn, recurse)
        if self._num is not None:
            self._num, self._den = fn(self._num), fn(self._den)
            self._key = (self._key[0], self._key[1], self._num.device)
            self._inverse = None
        return self

    def extra_repr(self) -> str:
        return (
            f"refresh_every={self.refresh_every}, forgetting={self.forgetting}, "
            f"pad_fraction={self.pad_fraction}, max_fit_error={self.max_fit_error}, "
            f"trial_fit_error={self.trial_fit_error}, trial_rounds={self.trial_rounds}, "
            f"revisit_every={self.revisit_every}"
        )
