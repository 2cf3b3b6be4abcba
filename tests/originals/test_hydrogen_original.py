"""SpIN's tests/hydrogen_test.py, translated: the original's example,
``hydrogen.train(iterations=50, batch_size=8, lr=1e-4, apply_boundary=True, neig=4,
...)``, is :func:`spectorch.experiments.hydrogen.run` with the same settings (the
original's defaults are :class:`~spectorch.experiments.hydrogen.HydrogenConfig`'s for
``objective="spin"``: RMSProp, decay 0.01, lim 50, the 64-64-64 network). Like the
original, these check that the example runs; spectorch also checks what it returns.
``laplacian_eps`` defaults to 0.1 in the original's flags; 0.0 is the exact Laplacian.
"""

from __future__ import annotations

import numpy as np
import pytest

from spectorch.experiments import hydrogen


def _train(
    tmp_path,
    *,
    iterations,
    batch_size,
    lr,
    apply_boundary,
    neig,
    laplacian_eps=0.1,
    use_pfor=True,
    per_example=False,
):
    del use_pfor, per_example  # how TensorFlow built a Jacobian; see test_spin_original.py
    cfg = hydrogen.HydrogenConfig(
        objective="spin",
        niter=iterations,
        batch_size=batch_size,
        lr=lr,
        boundary=apply_boundary,
        neig=neig,
        laplacian_eps=laplacian_eps,
    )
    result = hydrogen.run(tmp_path, cfg, progress=False, eval_samples=2000, plot_points=16)
    assert result.steps == iterations and len(result.eigenvalues) == neig
    assert np.isfinite(result.eigenvalues).all()
    assert (tmp_path / "eigenvalues.png").exists() and (tmp_path / "result.json").exists()


def test_hydrogen(tmp_path):
    _train(tmp_path, iterations=50, batch_size=8, lr=1e-4, apply_boundary=True, neig=4)


def test_hydrogen_exact_lapl(tmp_path):
    _train(
        tmp_path,
        iterations=50,
        batch_size=8,
        lr=1e-4,
        apply_boundary=True,
        neig=4,
        laplacian_eps=0.0,
    )


@pytest.mark.slow
def test_hydrogen_with_pfor_and_per_example(tmp_path):
    _train(
        tmp_path,
        iterations=50,
        batch_size=8,
        lr=1e-4,
        apply_boundary=True,
        neig=4,
        use_pfor=True,
        per_example=True,
    )


@pytest.mark.slow
def test_hydrogen_exact_lapl_with_pfor_and_per_example(tmp_path):
    _train(
        tmp_path,
        iterations=50,
        batch_size=8,
        lr=1e-4,
        apply_boundary=True,
        neig=4,
        laplacian_eps=0.0,
        use_pfor=True,
        per_example=True,
    )
