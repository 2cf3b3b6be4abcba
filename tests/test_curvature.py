"""Curvature products against dense matrices built with torch.func (float64)."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import cnn, flat_params, forward_flat, inputs_for, mlp, targets_for
from torch import nn
from torch.func import grad, hessian, jacrev

from spectorch.curvature import (
    OPERATORS,
    EmpiricalFisherOperator,
    GGNOperator,
    HessianOperator,
    make_operator,
)

RTOL = 1e-10  # float64 products against float64 dense matrices
N = 13
MODELS = {"mlp": mlp, "cnn": cnn}
LOSSES = {"ce": nn.CrossEntropyLoss, "mse": nn.MSELoss}


def _problem(model_name: str, loss_name: str):
    model = MODELS[model_name]()
    X, y = inputs_for(model_name, N), targets_for(loss_name, N)
    # uneven batches: the exact average must not depend on how the data is cut
    data = [(X[:5], y[:5]), (X[5:6], y[5:6]), (X[6:], y[6:])]
    return model, LOSSES[loss_name](), X, y, data


def _dense_hessian(model, loss, X, y):
    flat, unflatten = flat_params(model)
    return hessian(lambda t: loss(forward_flat(model, unflatten, t, X), y))(flat)


def _dense_ggn(model, loss, X, y):
    flat, unflatten = flat_params(model)
    out = forward_flat(model, unflatten, flat, X)
    J = jacrev(lambda t: forward_flat(model, unflatten, t, X))(flat).reshape(out.numel(), -1)
    HL = hessian(lambda o: loss(o, y))(out).reshape(out.numel(), out.numel())
    return J.T @ HL @ J


def _dense_fisher(model, loss, X, y):
    flat, unflatten = flat_params(model)
    g = torch.stack(
        [
            grad(
                lambda t, i=i: loss(forward_flat(model, unflatten, t, X[i : i + 1]), y[i : i + 1])
            )(flat)
            for i in range(X.shape[0])
        ]
    )
    return g.T @ g / X.shape[0]


DENSE = {"hessian": _dense_hessian, "ggn": _dense_ggn, "fisher": _dense_fisher}


def _assert_close(actual, expected):
    scale = expected.abs().max()
    assert (actual - expected).abs().max() <= RTOL * scale


KINDS = [
    ("hessian", "reverse"),
    ("hessian", "forward"),
    ("ggn", "reverse"),
    ("ggn", "forward"),
    ("fisher", None),
]


def test_kept_graphs_follow_a_replaced_parameter_or_submodule():
    # the state key walks a kept list of the modules: a Parameter object put in place
    # of another, or a new submodule, must drop the kept graphs all the same
    model, loss, X, y, data = _problem("mlp", "ce")
    op = HessianOperator(model, loss, data, cache_graphs=True)
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _assert_close(op.matvec(v), _dense_hessian(model, loss, X, y) @ v)
    model[2].weight = nn.Parameter(model[2].weight.detach() * 2.0)  # a new Parameter
    _assert_close(op.matvec(v), _dense_hessian(model, loss, X, y) @ v)
    torch.manual_seed(5)
    model[0] = nn.Linear(5, 6).double()  # a new submodule, the same parameter names
    _assert_close(op.matvec(v), _dense_hessian(model, loss, X, y) @ v)
    # and a kept graph of every batch is reused as it is while nothing changes
    before = dict(op._graphs)
    op.matvec(v)
    assert all(op._graphs[k] is before[k] for k in before)


@pytest.mark.parametrize(("kind", "hvp"), KINDS)
@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_products_equal_dense_matrix(kind, hvp, model_name, loss_name):
    model, loss, X, y, data = _problem(model_name, loss_name)
    expected = DENSE[kind](model, loss, X, y)
    op = make_operator(kind, model, loss, data, **({"hvp": hvp} if hvp else {}))
    assert op.shape == expected.shape and op.dtype == torch.float64
    _assert_close(op.to_dense(chunk=7), expected)  # matmat, vmap over probes
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _assert_close(op.matvec(v), expected @ v)  # matvec, one probe
    _assert_close(op @ v, expected @ v)


@pytest.mark.parametrize(("kind", "hvp"), [("hessian", "reverse"), ("ggn", "forward")])
def test_products_written_into_out(kind, hvp):
    model, loss, _, _, data = _problem("mlp", "ce")
    op = make_operator(kind, model, loss, data, hvp=hvp)
    g = torch.Generator().manual_seed(1)
    v = torch.randn(op.shape[0], generator=g, dtype=torch.float64)
    out = torch.full((op.shape[0],), float("nan"), dtype=torch.float64)
    assert op.matvec(v, out=out) is out  # written and returned, no stale entry left
    assert torch.equal(out, op.matvec(v))
    V = torch.randn(op.shape[0], 3, generator=g, dtype=torch.float64)
    rows = torch.full((3, op.shape[0]), float("nan"), dtype=torch.float64)
    op.matmat(V, out=rows.T)  # a transposed view, as Lanczos passes its (b, n) rows
    assert torch.equal(rows.T, op.matmat(V))
    with pytest.raises(ValueError, match=r"out must have shape \(\d+,\), dtype torch.float64"):
        op.matvec(v, out=torch.empty(op.shape[0], dtype=torch.float32))
    with pytest.raises(ValueError, match="out must not share memory"):
        op.matvec(v, out=v)
    with pytest.raises(TypeError, match=r"out must be a torch\.Tensor or None"):
        op.matvec(v, out=[0.0])


@pytest.mark.parametrize(("kind", "options", "block"), [
    ("hessian", {"cache_graphs": False}, False),
    ("hessian", {"cache_graphs": False}, True),
    ("ggn", {"hvp": "forward"}, False),
])  # fmt: skip
def test_compiled_products_equal_dense_matrix(kind, options, block):
    # the Hessian on two batch sizes: one compiled program each (the second with a
    # dynamic batch size), the same exact average; the block's vmapped program and the
    # GGN on one batch (compiling costs seconds per program)
    model, loss, X, y, _ = _problem("mlp", "ce")
    two = kind == "hessian" and not block
    data = [(X[:6], y[:6]), (X[6:], y[6:])] if two else [(X, y)]
    expected = DENSE[kind](model, loss, X, y)
    op = make_operator(kind, model, loss, data, compile=True, **options)
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager warns
        _assert_close(op.matvec(v), expected @ v)
        if block:
            V = torch.randn(op.shape[0], 3, generator=torch.Generator().manual_seed(1))
            _assert_close(op.matmat(V.double()), expected @ V.double())
    assert op.compiled and op.compile_error is None and op.describe()["compile"] is True
    assert sorted(op._programs) == (["block", "single"] if block else ["single"])
    # the products go through the compiled program, not the eager route
    calls = []
    program = op._programs["single"]
    op._programs["single"] = lambda *args: calls.append(1) or program(*args)
    op.matvec(v)
    assert len(calls) == len(data)
    # the parameters are the program's inputs: a step of an optimiser changes the products
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    eager = make_operator(kind, model, loss, data, **options)
    _assert_close(op.matvec(v), eager.matvec(v))
    assert len(calls) == 2 * len(data)


def test_compile_failure_falls_back_to_eager_and_says_so(monkeypatch):
    model, loss, X, y, data = _problem("mlp", "ce")
    expected = _dense_hessian(model, loss, X, y)

    def broken(fn, **options):
        def run(*args):
            raise RuntimeError("no C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    op = HessianOperator(model, loss, data, cache_graphs=False, compile=True)
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no C\\+\\+ compiler"):
        _assert_close(op.matvec(v), expected @ v)
    assert not op.compiled and "no C++ compiler" in op.compile_error
    assert op.describe()["compile"].startswith("failed, eager (RuntimeError: no C++")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # eagerly from then on, no second warning
        _assert_close(op.matvec(v), expected @ v)


def test_compile_argument_is_checked():
    model, loss, _, _, data = _problem("mlp", "ce")
    with pytest.raises(TypeError, match="compile must be True or False, got 'yes'"):
        HessianOperator(model, loss, data, compile="yes")
    with pytest.raises(ValueError, match="compile=True goes with hvp='reverse' or 'forward'"):
        HessianOperator(model, loss, data, hvp="finite-difference", compile=True)


def test_ggn_equals_hessian_for_linear_model_with_mse():
    torch.manual_seed(0)
    model = nn.Linear(4, 2).double()
    X = torch.randn(9, 4, dtype=torch.float64)
    data = [(X, torch.randn(9, 2, dtype=torch.float64))]
    H = HessianOperator(model, nn.MSELoss(), data).to_dense()
    G = GGNOperator(model, nn.MSELoss(), data).to_dense()
    _assert_close(G, H)


def test_parameter_without_curvature_gets_zero_rows():
    # an unused parameter has no gradient at all: zero rows and columns, no error
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    model.register_parameter("unused", nn.Parameter(torch.ones(2, dtype=torch.float64)))
    X = torch.randn(6, 3, dtype=torch.float64)
    data = [(X, torch.randn(6, 2, dtype=torch.float64))]
    for hvp in ("reverse", "forward"):
        dense = HessianOperator(model, nn.MSELoss(), data, hvp=hvp).to_dense()
        assert dense.shape == (10, 10)  # "unused" comes first in named_parameters()
        assert torch.all(dense[:2] == 0) and torch.all(dense[:, :2] == 0)
        used = HessianOperator(model, nn.MSELoss(), data, params=["0.weight", "0.bias"])
        _assert_close(dense[2:, 2:], used.to_dense())


def test_sum_reduction_scales_by_dataset_size():
    model, _, X, y, data = _problem("mlp", "ce")
    mean = HessianOperator(model, nn.CrossEntropyLoss(), data).to_dense()
    total = HessianOperator(model, nn.CrossEntropyLoss(reduction="sum"), data).to_dense()
    _assert_close(total, N * mean)
    fisher_sum = EmpiricalFisherOperator(model, nn.CrossEntropyLoss(reduction="sum"), data)
    _assert_close(fisher_sum.to_dense(), N * _dense_fisher(model, nn.CrossEntropyLoss(), X, y))


def test_plain_function_loss_and_parameter_subset():
    model, _, X, y, data = _problem("mlp", "ce")
    op = HessianOperator(
        model, torch.nn.functional.cross_entropy, data, params=["2.weight", "2.bias"]
    )
    full = _dense_hessian(model, nn.CrossEntropyLoss(), X, y)
    P = full.shape[0]
    k = 6 * 3 + 3
    assert op.shape == (k, k)
    _assert_close(op.to_dense(), full[P - k :, P - k :])


def test_float32_network_accumulates_in_float64():
    model, loss, X, y, data = _problem("mlp", "ce")
    expected = _dense_hessian(model, loss, X, y)
    model32 = model.float()
    data32 = [(a.float(), b) for a, b in data]
    op = HessianOperator(model32, loss, data32)
    assert op.dtype == torch.float64
    v = torch.ones(op.shape[0], dtype=torch.float64)
    err = (op.matvec(v) - expected @ v).abs().max() / (expected @ v).abs().max()
    assert err < 1e-5  # float32 network round-off


def test_train_mode_with_batchnorm_or_dropout_is_refused():
    X, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 2, (8,))
    for layer in (nn.BatchNorm1d(4), nn.Dropout(0.1)):
        model = nn.Sequential(nn.Linear(4, 4), layer, nn.Linear(4, 2)).double().train()
        with pytest.raises(
            ValueError, match=r"train mode with .*model\.eval\(\).*train_mode='allow'"
        ):
            HessianOperator(model, nn.CrossEntropyLoss(), [(X, y)])
        HessianOperator(model, nn.CrossEntropyLoss(), [(X, y)], train_mode="allow")
        op = HessianOperator(model.eval(), nn.CrossEntropyLoss(), [(X, y)])
        model.train()  # switched back after construction: the product refuses too
        with pytest.raises(ValueError, match="train mode"):
            op.matvec(torch.ones(op.shape[0], dtype=torch.float64))


def test_train_mode_without_stochastic_layers_is_fine():
    model = mlp().train()
    HessianOperator(model, nn.CrossEntropyLoss(), [(inputs_for("mlp", 4), targets_for("ce", 4))])


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (iter([]), TypeError, "one-shot iterator"),
        (torch.ones(3), TypeError, "re-iterable collection"),
        ([], ValueError, "data yielded no batches"),
        ([(torch.ones(2, 5, dtype=torch.float64),)], ValueError, "each batch must be an"),
        (
            [(torch.ones(2, 7, dtype=torch.float64), torch.zeros(2, dtype=torch.long))],
            ValueError,
            "could not be evaluated on the first batch",
        ),
    ],
)
def test_bad_data(data, error, match):
    with pytest.raises(error, match=match):
        HessianOperator(mlp(), nn.CrossEntropyLoss(), data)


def test_bad_arguments():
    data = [(inputs_for("mlp", 4), targets_for("ce", 4))]
    with pytest.raises(
        ValueError, match=r"unknown operator 'hesian'; choose one of \['fisher', 'ggn', 'hessian'\]"
    ):
        make_operator("hesian", mlp(), nn.CrossEntropyLoss(), data)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        HessianOperator(lambda x: x, nn.CrossEntropyLoss(), data)
    with pytest.raises(ValueError, match=r"hvp must be one of \['forward', 'reverse'\]"):
        HessianOperator(mlp(), nn.CrossEntropyLoss(), data, hvp="backward")
    with pytest.raises(ValueError, match="reduction must be one of"):
        HessianOperator(mlp(), torch.nn.functional.cross_entropy, data, reduction="none")
    with pytest.raises(ValueError, match="contradicts the loss's own reduction"):
        HessianOperator(mlp(), nn.CrossEntropyLoss(), data, reduction="sum")
    with pytest.raises(ValueError, match="not parameters of the model"):
        HessianOperator(mlp(), nn.CrossEntropyLoss(), data, params=["nope"])
    with pytest.raises(ValueError, match="loss_fn must return a scalar"):
        HessianOperator(
            mlp(), lambda o, t: nn.functional.cross_entropy(o, t, reduction="none"), data
        )
    op = HessianOperator(mlp(), nn.CrossEntropyLoss(), data)
    with pytest.raises(ValueError, match=r"v must have shape \(57,\), got \(3,\)"):
        op.matvec(torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"V must have shape \(57, k\)"):
        op.matmat(torch.ones(3, 2, dtype=torch.float64))
    assert set(OPERATORS) == {"hessian", "ggn", "fisher"}


def test_non_finite_batch_is_named():
    X = inputs_for("mlp", 6)
    y = targets_for("ce", 6)
    bad = X.clone()
    bad[0, 0] = float("inf")
    op = HessianOperator(mlp(), nn.CrossEntropyLoss(), [(X, y), (bad, y)])
    with pytest.raises(FloatingPointError, match="product of batch 1 has NaN or inf"):
        op.matvec(torch.ones(op.shape[0], dtype=torch.float64))


def test_scipy_view_and_describe():
    model, loss, X, y, data = _problem("mlp", "mse")
    op = GGNOperator(model, loss, data)
    import numpy as np

    x = np.linspace(-1, 1, op.shape[0])
    expected = _dense_ggn(model, loss, X, y).numpy() @ x
    np.testing.assert_allclose(
        op.to_scipy() @ x, expected, rtol=0, atol=1e-12 * abs(expected).max()
    )
    assert op.describe()["operator"] == "ggn" and op.describe()["parameters"] == op.shape[0]


def test_cached_graphs_give_the_same_products_and_follow_the_model():
    model, loss, X, y, data = _problem("cnn", "ce")
    op = HessianOperator(model, loss, data, cache_graphs=True)
    expected = _dense_hessian(model, loss, X, y)
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for _ in range(2):  # the second product reuses the graphs
        _assert_close(op.matvec(v), expected @ v)
    assert len(op._graphs) == len(data)
    _assert_close(op.to_dense(chunk=5), expected)
    with torch.no_grad():  # an optimiser step: the cache must not serve stale graphs
        for p in model.parameters():
            p.mul_(1.5)
    _assert_close(op.matvec(v), _dense_hessian(model, loss, X, y) @ v)


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_kept_linearisations_equal_dense_matrix(model_name, loss_name):
    model, loss, X, y, data = _problem(model_name, loss_name)
    op = HessianOperator(model, loss, data, hvp="forward", cache_graphs=True)
    expected = _dense_hessian(model, loss, X, y)
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for _ in range(2):  # the second product runs the kept linearisations
        _assert_close(op.matvec(v), expected @ v)
    assert len(op._graphs) == len(data) and op.cache_bytes > 0
    _assert_close(op.to_dense(chunk=5), expected)  # blocks of probes
    if loss_name == "mse":  # make_fx cannot trace mse_loss's forward-mode rule
        assert op._reverse and not op._linear_programs
        return
    # batches of 5, 1 and 7 rows: one trace per shape, the kept values per batch
    assert not op._reverse and len(op._linear_programs) == 3
    with torch.no_grad():  # an optimiser step: new values, the same traces
        for p in model.parameters():
            p.mul_(1.5)
    _assert_close(op.matvec(v), _dense_hessian(model, loss, X, y) @ v)
    assert len(op._linear_programs) == 3


def test_kept_linearisations_of_a_causal_lm_and_of_batchnorm():
    from spectorch.curvature import CausalLM
    from spectorch.nn import GPT, GPTConfig

    torch.manual_seed(0)
    lm = GPT(GPTConfig(n_positions=6, n_layer=1, n_head=2, n_embd=8)).double().eval()
    ids = torch.randint(0, 256, (5, 6))
    data = [ids[:3], ids[3:]]
    expected = HessianOperator(lm, CausalLM(), data, cache_graphs=False)
    kept = HessianOperator(lm, CausalLM(), data, hvp="forward", cache_graphs=True)
    V = torch.randn(kept.shape[0], 3, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)  # fmt: skip
    reference = expected.matmat(V)
    for _ in range(2):
        _assert_close(kept.matmat(V), reference)
    assert kept.linearize_error is None and "cache_graphs" not in kept.describe()
    # eval-mode BatchNorm: its running statistics are inputs of the trace, not constants
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2))
    model = model.double().eval()
    X, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,))
    op = HessianOperator(model, nn.CrossEntropyLoss(), [(X, y)], hvp="forward",
                         cache_graphs=True)  # fmt: skip
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _assert_close(op.matvec(v), _dense_hessian(model, nn.CrossEntropyLoss(), X, y) @ v)
    with torch.no_grad():  # new running statistics, parameters untouched
        model[1].running_mean.add_(0.5)
        model[1].running_var.mul_(2.0)
    _assert_close(op.matvec(v), _dense_hessian(model, nn.CrossEntropyLoss(), X, y) @ v)


def test_untraceable_model_gets_eager_products_and_says_so():
    class Branchy(nn.Module):  # control flow on a value: make_fx cannot trace it
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            h = self.lin(x)
            return h.tanh() if float(h.detach().sum()) > 0 else h.sin()

    torch.manual_seed(0)
    model = Branchy().double()
    X, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    op = HessianOperator(model, nn.CrossEntropyLoss(), [(X, y)], hvp="forward",
                         cache_graphs=True)  # fmt: skip
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="could not be traced"):
        hv = op.matvec(v)
    _assert_close(hv, _dense_hessian(model, nn.CrossEntropyLoss(), X, y) @ v)
    assert not op.caching and not op._graphs
    assert op.describe()["cache_graphs"].startswith("failed, not kept")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        _assert_close(op.matvec(v), hv)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", sorted(OPERATORS))
def test_cuda_products_equal_cpu(kind):
    model, loss, X, y, data = _problem("cnn", "ce")
    expected = DENSE[kind](model, loss, X, y)
    cuda_data = [(a.cuda(), b.cuda()) for a, b in data]
    op = make_operator(kind, model.cuda(), loss, cuda_data)
    _assert_close(op.to_dense().cpu(), expected)


class _CountingData(list):
    """A list of batches that counts how often it is read."""

    reads = 0

    def __iter__(self):
        type(self).reads += 1
        return super().__iter__()


def _sliced_problem(batches: int, size: int = 64, clone: bool = False):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 5)
    ).double()
    X = torch.randn(batches * size, 16, dtype=torch.float64)
    y = torch.randint(0, 5, (batches * size,))
    data = [(X[i : i + size], y[i : i + size]) for i in range(0, batches * size, size)]
    if clone:
        data = [(a.clone(), b.clone()) for a, b in data]
    return model, data


def test_cache_counts_a_slice_of_the_data_by_its_bytes():
    # batches that are slices of one data tensor count as their slices: the same
    # bytes as batches that own their memory, and linear in the number of batches
    # (counting each slice as the whole tensor grew as batches² and stopped "auto"
    # caching early)
    counts = {}
    for batches, clone in ((1, False), (8, False), (8, True)):
        model, data = _sliced_problem(batches, clone=clone)
        op = HessianOperator(model, torch.nn.CrossEntropyLoss(), data, cache_graphs=True)
        op.matvec(torch.ones(op.shape[0], dtype=torch.float64))
        counts[batches, clone] = op.cache_bytes
    assert counts[8, False] == counts[8, True] == 8 * counts[1, False]
    # the inputs and activations are in it, the parameters are not
    assert counts[1, False] >= 64 * (16 + 32 + 32) * 8


def test_cache_count_matches_the_saved_tensors():
    # the graph walk finds what saved-tensor hooks see, less what the first backward
    # pass freed (the loss node's own saved tensors)
    model, data = _sliced_problem(1)
    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), data, cache_graphs=True)
    op.matvec(torch.ones(op.shape[0], dtype=torch.float64))
    params = list(model.parameters())
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    skip = {p.untyped_storage().data_ptr() for p in params}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(data[0][0]), data[0][1], reduction="sum")
        torch.autograd.grad(loss, params, create_graph=True)
    hooked = sum(v for k, v in seen.items() if k not in skip)
    assert 0.9 * hooked <= op.cache_bytes <= hooked


def test_one_cache_budget_for_all_live_operators():
    import gc

    model, data = _sliced_problem(4)
    loss = torch.nn.CrossEntropyLoss()
    v = torch.ones(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    first = HessianOperator(model, loss, data)
    first.matvec(v)
    assert first.caching and first.cache_bytes > 0
    # a second operator whose budget holds its own graphs but not both
    second = HessianOperator(model, loss, data)
    second._budget = first.cache_bytes + first.cache_bytes // 2
    second.matvec(v)
    assert not second.caching and second.cache_bytes == 0 and first.caching
    del first
    gc.collect()
    third = HessianOperator(model, loss, data)
    third._budget = second._budget
    torch.testing.assert_close(third.matvec(v), second.matvec(v), rtol=1e-12, atol=1e-14)
    assert third.caching


def test_cgroup_limit_caps_the_available_memory(tmp_path, monkeypatch):
    from spectorch.curvature import _operators as ops

    assert ops._cgroup_room(str(tmp_path)) is None  # no cgroup files
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("1000\n")
    assert ops._cgroup_room(str(tmp_path)) is None  # v2 without a limit
    (tmp_path / "memory.max").write_text("5000\n")
    assert ops._cgroup_room(str(tmp_path)) == 4000
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(2**63 - 4096))
    (v1 / "memory" / "memory.usage_in_bytes").write_text("100")
    assert ops._cgroup_room(str(v1)) is None  # v1's "no limit"
    (v1 / "memory" / "memory.limit_in_bytes").write_text("300")
    assert ops._cgroup_room(str(v1)) == 200
    monkeypatch.setattr(ops, "_cgroup_room", lambda: 12345)
    assert ops._available_memory(torch.device("cpu")) == 12345
    assert ops._cache_budget(torch.device("cpu")) == (12345 + ops._held_by_caches()) // 4


def test_auto_cache_reads_the_data_once_and_respects_its_budget():
    model, loss, X, y, data = _problem("mlp", "ce")
    expected = _dense_hessian(model, loss, X, y)
    v = torch.randn(
        expected.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    counted = _CountingData(data)
    op = HessianOperator(model, loss, counted)  # cache_graphs="auto" by default
    before = _CountingData.reads
    for _ in range(3):
        _assert_close(op.matvec(v), expected @ v)
    assert op.caching and _CountingData.reads == before + 1  # later products skip the data
    assert op.cache_bytes > 0

    tight = HessianOperator(model, loss, data)
    tight._budget = 1  # no graph fits: "auto" gives up and computes afresh
    _assert_close(tight.matvec(v), expected @ v)
    assert not tight.caching and not tight._graphs
    _assert_close(tight.matvec(v), expected @ v)
    off = HessianOperator(model, loss, data, cache_graphs=False)
    _assert_close(off.matvec(v), expected @ v)
    assert not off._graphs
    with pytest.raises(ValueError, match="cache_graphs must be True, False or 'auto'"):
        HessianOperator(model, loss, data, cache_graphs="yes")


def test_kept_graphs_follow_batchnorm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2))
    model = model.double().eval()
    X = torch.randn(10, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (10,))
    op = HessianOperator(model, nn.CrossEntropyLoss(), [(X, y)], cache_graphs=True)
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    op.matvec(v)
    with torch.no_grad():  # new running statistics, parameters untouched
        model[1].running_mean.add_(0.5)
        model[1].running_var.mul_(2.0)
    _assert_close(op.matvec(v), _dense_hessian(model, nn.CrossEntropyLoss(), X, y) @ v)


@pytest.mark.parametrize(
    ("operator", "kwargs"),
    [
        (HessianOperator, {"cache_graphs": True}),
        (HessianOperator, {"cache_graphs": False}),
        (HessianOperator, {"hvp": "forward"}),
        (GGNOperator, {}),
        (EmpiricalFisherOperator, {}),
    ],
)
def test_eval_batchnorm_as_an_affine_map_gives_the_same_curvature(operator, kwargs, monkeypatch):
    from spectorch.curvature import _operators as ops

    calls = []
    affine = ops._affine_batchnorm

    def counted(self, x):
        calls.append(x.shape)
        return affine(self, x)

    monkeypatch.setattr(ops, "_affine_batchnorm", counted)
    # kept graphs run eval-mode BatchNorm as its affine map; the dense reference runs
    # the module's own forward
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
        nn.Flatten(), nn.Linear(3 * 4 * 4, 3),
    ).double()  # fmt: skip
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    model.eval()
    X = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    loss = nn.CrossEntropyLoss()
    dense = {
        HessianOperator: _dense_hessian,
        GGNOperator: _dense_ggn,
        EmpiricalFisherOperator: _dense_fisher,
    }[operator](model, loss, X, y)
    op = operator(model, loss, [(X[:4], y[:4]), (X[4:], y[4:])], **kwargs)
    torch.testing.assert_close(op.to_dense(), dense, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.to_dense(), dense, rtol=1e-10, atol=1e-12)  # kept
    assert "forward" not in vars(model[1])  # the module's own forward is back
    assert bool(calls) == (kwargs.get("cache_graphs") is True)  # folded in kept graphs only


class _ActivationNet(nn.Module):
    """GELU both ways (``nn.GELU`` with the tanh approximation, ``F.gelu`` exact) and
    SiLU (``nn.SiLU``, and ``F.silu`` in place, which is left alone)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 5), nn.Linear(5, 4), nn.Linear(4, 4)
        self.d = nn.Linear(4, 3)
        self.act = nn.GELU(approximate="tanh")

    def forward(self, x):
        h = nn.functional.gelu(self.b(self.act(self.a(x))))
        return self.d(nn.functional.silu(nn.SiLU()(self.c(h)), inplace=True))


