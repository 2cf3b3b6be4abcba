"""FSDP2-sharded curvature (issue 17, part 5): a GPT whose parameters are sharded with
``fully_shard`` over 2 gloo processes, each holding half of the data, gives the
Hessian product and the Lanczos tridiagonal of the same GPT in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

WORKER = Path(__file__).with_name("sharded_worker.py")


def test_fsdp2_sharded_equals_unsharded(tmp_path):
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", str(WORKER), str(out)]  # fmt: skip
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["local_dim"] < res["dim"]  # each rank holds a shard of the parameters
    # the ranks draw the start one parameter at a time: random_start's vector all the same
    assert res["start_max_diff"] < 1e-15
    # the finite-difference product equals the exact one to its truncation error
    assert res["product_rel_error"] < 1e-7
    # the sharded recurrence gives the one-process finite-difference tridiagonal
    np.testing.assert_allclose(res["alphas"], res["fd_alphas"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(res["betas"], res["fd_betas"], rtol=0, atol=1e-8)
    # and the exact product's, to the finite difference's error amplified by 12 steps
    np.testing.assert_allclose(res["alphas"], res["exact_alphas"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(res["betas"], res["exact_betas"], rtol=0, atol=1e-4)
    T = np.diag(res["exact_alphas"]) + np.diag(res["exact_betas"], 1)
    top = np.linalg.eigvalsh(T + np.triu(T, 1).T)[-1]
    assert abs(res["density_top"] - top) < 1e-4 * abs(top)


def test_sharded_hessian_refuses_a_model_that_is_not_sharded():
    from spectorch.sharded import ShardedHessian

    with pytest.raises(ValueError, match=r"needs torch\.distributed"):
        ShardedHessian(torch.nn.Linear(2, 2).eval(), torch.nn.MSELoss(), [])


@pytest.mark.slow
def test_density_shard_from_the_command_line(tmp_path):
    """`torchrun ... spectorch density CHECKPOINT --shard`: the tridiagonal of one
    process's finite-difference Lanczos from the same start, and a rerun resumes."""
    from spectorch.curvature import HessianOperator
    from spectorch.density import draw_generator
    from spectorch.experiments import lm
    from spectorch.linalg import lanczos

    config = lm.LMConfig(steps=1, layers=1, heads=2, width=16, context=16, batch_size=4,
                         warmup=1, text_bytes=20_000)  # fmt: skip
    lm.run(tmp_path / "run", config, checkpoint_every=1, device="cpu", progress=False)
    out = tmp_path / "density"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", "--module", "spectorch.cli", "density",
           str(tmp_path / "run"), "--shard", "--steps", "6", "--draws", "2",
           "--sequences", "16", "--out", str(out), "--quiet"]  # fmt: skip
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sharded with FSDP2 over 2 processes" in r.stdout
    found = lm.density_problem(tmp_path / "run", sequences=16)
    model = found["model"]
    op = HessianOperator(model, found["loss"], found["data"], hvp="finite-difference")
    g = draw_generator(0, 0)
    start = torch.cat([(torch.randint(0, 2, tuple(p.shape), generator=g) * 2 - 1).reshape(-1)
                       for p in model.parameters()]).double()  # fmt: skip
    reference = lanczos(op, 6, start=start).tridiagonal.numpy()
    T = np.load(out / "tridiag_0.npy")
    # float32 networks: the two reductions round differently, by ~1e-5 per product
    np.testing.assert_allclose(T, reference, rtol=0, atol=1e-3 * np.abs(reference).max())
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "2 of 2 draws already there" in r.stderr
    np.testing.assert_array_equal(np.load(out / "tridiag_0.npy"), T)
