"""Any batch, any loss (issue 17): the curvature of a causal language model averages
over its predicted tokens, so the same data cut into batches of other lengths and
paddings gives the same products, equal to the exact ones of the whole dataset."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from spectorch.curvature import (
    BatchLoss,
    CausalLM,
    EmpiricalFisherOperator,
    GGNOperator,
    HessianOperator,
    Supervised,
)

F64 = torch.float64
VOCAB, WIDTH = 11, 6


class TinyLM(nn.Module):
    """Embedding, one causal self-attention layer, a read-out; float64. Returns an
    object with ``.logits`` (as a HuggingFace model) when ``wrap`` is set."""

    def __init__(self, wrap: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.pos = nn.Parameter(torch.randn(16, WIDTH) * 0.3)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.out = nn.Linear(WIDTH, VOCAB)
        self.wrap = wrap

    def forward(self, input_ids, attention_mask=None):
        del attention_mask  # right padding and causal attention: pads are never seen
        n = input_ids.shape[1]
        h = self.embed(input_ids) + self.pos[:n]
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(WIDTH)
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        h = h + torch.tanh(scores.softmax(-1) @ v)
        logits = self.out(h)
        return SimpleNamespace(logits=logits) if self.wrap else logits


def _model(wrap=False):
    torch.manual_seed(0)
    return TinyLM(wrap).to(F64)


def _sequences():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, VOCAB, (n,), generator=g) for n in (3, 7, 5, 8, 2)]


def _padded(seqs):
    """One dict batch, right-padded with token 0; pads ignored in the labels."""
    n = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), n, dtype=torch.long)
    mask = torch.zeros(len(seqs), n, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _layouts(seqs):
    return {
        "one sequence per batch": [s[None] for s in seqs],
        "all padded together": [_padded(seqs)],
        "two padded batches": [_padded(seqs[:2]), _padded(seqs[2:])],
        "padding from the mask": [
            {k: v for k, v in _padded(seqs[:3]).items() if k != "labels"},
            _padded(seqs[3:]),
        ],
    }


def _exact_hessian_product(model, seqs, v):
    """H v of the mean next-token loss over every predicted token, in one graph."""
    params = [p for p in model.parameters()]
    total, count = 0.0, 0
    for s in seqs:
        logits = model(s[None])
        total = total + nn.functional.cross_entropy(logits[0, :-1], s[1:], reduction="sum")
        count += len(s) - 1
    loss = total / count
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    hv = torch.autograd.grad(flat @ v, params)
    return torch.cat([h.reshape(-1) for h in hv])


@pytest.mark.parametrize("operator", [HessianOperator, GGNOperator, EmpiricalFisherOperator])
def test_products_do_not_depend_on_batching_or_padding(operator):
    model, seqs = _model(), _sequences()
    layouts = _layouts(seqs)
    first = operator(model, CausalLM(), layouts["one sequence per batch"])
    v = torch.randn(first.shape[0], 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    reference = first.matmat(v)
    for name, data in layouts.items():
        got = operator(model, CausalLM(), data).matmat(v)
        torch.testing.assert_close(got, reference, rtol=1e-12, atol=1e-13, msg=name)
    if operator is HessianOperator:
        exact = _exact_hessian_product(model, seqs, v[:, 0])
        torch.testing.assert_close(reference[:, 0], exact, rtol=1e-12, atol=1e-13)


def test_the_term_count_is_the_predicted_tokens():
    seqs = _sequences()
    assert CausalLM().count(_padded(seqs)) == sum(len(s) - 1 for s in seqs)
    assert CausalLM().count(seqs[0][None]) == len(seqs[0]) - 1
    # the sum of the terms over the dataset is the exact mean times the count
    model = _model(wrap=True)  # a HuggingFace-like output with .logits
    H = HessianOperator(model, CausalLM(), [_padded(seqs)])
    assert H.describe()["loss"] == "causal-lm(ignore_index=-100)"
    assert H.reduction == "mean"


def test_batch_loss_is_the_hessian_of_any_function():
    model, seqs = _model(), _sequences()
    data = [_padded(seqs[:2]), _padded(seqs[2:])]

    def loss(forward, batch):
        logits = forward(batch["input_ids"])[:, :-1]
        labels = batch["labels"][:, 1:]
        total = nn.functional.cross_entropy(
            logits.reshape(-1, VOCAB), labels.reshape(-1), reduction="sum"
        )
        return total, int((labels != -100).sum())

    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=F64)
    expected = HessianOperator(model, CausalLM(), data).matvec(v)
    for hvp in ("reverse", "forward"):
        got = HessianOperator(model, BatchLoss(loss), data, hvp=hvp).matvec(v)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="needs the outputs and the loss apart"):
        GGNOperator(model, BatchLoss(loss), data)


def test_supervised_is_what_a_plain_loss_means():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(F64)
    x, y = torch.randn(10, 3, dtype=F64), torch.randint(0, 2, (10,))
    data = [(x[:4], y[:4]), (x[4:], y[4:])]
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=F64)
    plain = HessianOperator(model, nn.CrossEntropyLoss(), data).matvec(v)
    wrapped = HessianOperator(model, Supervised(nn.CrossEntropyLoss()), data).matvec(v)
    summed = HessianOperator(model, nn.CrossEntropyLoss(reduction="sum"), data).matvec(v)
    torch.testing.assert_close(wrapped, plain, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(summed, plain * 10, rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="contradicts"):
        HessianOperator(model, Supervised(nn.CrossEntropyLoss()), data, reduction="sum")


def test_bad_batches_are_named_before_any_product():
    model = _model()
    with pytest.raises(ValueError, match="needs 'input_ids'"):
        HessianOperator(model, CausalLM(), [{"ids": torch.zeros(1, 3, dtype=torch.long)}])
    with pytest.raises(ValueError, match=r"\(inputs, targets\) pair"):
        HessianOperator(model, nn.CrossEntropyLoss(), [{"input_ids": torch.zeros(1, 3)}])


def test_a_model_without_attention_mask_gets_right_padding_only():
    torch.manual_seed(0)
    bigram = nn.Sequential(nn.Embedding(VOCAB, 4), nn.Linear(4, VOCAB)).to(F64)
    seqs = _sequences()
    v = torch.randn(sum(p.numel() for p in bigram.parameters()), dtype=F64)
    padded = HessianOperator(bigram, CausalLM(), [_padded(seqs)]).matvec(v)
    alone = HessianOperator(bigram, CausalLM(), [s[None] for s in seqs]).matvec(v)
    torch.testing.assert_close(padded, alone, rtol=1e-12, atol=1e-13)
    left = {"input_ids": torch.tensor([[0, 3, 4]]), "attention_mask": torch.tensor([[0, 1, 1]])}
    with pytest.raises(ValueError, match="left padding"):
        HessianOperator(bigram, CausalLM(), [left])


@pytest.mark.parametrize("operator", [HessianOperator, GGNOperator])
def test_closed_form_cross_entropy_equals_autograd(operator):
    """The closed-form output Hessian (diag(p) - p p^T per position, in chunks) gives
    the autograd product: a language model with padding and ignored labels, and a
    classifier whose CrossEntropyLoss ignores some rows."""
    from spectorch.curvature import _objectives

    model, seqs = _model(), _sequences()
    data = [_padded(seqs[:2]), _padded(seqs[2:])]
    data[1]["labels"][0, 3] = -100  # an ignored label inside a sequence
    auto = operator(model, CausalLM(), data, closed_form=False)
    closed = operator(model, CausalLM(), data, closed_form=True)
    v = torch.randn(auto.shape[0], 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    chunk = _objectives.CHUNK_ELEMENTS
    try:
        _objectives.CHUNK_ELEMENTS = 3 * VOCAB  # chunks of 3 positions
        torch.testing.assert_close(closed.matmat(v), auto.matmat(v), rtol=1e-12, atol=1e-13)
    finally:
        _objectives.CHUNK_ELEMENTS = chunk
    torch.testing.assert_close(closed.matvec(v[:, 0]), auto.matvec(v[:, 0]), rtol=1e-12, atol=1e-13)

    torch.manual_seed(0)
    clf = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).to(F64)
    x, y = torch.randn(12, 3, dtype=F64), torch.randint(0, 4, (12,))
    y[2] = -100
    rows = [(x[:5], y[:5]), (x[5:], y[5:])]
    narrow = _objectives._NARROW_SOFTMAX
    try:  # both softmaxes: exp(x - logsumexp) for 4 classes, and torch.softmax
        for _objectives._NARROW_SOFTMAX in (narrow, 0):
            for loss in (nn.CrossEntropyLoss(), nn.CrossEntropyLoss(reduction="sum")):
                a = operator(clf, loss, rows, closed_form=False).to_dense()
                c = operator(clf, loss, rows, closed_form=True).to_dense()
                torch.testing.assert_close(c, a, rtol=1e-12, atol=1e-14)
    finally:
        _objectives._NARROW_SOFTMAX = narrow
    with pytest.raises(ValueError, match="no closed-form derivatives"):
        operator(clf, nn.MSELoss(), [(x, torch.randn(12, 4, dtype=F64))], closed_form=True)


def test_narrow_softmax_is_the_softmax():
    """Below 16 classes on the CPU the closed form's softmax is exp(x - logsumexp):
    the softmax to round-off in float32 and float64; half precision keeps
    torch.softmax itself."""
    from spectorch.curvature._objectives import _softmax

    g = torch.Generator().manual_seed(0)
    for classes in (2, 10, 15, 16, 40):
        x = 5 * torch.randn(64, classes, dtype=F64, generator=g)
        exact = torch.softmax(x, dim=-1)
        for dtype, tol in ((torch.float32, 1e-5), (F64, 1e-13)):
            lse = torch.logsumexp(x.to(dtype), dim=-1)
            for got in (_softmax(x.to(dtype)), _softmax(x.to(dtype), lse=lse)):
                assert got.dtype == dtype
                torch.testing.assert_close(got.double(), exact, rtol=tol, atol=0.0)
        half = x.to(torch.bfloat16)
        assert torch.equal(_softmax(half), torch.softmax(half, dim=-1))


def test_finite_difference_hessian_is_close_to_the_exact_one():
    model, seqs = _model(), _sequences()
    data = [_padded(seqs[:2]), _padded(seqs[2:])]
    exact = HessianOperator(model, CausalLM(), data)
    fd = HessianOperator(model, CausalLM(), data, hvp="finite-difference")
    v = torch.randn(exact.shape[0], 4, dtype=F64, generator=torch.Generator().manual_seed(5))
    a, b = exact.matmat(v), fd.matmat(v)
    assert float((a - b).norm() / a.norm()) < 1e-8  # eps^(2/3) ~ 4e-11 in float64
    torch.testing.assert_close(fd.matvec(v[:, 0]), b[:, 0], rtol=1e-12, atol=1e-14)
    assert fd.describe()["hvp"] == "finite-difference" and not fd.caching
    assert fd.restrict("qkv.*")._settings["hvp"] == "finite-difference"
    with pytest.raises(ValueError, match="cache_graphs=True goes with hvp='reverse'"):
        HessianOperator(model, CausalLM(), data, hvp="finite-difference", cache_graphs=True)


class SdpaLM(TinyLM):
    """TinyLM with torch's scaled_dot_product_attention, whose default CPU kernel (flash)
    has no double backward."""

    def forward(self, input_ids, attention_mask=None):
        del attention_mask
        n = input_ids.shape[1]
        h = self.embed(input_ids) + self.pos[:n]
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        q, k, v = (t.unsqueeze(1) for t in (q, k, v))  # one head: (batch, 1, n, width)
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(h + torch.tanh(a.squeeze(1)))


@pytest.mark.parametrize(
    ("operator", "kw"),
    [
        (HessianOperator, {}),
        (HessianOperator, {"hvp": "forward"}),
        (HessianOperator, {"cache_graphs": False}),
        (GGNOperator, {}),
        (EmpiricalFisherOperator, {}),
    ],
)
def test_sdpa_attention_falls_back_to_its_math_kernel(operator, kw, caplog):
    """torch's default CPU attention kernel has no second derivative; the operator
    switches to the math kernel, says so, and gives the written-out attention's
    products."""
    import logging

    torch.manual_seed(0)
    sdpa = SdpaLM().to(F64)
    plain = TinyLM().to(F64)
    plain.load_state_dict(sdpa.state_dict())
    data = [_padded(_sequences())]
    v = torch.randn(sum(p.numel() for p in plain.parameters()), 2, dtype=F64)
    expected = operator(plain, CausalLM(), data, **kw).matmat(v)
    with caplog.at_level(logging.INFO, logger="spectorch.curvature"):
        op = operator(sdpa, CausalLM(), data, **kw)
        got = op.matmat(v)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.matmat(v), expected, rtol=1e-10, atol=1e-12)  # cached
    assert op.describe()["attention"] == "math"
    assert any("math kernel" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_networks_accumulate_in_float64(dtype):
    """A network in bfloat16/float16 gives float64 products close to its float64 twin
    (measured: ~5e-3 and ~7e-4 relative, benchmarks/bench_low_precision.py)."""
    ref_model, seqs = _model(), _sequences()
    data = [_padded(seqs)]
    low = TinyLM().to(dtype)
    low.load_state_dict({k: v.to(dtype) for k, v in ref_model.state_dict().items()})
    for cls in (HessianOperator, GGNOperator):
        ref = cls(ref_model, CausalLM(), data)
        op = cls(low, CausalLM(), data)
        assert op.dtype == torch.float64 and op.compute_dtype == dtype
        v = torch.randn(ref.shape[0], 2, dtype=F64, generator=torch.Generator().manual_seed(6))
        a = ref.matmat(v)
        b = op.matmat(v)
        assert b.dtype == F64
        assert float((b - a).norm() / a.norm()) < (3e-2 if dtype is torch.bfloat16 else 5e-3)