@pytest.mark.parametrize("kind", ["gelu", "gelu-tanh", "silu"])
def test_activation_derivatives_in_closed_form(kind):
    """f' and f'' against autograd's, and the second derivative of the rewritten
    activation against finite differences (gradgradcheck); float64, then bfloat16."""
    from spectorch.curvature import _activations as act

    x = torch.linspace(-6, 6, 241, dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(act._FORWARD[kind](x).sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    ours = act._DERIVATIVES[kind](x)
    torch.testing.assert_close(ours[0], d1.detach(), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(ours[1], d2, rtol=1e-12, atol=1e-13)  # |f''| <= 0.8
    assert torch.autograd.gradgradcheck(lambda t: act._Activation.apply(t, kind), (x[::20],))
    low = act._DERIVATIVES[kind](x.detach().bfloat16())
    assert low[0].dtype == low[1].dtype == torch.bfloat16
    torch.testing.assert_close(low[1].double(), d2, rtol=0.02, atol=0.02)
    with pytest.raises(ValueError, match="approximate must be"):
        act.gelu_derivatives(x, "erf")


@pytest.mark.parametrize("cache_graphs", [True, False])
def test_closed_form_activations_give_the_exact_hessian(cache_graphs):
    """With closed_form="auto" (the default) the graphs differentiated twice run GELU
    and SiLU as the rewrite (the kept graph holds its nodes, and the in-place SiLU
    keeps autograd's); the Hessian equals torch.func's dense one, as with
    closed_form=False, which keeps autograd's double backward. A model without them
    stops looking after its first graph."""
    torch.manual_seed(0)
    model = _ActivationNet().double()
    X, y = torch.randn(N, 3, dtype=torch.float64), torch.randint(0, 3, (N,))
    loss = nn.CrossEntropyLoss()
    dense = _dense_hessian(model, loss, X, y)
    data = [(X[:6], y[:6]), (X[6:], y[6:])]
    op = HessianOperator(model, loss, data, cache_graphs=cache_graphs)
    torch.testing.assert_close(op.to_dense(), dense, rtol=1e-12, atol=1e-13)
    assert op._closed_activations is True
    plain = HessianOperator(model, loss, data, cache_graphs=cache_graphs, closed_form=False)
    torch.testing.assert_close(plain.to_dense(), dense, rtol=1e-12, atol=1e-13)
    assert plain._closed_activations is None  # never looked
    if cache_graphs:

        def kinds(o):  # how many nodes of each kind the kept graphs hold
            seen, stack = set(), [g.grad_fn for _, gs, _, _ in o._graphs.values() for g in gs]
            while stack:
                node = stack.pop()
                if node is not None and node not in seen:
                    seen.add(node)
                    stack.extend(fn for fn, _ in node.next_functions)
            names = [type(node).__name__ for node in seen]
            return {k: names.count(k) // len(o._graphs) for k in set(names)}

        ours, theirs = kinds(op), kinds(plain)
        assert ours["_ActivationGradBackward"] == 3  # two GELUs, nn.SiLU
        assert "GeluBackward0" not in ours and ours["SiluBackward0"] == 1  # in place
        assert theirs["GeluBackward0"] == 2 and theirs["SiluBackward0"] == 2
    relu = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    other = HessianOperator(relu, loss, data, cache_graphs=cache_graphs)
    other.to_dense()
    assert other._closed_activations is False


def test_closed_form_gelu_in_a_gpt():
    """spectorch's GPT (F.gelu with the tanh approximation): the same products with
    the rewrite as with autograd's double backward, kept graphs and not."""
    from spectorch.curvature import CausalLM
    from spectorch.nn import GPT, GPTConfig

    torch.manual_seed(0)
    lm = GPT(GPTConfig(n_positions=6, n_layer=2, n_head=2, n_embd=8)).double().eval()
    ids = torch.randint(0, 256, (5, 6))
    data = [ids[:3], ids[3:]]
    V = torch.randn(sum(p.numel() for p in lm.parameters()), 2, dtype=torch.float64)
    plain = HessianOperator(lm, CausalLM(), data, closed_form=False).matmat(V)
    for cache_graphs in (True, False):
        op = HessianOperator(lm, CausalLM(), data, cache_graphs=cache_graphs)
        torch.testing.assert_close(op.matmat(V), plain, rtol=1e-12, atol=1e-13)
        assert op._closed_activations is True
