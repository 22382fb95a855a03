r"""
Your own fixed-point map with ImplicitBackward
==============================================

:class:`deepinv_deq.ImplicitBackward` differentiates through the fixed point of *any* map
:math:`x = F_\theta(x)`, not only the PGD/HQS/RED iterations built into
:class:`deepinv_deq.DEQ`. It needs only PyTorch: a callable closing over the parameters and the
inputs, and a fixed point computed without autograd.

This example

1. writes a small learned fixed-point layer for 1D deblurring, without deepinv,
2. trains it with a plain PyTorch loop (solve, attach the implicit backward, ``backward()``),
3. checks its implicit gradient against autograd through a long unrolled run, and
4. plugs the same map into :class:`deepinv_deq.DEQ` as a callable ``iteration``.

Everything runs in float64: at this size it costs little, and the gradient check can then go far
below float32's round-off.
"""

import matplotlib.pyplot as plt
import torch

import deepinv as dinv
from deepinv_deq import DEQ, ContractiveDenoiser, ImplicitBackward
from deepinv_deq.solvers import AndersonAcceleration

_ = torch.manual_seed(0)
torch.set_default_dtype(torch.float64)

# %%
# A toy inverse problem
# ---------------------
# Piecewise-constant 1D signals of length 64, blurred by a Gaussian kernel (circular boundary,
# :math:`\|A\| = 1`) with Gaussian noise of standard deviation 0.02. The blur is symmetric, so the
# adjoint is the same convolution.

n, batch = 64, 8
kernel = torch.exp(-0.5 * (torch.arange(-6, 7) / 2.5) ** 2)
kernel = (kernel / kernel.sum()).reshape(1, 1, -1)


def blur(x):
    return torch.nn.functional.conv1d(torch.nn.functional.pad(x, (6, 6), mode="circular"), kernel)


def signals(b, generator=None):
    jumps = (torch.rand(b, 1, n, generator=generator) < 0.08).double()
    heights = torch.randn(b, 1, n, generator=generator)
    return torch.cumsum(jumps * heights, dim=-1) * 0.5


def measure(x, generator=None):
    return blur(x) + 0.02 * torch.randn(x.shape, generator=generator)


# %%
# The fixed-point map
# -------------------
# One gradient step on :math:`\tfrac12\|Ax-y\|^2` followed by a learned denoiser,
#
# .. math::
#
#    F_\theta(x; y) = D_\theta\big(x - A^\top(Ax - y)\big), \qquad
#    D_\theta(z) = 0.8\, z + R_\theta(z),
#
# where :math:`R_\theta` is a three-layer 1D convolutional network. The denoiser is a
# :class:`deepinv_deq.ContractiveDenoiser` around that network: it works with any module, and sets
# its last layer to zero, so that :math:`D_\theta = 0.8\,I` at initialisation. The gradient step is
# non-expansive (:math:`\|A\| = 1`), so :math:`F_\theta` starts as a contraction of factor 0.8: the
# fixed point is unique, and both the forward solve and the implicit backward system are well
# posed. The margin :math:`\epsilon = 0.2` is wider than the default 0.1: the blur removes high
# frequencies that the data step then leaves untouched, so training teaches :math:`D_\theta` to
# keep them, which moves :math:`\rho(J_F)` towards one (with 0.1, the trained map contracted so
# slowly that some solves hit their cap). The training loop below counts the solves that do not
# converge.


class DeblurLayer(torch.nn.Module):
    def __init__(self, features=16):
        super().__init__()
        conv = dict(kernel_size=5, padding=2, padding_mode="circular")
        residual = torch.nn.Sequential(
            torch.nn.Conv1d(1, features, **conv),
            torch.nn.ReLU(),
            torch.nn.Conv1d(features, features, **conv),
            torch.nn.ReLU(),
            torch.nn.Conv1d(features, 1, **conv),
        )
        self.denoiser = ContractiveDenoiser(residual, epsilon=0.2)

    def forward(self, x, y, physics=None):
        return self.denoiser(x - blur(blur(x) - y))


layer = DeblurLayer()
forward_solver = AndersonAcceleration(max_iter=100, tol=1e-4)
backward = ImplicitBackward(mode="implicit", max_iter=100, tol=1e-4)

x_test = signals(64, torch.Generator().manual_seed(2))
y_test = measure(x_test, torch.Generator().manual_seed(3))


def test_error():
    """Mean squared error of the fixed point on the 64 test signals, and the solver statistics."""
    with torch.no_grad():
        result = forward_solver(lambda x: layer(x, y_test), y_test)
    return ((result.x - x_test) ** 2).mean().item(), result.stats


mse_untrained, _ = test_error()

# %%
# Training the layer
# ------------------
# A supervised training loop in plain PyTorch: solve without autograd, attach the implicit
# backward at the fixed point with ``backward(F, x_star)``, and call ``loss.backward()``.
# 200 Adam steps on fresh random signals.

