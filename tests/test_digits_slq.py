"""The acceptance test of SLQ: a ~2,000-parameter MLP trained on digits, against its
exact Hessian spectrum (float64, 1,960 × 1,960 eigendecomposition)."""

from __future__ import annotations

import pytest
import torch

from spectorch.curvature import HessianOperator
from spectorch.density import spectral_density
from spectorch.experiments.digits import digits_problem

W1_TOL = 0.01  # Wasserstein-1 between the CDFs, as a share of the spectral range
TOP_TOL = 1e-6  # relative error of the largest eigenvalue
TRACE_TOL = 0.05  # relative error of the trace


@pytest.fixture(scope="module")
def problem():
    model, loss, data = digits_problem(dtype=torch.float64)
    op = HessianOperator(model, loss, data)
    exact = torch.linalg.eigvalsh(op.to_dense())
    return op, exact


def test_model_has_about_two_thousand_parameters(problem):
    op, _ = problem
    assert 1900 <= op.shape[0] <= 2100


def test_slq_matches_exact_hessian_spectrum(problem):
    op, exact = problem
    dens = spectral_density(op, steps=90, draws=10, seed=0, probes_per_pass=5, progress=False)
    span = float(exact[-1] - exact[0])
    assert dens.wasserstein(exact) <= W1_TOL * span
    top = float(exact[-1])
    assert abs(dens.top_eigenvalues(1)[0] - top) <= TOP_TOL * abs(top)
    trace = float(exact.sum())
    assert abs(dens.trace().value - trace) <= TRACE_TOL * abs(trace)
    # the deflated estimator is what makes 10 draws enough: plain Hutchinson's
    # standard error on this spectrum is an order of magnitude larger
    assert dens.trace().stderr * 10 < dens.trace("quadrature").stderr


@pytest.mark.parametrize(
    ("reorth", "basis"), [("full", "memory"), ("partial", "memory"), ("partial", "float32")]
)
def test_slq_of_a_float32_network(reorth, basis):
    # The same network in float32, as users run it: both reorthogonalisations keep
    # the spectrum's edge (partial's estimates follow the network's float32
    # round-off; with float64's it skipped its passes and made ghost eigenvalues
    # up to 19x the largest) and the density as close as float64's; so does partial
    # reorthogonalisation against float32 rows, whose estimates restart at their
    # rounding after a pass.
    model, loss, data = digits_problem(dtype=torch.float32)
    op = HessianOperator(model, loss, data)
    exact = torch.linalg.eigvalsh(op.to_dense().to(torch.float64))
    dens = spectral_density(
        op, steps=90, draws=10, seed=0, reorth=reorth, basis=basis, progress=False
    )
    top = float(exact[-1])
    ritz = torch.cat([torch.as_tensor(x) for x in dens.nodes])
    assert (ritz <= top * (1 + 1e-5)).all()
    assert abs(dens.top_eigenvalues(1)[0] - top) <= 1e-5 * abs(top)
    assert dens.wasserstein(exact) <= W1_TOL * float(exact[-1] - exact[0])
    trace = float(exact.sum())
    assert abs(dens.trace().value - trace) <= TRACE_TOL * abs(trace)
