"""HuggingFace models under the curvature operators (issue 17; runs where the optional
`transformers` package is installed, skipped elsewhere): a GPT-2 built from its config
(no download), its ModelOutput read through ``.logits``, dict batches with
``attention_mask``, and both attention implementations."""

from __future__ import annotations

import pytest
import torch

from spectorch.curvature import CausalLM, GGNOperator, HessianOperator

transformers = pytest.importorskip("transformers")

F64 = torch.float64


def _gpt2(impl: str):
    cfg = transformers.GPT2Config(
        vocab_size=64,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation=impl,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).to(F64).eval()


def _batches():
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(1, 64, (n,), generator=g) for n in (5, 9, 7)]
    n = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), n, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    padded = [{"input_ids": ids, "attention_mask": mask}]
    alone = [
        {"input_ids": s[None], "attention_mask": torch.ones(1, len(s), dtype=torch.long)}
        for s in seqs
    ]
    return padded, alone


@pytest.mark.parametrize("operator", [HessianOperator, GGNOperator])
def test_gpt2_products_agree_across_attention_and_padding(operator):
    eager, sdpa = _gpt2("eager"), _gpt2("sdpa")
    sdpa.load_state_dict(eager.state_dict())
    padded, alone = _batches()
    v = torch.randn(sum(p.numel() for p in eager.parameters()), 2, dtype=F64)
    reference = operator(eager, CausalLM(), alone).matmat(v)
    for model, data in ((eager, padded), (sdpa, padded), (sdpa, alone)):
        op = operator(model, CausalLM(), data)
        torch.testing.assert_close(op.matmat(v), reference, rtol=1e-10, atol=1e-12)