optimizer = torch.optim.Adam(layer.parameters(), lr=3e-3)
gen = torch.Generator().manual_seed(1)
losses, not_converged, solves = [], 0, 0
for step in range(200):
    x_true = signals(batch, gen)
    y = measure(x_true, gen)

    def F(x):
        return layer(x, y)

    with torch.no_grad():
        result = forward_solver(F, y)
    x_hat = backward(F, result.x)  # the fixed point, with the implicit backward attached
    loss = ((x_hat - x_true) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()  # runs the backward solve
    optimizer.step()
    losses.append(loss.item())
    for stats in (result.stats, backward.last_stats):
        not_converged += stats.status_names().count("CONVERGED") - len(stats.status_names())
        solves += len(stats.status_names())

mse_trained, stats = test_error()
print(f"training: {-not_converged} of {solves} (sample, solve) pairs did not converge")
print(f"test MSE of the measurement y : {((y_test - x_test) ** 2).mean().item():.4f}")
print(f"test MSE, untrained layer     : {mse_untrained:.4f}")
print(f"test MSE, trained layer       : {mse_trained:.4f}")
print(f"test solve: {stats.nfe} iterations, {stats.status_names().count('CONVERGED')}/64 converged")

# %%
# The trained layer's fixed point is closer to the signals than the measurements are; before
# training, the layer (:math:`D = 0.8\,I`, a damped least-squares solution) is not.
#
# Implicit gradient vs a long unrolled reference
# ----------------------------------------------
# At the trained parameters: the forward solve to a tight tolerance, then the implicit gradient
# with each of the three backward solvers. Reference: plain autograd through 1000 iterations of
# the same map from the same start, exact up to round-off for a contraction but with a memory that
# grows with the number of iterations. The gradient is taken with respect to the weights and to
# the measurements :math:`y` as well.

x_true, y = x_test[:batch], y_test[:batch].clone().requires_grad_()
params = list(layer.parameters())


def F(x):
    return layer(x, y)


def flat_grad(z):
    grads = torch.autograd.grad(((z - x_true) ** 2).mean(), params + [y])
    return torch.cat([g.reshape(-1) for g in grads])


with torch.no_grad():
    result = AndersonAcceleration(max_iter=1000, tol=1e-12)(F, y)
print(f"forward: {result.stats.nfe} iterations, residual {result.stats.residual.max():.1e}")

x = y.detach()
for _ in range(1000):
    x = F(x)
reference = flat_grad(x)


def compare(name, g, extra=""):
    cos = torch.nn.functional.cosine_similarity(g, reference, dim=0).item()
    rel = ((g - reference).norm() / reference.norm()).item()
    print(f"{name:<22} cosine {cos:.8f}  rel. error {rel:.1e}{extra}")


for solver in ("fixed_point", "anderson", "gmres"):
    ib = ImplicitBackward(mode="implicit", solver=solver, max_iter=1000, tol=1e-10)
    compare(
        f"implicit ({solver})", flat_grad(ib(F, result.x)), f"  ({ib.last_stats.nfe} iterations)"
    )
compare("JFB", flat_grad(ImplicitBackward(mode="jfb")(F, result.x)))

# %%
# The implicit gradients agree with the unrolled reference to the backward solver's tolerance,
# whatever the solver, and they reach :math:`y` as well as the weights. JFB, which drops the
# Jacobian term, is cheaper but off by the relative error printed above: the dropped term weighs
# more the closer :math:`\rho(J_F)` is to one, and the trained map contracts slowly (its forward
# solve to :math:`10^{-12}` took the number of iterations printed above).
#
# Plugging the map into DEQ
# -------------------------
# The same layer, called as ``F(x, y, physics)``, can be the ``iteration`` of a
# :class:`deepinv_deq.DEQ`, which then is a deepinv ``Reconstructor``: it works with
# :class:`deepinv.Trainer` and deepinv's losses. The physics here is a
# :class:`deepinv.physics.LinearPhysics` built from the blur.

physics = dinv.physics.LinearPhysics(A=blur, A_adjoint=blur)
model = DEQ(iteration=layer, max_iter=100, tol=1e-4)
with torch.no_grad():
    x_hat = model(y_test[:4], physics)
print(f"DEQ: {model.forward_stats.status_names().count('CONVERGED')}/4 converged")

window = 20
smooth = torch.tensor(losses).unfold(0, window, 1).mean(1)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
axes[0].plot(range(window, len(losses) + 1), smooth, label=f"training loss ({window}-step mean)")
axes[0].axhline(mse_trained, color="C3", ls="--", label="test MSE, trained")
axes[0].axhline(
    ((y_test - x_test) ** 2).mean().item(), color="0.5", ls=":", label="test MSE of $y$"
)
axes[0].set_xlabel("training step", fontsize=12)
axes[0].set_ylabel("MSE", fontsize=12)
axes[0].legend(fontsize=10)
axes[1].plot(x_test[0, 0], "k", lw=2, label="signal $x$")
axes[1].plot(y_test[0, 0], color="0.6", label="measurement $y$")
axes[1].plot(x_hat[0, 0], "C3", label=r"DEQ $\hat{x}$")
axes[1].set_title("a test signal", fontsize=12)
axes[1].legend(loc="best", fontsize=10)
fig.tight_layout()
plt.show()
torch.set_default_dtype(torch.float32)  # restore the default for the next example
