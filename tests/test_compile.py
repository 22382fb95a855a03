"""A denoiser compiled with torch.compile works inside a DEQ, with the same implicit gradient."""

import copy

import deepinv as dinv
import pytest
import torch

from deepinv_deq import DEQ, ContractiveDenoiser


@pytest.mark.slow
def test_compiled_denoiser_gives_the_eager_gradient():
    pytest.importorskip("torch._inductor")
    torch.manual_seed(0)
    physics = dinv.physics.Tomography(angles=8, img_width=16, normalize=True)
    x = torch.rand(2, 1, 16, 16)
    y = physics(x)
    eager = ContractiveDenoiser(depth=3, width=8)
    with torch.no_grad():  # a non-zero residual branch
        eager.residual[-1].weight.normal_(0, 0.01)
    grads = {}
    for name in ("eager", "compiled"):
        den = copy.deepcopy(eager)
        net = den if name == "eager" else torch.compile(den)
        model = DEQ(denoiser=net, max_iter=100, tol=1e-5, backward_tol=1e-5)
        torch.nn.functional.mse_loss(model(y, physics), x).backward()
        assert model.forward_stats.all_converged and model.backward_stats.all_converged
        grads[name] = torch.cat([p.grad.flatten() for p in den.parameters()])
    err = (grads["compiled"] - grads["eager"]).norm() / grads["eager"].norm()
    assert err < 1e-3
