"""Per-block curvature (issue 17): parameter selections, block operators equal to the
dense principal sub-matrices, and block densities with their figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from spectorch.curvature import (
    CausalLM,
    EmpiricalFisherOperator,
    GGNOperator,
    HessianOperator,
    parameter_blocks,
    select_parameters,
)
from spectorch.density import spectral_density

F64 = torch.float64


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)
    ).to(F64)


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, 3, dtype=F64, generator=g)
    y = torch.randint(0, 2, (24,), generator=g)
    return [(x[:10], y[:10]), (x[10:], y[10:])]


def test_selections_by_name_glob_type_and_predicate():
    model = _mlp()
    assert select_parameters(model, "0.weight") == ["0.weight"]
    assert select_parameters(model, "*.bias") == ["0.bias", "2.bias", "4.bias"]
    assert select_parameters(model, nn.Linear) == [n for n, _ in model.named_parameters()]
    assert select_parameters(model, lambda n, p: p.ndim == 2) == [
        "0.weight",
        "2.weight",
        "4.weight",
    ]
    assert select_parameters(model, ["4.*", "0.weight"]) == ["0.weight", "4.weight", "4.bias"]
    with pytest.raises(ValueError, match=r"selects no trainable parameter; names look like"):
        select_parameters(model, "attn.*")
    assert list(parameter_blocks(model, "modules")) == ["0", "2", "4"]
    assert parameter_blocks(model, "parameters")["2.bias"] == ["2.bias"]
    assert parameter_blocks(model, {"first": "0.*", "weights": "*.weight"})["weights"] == [
        "0.weight",
        "2.weight",
        "4.weight",
    ]
    with pytest.raises(ValueError, match="unknown preset"):
        parameter_blocks(model, "heads")
    with pytest.raises(ValueError, match="used twice"):
        parameter_blocks(model, {"full": "0.*"})


def _coordinates(model, names):
    """Indices of ``names``' entries in the flat vector of all parameters."""
    idx, start = [], 0
    for n, p in model.named_parameters():
        if n in names:
            idx.extend(range(start, start + p.numel()))
        start += p.numel()
    return torch.tensor(idx)


@pytest.mark.parametrize("operator", [HessianOperator, GGNOperator, EmpiricalFisherOperator])
def test_a_block_is_the_dense_principal_submatrix(operator):
    model, data = _mlp(), _data()
    full = operator(model, nn.CrossEntropyLoss(), data)
    dense = full.to_dense()
    for spec in ("2.*", ["0.weight", "4.bias"], nn.Linear):
        block = full.restrict(spec)
        idx = _coordinates(model, block.param_names)
        torch.testing.assert_close(block.to_dense(), dense[idx][:, idx], rtol=1e-12, atol=1e-14)
        # a product is a value: not tied to a graph through the parameters held fixed
        v = torch.ones(block.shape[0], dtype=torch.float64)
        assert not block.matvec(v).requires_grad
        assert not block.matmat(torch.ones(block.shape[0], 2, dtype=torch.float64)).requires_grad
    # the settings carry over
    if operator is HessianOperator:
        h = HessianOperator(model, nn.CrossEntropyLoss(), data, hvp="forward", cache_graphs=False)
        assert h.restrict("0.*")._settings["hvp"] == "forward"
    with pytest.raises(ValueError, match="not among this operator's parameters"):
        operator(model, nn.CrossEntropyLoss(), data, params="0.*").restrict("2.*")


def test_attention_blocks_of_a_language_model():
    """A block's product is the full product of the block's vector padded with zeros,
    read on the block's coordinates: (H [v; 0])_block = H_block v."""
    from test_objectives import TinyLM, _padded, _sequences

    torch.manual_seed(0)
    lm = TinyLM().to(F64)
    for operator in (HessianOperator, GGNOperator):
        full = operator(lm, CausalLM(), [_padded(_sequences())])
        for spec in ("qkv.*", ["embed.weight", "pos"]):
            block = full.restrict(spec)
            idx = _coordinates(lm, block.param_names)
            v = torch.randn(len(idx), 3, dtype=F64, generator=torch.Generator().manual_seed(4))
            padded = torch.zeros(full.shape[0], 3, dtype=F64)
            padded[idx] = v
            torch.testing.assert_close(
                block.matmat(v), full.matmat(padded)[idx], rtol=1e-12, atol=1e-14
            )


def test_block_densities_are_written_resumed_and_drawn(tmp_path):
    from spectorch.plotting import plot_block_densities

    model, data = _mlp(), _data()
    H = HessianOperator(model, nn.CrossEntropyLoss(), data)
    out = tmp_path / "run"
    kw = dict(steps=12, draws=2, progress=False, out=out)
    dens = spectral_density(H, blocks="modules", **kw)
    assert list(dens) == ["full", "0", "2", "4"]
    assert dens["full"].dim == H.shape[0] and dens["4"].dim == 10
    assert dens["4"].steps == 10  # a block of 10 parameters runs 10 steps, not 12
    manifest = json.loads((out / "blocks" / "4" / "manifest.json").read_text())
    assert manifest["block"] == "4" and manifest["steps_requested"] == 12
    assert manifest["params"] == ["4.weight", "4.bias"]
    # a full Krylov space of the 10-dimensional block: every distinct eigenvalue of the
    # dense sub-matrix is a Ritz value, and every Ritz value an eigenvalue
    exact = torch.linalg.eigvalsh(H.restrict("4.*").to_dense()).numpy()
    ritz, tol = dens["4"].nodes[0], 1e-9 * np.abs(exact).max()
    assert np.abs(ritz[:, None] - exact[None, :]).min(axis=0).max() < tol
    assert np.abs(ritz[:, None] - exact[None, :]).min(axis=1).max() < tol
    again = spectral_density(H, blocks="modules", **kw)  # resumed: same numbers
    for k in dens:
        np.testing.assert_array_equal(again[k].nodes[0], dens[k].nodes[0])
    png = plot_block_densities(dens, tmp_path / "blocks.png", title="blocks")
    assert png.stat().st_size > 10_000
    with pytest.raises(ValueError, match="blocks need a curvature operator"):
        spectral_density(torch.eye(4, dtype=F64), blocks="modules", steps=2, progress=False)


def test_js_distance_is_zero_for_equal_spectra_and_one_for_disjoint_ones():
    from spectorch.density import SpectralDensity, js_distance, js_distances

    w = [np.full(4, 0.25)]
    a = SpectralDensity([np.array([0.0, 1.0, 2.0, 3.0])], w, dim=4)
    b = SpectralDensity([np.array([100.0, 101.0, 102.0, 103.0])], w, dim=4)
    c = SpectralDensity([np.array([0.0, 1.0, 2.0, 3.5])], w, dim=4)
    assert js_distance(a, a) == 0.0
    assert js_distance(a, b) > 0.999  # no overlap: the largest distance, 1 in base 2
    assert js_distance(a, c) == pytest.approx(js_distance(c, a), abs=1e-15)
    assert 0 < js_distance(a, c) < js_distance(a, b)
    summary = js_distances({"a": a, "b": b, "c": c})
    assert set(summary["pairs"]) == {"a | b", "a | c", "b | c"}
    assert summary["mean"] == pytest.approx(np.mean(list(summary["pairs"].values())))
