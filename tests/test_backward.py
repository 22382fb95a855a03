"""The backward strategies and the linear-solve interface they share.

Every linear solver answers ``solve(matvec, b, x0)``; the strategies are found by name in one
registry or passed as instances; status codes carry their message and advice; ``DEQ``'s
``on_failure`` governs the forward and the backward solve alike."""

from __future__ import annotations

import warnings

import pytest
import torch

from deepinv_deq import DEQ, ContractiveDenoiser
from deepinv_deq._validation import resolve
from deepinv_deq.backward import BACKWARDS, BackwardStrategy, ImplicitDifferentiation
from deepinv_deq.solvers import (
    FORWARD_SOLVERS,
    GMRES,
    LINEAR_SOLVERS,
    FixedPointSolver,
    SolverStatus,
    get_solver,
)


@pytest.mark.parametrize("name", list(LINEAR_SOLVERS))
def test_every_linear_solver_solves_the_adjoint_system_through_one_interface(dtype64, name):
    # M = I - J^T with a contraction J: the adjoint system of implicit differentiation
    J = torch.randn(6, 6)
    J = 0.8 * J / torch.linalg.matrix_norm(J, ord=2)
    M = torch.eye(6) - J.T
    b = torch.randn(3, 6)
    result = get_solver(name, max_iter=300, tol=1e-12).solve(lambda u: u @ M.T, b, b)
    expected = torch.linalg.solve(M, b.T).T
    assert result.stats.all_converged
    assert torch.allclose(result.x, expected, atol=1e-9)


@pytest.mark.parametrize("name", list(BACKWARDS))
def test_backward_names_resolve_to_their_strategy(name):
    model = DEQ(denoiser=ContractiveDenoiser(), backward=name)
    assert type(model.backward) is BACKWARDS[name] and model.backward.mode == name


def test_a_new_strategy_is_one_class_and_deq_uses_it():
    class Counting(BackwardStrategy):
        name = "counting"

        def __init__(self):
            super().__init__()
            self.calls = 0

        def differentiate(self, f, x_star, guard=(), fallback=None, on_stats=None):
            self.calls += 1
            return f(x_star)

    theta = torch.tensor(0.5, requires_grad=True)
    strategy = Counting()
    model = DEQ(
        iteration=lambda x, y, p: theta * x + y,
        backward=strategy,
        tol=1e-8,
        init=lambda y, p: torch.zeros_like(y),
    )
    model(torch.ones(2, 3), None).sum().backward()
    assert strategy.calls == 1 and theta.grad is not None


def test_resolve_names_the_expected_kind_of_instance():
    with pytest.raises(ValueError, match="FixedPointSolver"):
        resolve(GMRES(), FORWARD_SOLVERS, "DEQ", "solver", FixedPointSolver)
    with pytest.raises(ValueError, match="cannot be combined"):
        resolve(GMRES(), LINEAR_SOLVERS, "ImplicitDifferentiation", "solver", GMRES, tol=1e-3)
    with pytest.raises(ValueError, match="restart"):
        ImplicitDifferentiation(solver="anderson", restart=5)  # a GMRES option


def test_failure_codes_carry_message_and_advice_into_the_warning():
    failures = [s for s in SolverStatus if s != SolverStatus.CONVERGED]
    assert all(s.message and s.advice for s in failures)
    assert len({s.advice for s in failures}) == len(failures)
    assert SolverStatus.CONVERGED.advice == ""
    theta = torch.tensor(0.99)
    model = DEQ(
        iteration=lambda x, y, p: theta * x + y,
        solver="fixed_point",
        max_iter=3,
        init=lambda y, p: torch.zeros_like(y),
    )
    with pytest.warns(RuntimeWarning) as record:
        model(torch.ones(1, 2), None)
    text = str(record[0].message)
    assert SolverStatus.MAX_ITER.message in text and SolverStatus.MAX_ITER.advice in text


def test_one_policy_raises_for_a_failed_backward_solve_too():
    theta = torch.tensor(1.0, requires_grad=True)  # I - J singular: the adjoint solve fails
    model = DEQ(
        iteration=lambda x, y, p: theta * x + 0.0 * y,
        solver="fixed_point",
        max_iter=2,
        tol=1.0,
        backward_solver="fixed_point",
        backward_max_iter=5,
        on_failure="raise",
        init=lambda y, p: torch.ones_like(y),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model(torch.ones(1, 2), None)  # the forward meets its (loose) tolerance
    with pytest.raises(RuntimeError, match="backward solve did not converge"):
        out.sum().backward()
