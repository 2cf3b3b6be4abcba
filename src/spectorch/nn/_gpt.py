"""A GPT-2-style causal language model in plain torch (Radford et al. 2019), with
GPT-2's layout, initialisation and parameter names, so a block selection written for
HuggingFace's ``GPT2LMHeadModel`` (``transformer.h.*.attn.*``) selects the same
blocks here."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from spectorch import checks

__all__ = ["GPT", "GPTConfig", "hf_gpt2"]


@dataclass(frozen=True)
class GPTConfig:
    """GPT-2's hyper-parameters, under GPT-2's names (``GPT2Config``'s).

    The defaults are a small byte-level model (``vocab_size=256``); GPT-2 small is
    ``GPTConfig(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)``.
    """

    vocab_size: int = 256
    n_positions: int = 128
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            checks.positive_int(name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd must be a multiple of n_head, got n_embd={self.n_embd}, "
                f"n_head={self.n_head}"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        checks.positive("layer_norm_epsilon", self.layer_norm_epsilon)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Attention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.c_attn(x).split(w, dim=-1)
        q, k, v = (t.view(b, n, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        if mask is None:
            a = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.c_proj(a.transpose(1, 2).reshape(b, n, w))


class _MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's gelu_new


class _Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = _Attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = _MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln_1(x), mask))
        return x + self.dropout(self.mlp(self.ln_2(x)))


class _Transformer(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(_Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)


class GPT(nn.Module):
    """GPT-2: token and position embeddings, ``n_layer`` pre-LayerNorm blocks of causal
    self-attention (``scaled_dot_product_attention``) and a GELU MLP, a final
    LayerNorm and a language-model head tied to the token embedding.

    ``forward(input_ids, attention_mask=None)`` returns the logits ``(batch, length,
    vocab_size)``. Positions whose ``attention_mask`` is 0 are never attended to (a
    padded position attends to itself only, so its logits stay finite); the positions
    are ``0 .. length - 1`` as in GPT-2, so pad on the right, or give the loss the
    mask (:class:`spectorch.curvature.CausalLM` does).

    The initialisation is GPT-2's: normal weights of standard deviation 0.02, the
    residual projections' divided by ``sqrt(2 n_layer)``, zero biases.

    >>> model = GPT(GPTConfig(n_embd=32, n_layer=2, n_head=2, n_positions=16))
    >>> model(torch.zeros(3, 16, dtype=torch.long)).shape
    torch.Size([3, 16, 256])
    """

    def __init__(self, config: GPTConfig | None = None) -> None:
        super().__init__()
        config = config or GPTConfig()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.transformer = _Transformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, length), got {tuple(input_ids.shape)}")
        n = input_ids.shape[1]
        if n > self.config.n_positions:
            raise ValueError(
                f"input_ids has length {n}, more than n_positions={self.config.n_positions}"
            )
        t = self.transformer
        x = t.drop(t.wte(input_ids) + t.wpe(torch.arange(n, device=input_ids.device)))
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            keys = attention_mask.bool()[:, None, None, :]
            mask = causal & (keys | torch.eye(n, dtype=torch.bool, device=x.device))
        for block in t.h:
            x = block(x, mask)
        return self.lm_head(t.ln_f(x))


def hf_gpt2(config: GPTConfig | None = None, *, attn_implementation: str = "sdpa") -> nn.Module:
    """HuggingFace's ``GPT2LMHeadModel`` built from ``config`` (no download; needs the
    ``lm`` extra: ``pip install 'spectorch[lm]'``), with every dropout set to
    ``config.dropout``.

    Raises:
        ImportError: when ``transformers`` is not installed, saying how to install it.
    """
    config = config or GPTConfig()
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            "HuggingFace's GPT-2 needs the lm extra: pip install 'spectorch[lm]' "
            f"(transformers is not installed: {exc})"
        ) from exc
    hf = transformers.GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=config.layer_norm_epsilon,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=None,  # byte level: no special tokens
        eos_token_id=None,
        attn_implementation=attn_implementation,
    )
    return transformers.GPT2LMHeadModel(hf)
