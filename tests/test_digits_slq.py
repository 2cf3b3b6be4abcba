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
