"""torch-rim's tests/test_architectures.py and tests/test_layers.py (AlexandreAdam/
torch_rim), with only the imports changed: ``rim.architectures.Hourglass`` is
spectorch's :class:`~spectorch.rim.Hourglass` (torch-rim's keywords bring torch-rim's
defaults: ``hidden_units=32``), called torch-rim's way, ``model(x, y, score, h)`` with
``h = model.initalize_hidden_states(D, B)``; ``rim.architectures.layers.GRU`` is
:class:`~spectorch.rim.GRU` (spectorch's ConvGRU with torch-rim's names and
defaults).

One test differs, saying why, and one checks a bug fixed:

- ``test_hourglass_odd_input_size`` is skipped in torch-rim ("I would need to know in
  advance the correct padding"); spectorch's Hourglass pads to a multiple of
  ``2**levels`` and crops back, so it runs here, and the state has the padded size
  (``ceil(15 / 4) = 4``, where torch-rim's test expected ``15 // 4``).
- ``test_gru_block`` as written (in the slow tier: 4 s); torch-rim's block never
  updated its first GRU's state (it concatenated the old ``h_1``): here both update,
  and a test checks it.
"""

from __future__ import annotations

import pytest
import torch

from spectorch.rim import GRU, RIM, GRUBlock, Hourglass

# --- test_architectures.py -----------------------------------------------------------


def _hourglass(dim, size=16):
    H = 32
    B = 10
    C = 15  # channels
    ch_mult = (2, 2)
    D = [size] * dim
    x = torch.randn(B, C, *D)
    score = torch.randn(B, C, *D)
    model = Hourglass(C, ch_mult=ch_mult, dimensions=dim)
    h = model.initalize_hidden_states(D, B)
    return H, B, C, D, x, score, model, h


def test_hourglass_1d():
    H, B, C, D, x, score, model, h = _hourglass(1)
    assert h.shape == torch.Size([B, H, *[d // 4 for d in D]])
    g, new_h = model(x, None, score, h)
    assert g.shape == torch.Size([B, C, *D])
    assert new_h.shape == h.shape


def test_hourglass_odd_input_size():
    # skipped in torch-rim; spectorch pads 15 to 16 and crops back (module text)
    H, B, C, D, x, score, model, h = _hourglass(1, size=15)
    assert h.shape == torch.Size([B, H, *[-(-d // 4) for d in D]])
    g, new_h = model(x, None, score, h)
    assert g.shape == torch.Size([B, C, *D])
    assert new_h.shape == h.shape


def test_hourglass_2d():
    H, B, C, D, x, score, model, h = _hourglass(2)
    assert h.shape == torch.Size([B, H, *[d // 4 for d in D]])
    g, new_h = model(x, None, score, h)
    assert g.shape == torch.Size([B, C, *D])
    assert new_h.shape == h.shape


def test_hourglass_3d():
    H, B, C, D, x, score, model, h = _hourglass(3)
    assert h.shape == torch.Size([B, H, *[d // 4 for d in D]])
    g, new_h = model(x, None, score, h)
    assert g.shape == torch.Size([B, C, *D])
    assert new_h.shape == h.shape


# --- test_layers.py ------------------------------------------------------------------


def test_gru():
    B = 10
    D = 10
    H = 32
    x = torch.randn(B, D)
    h = torch.randn(B, H)
    layer = GRU(D, H)
    h, _ = layer(x, h)
    assert h.shape == torch.Size([B, H])
    assert layer.dimensions == 0


def _conv_gru(dimensions):
    B = 10
    D = [16] * dimensions
    C = 10  # channels
    H = 32  # hidden units
    K = 5  # kernel size
    x = torch.randn(B, C, *D)
    h = torch.randn(B, H, *D)
    layer = GRU(C, H, K, dimensions)
    h, _ = layer(x, h)
    assert layer.dimensions == dimensions
    assert h.shape == torch.Size([B, H, *D])


def test_conv_gru_2d():
    _conv_gru(2)


def test_conv_gru_1d():
    _conv_gru(1)


def test_conv_gru_3d():
    _conv_gru(3)


@pytest.mark.slow  # its 3-D case: 11x11x11 kernels on 16^3 volumes, 4 s
def test_gru_block():
    B = 10
    C = 10  # channels
    H = 32  # hidden units
    K = 5  # kernel size
    for dim in [0, 1, 2, 3]:
        D = [16] * dim
        x = torch.randn(B, C, *D)
        h = torch.randn(B, H, *D)
        layer = GRUBlock(C, H, K, dim)
        h, _ = layer(x, h)
        assert layer.dimensions == dim
        assert h.shape == torch.Size([B, C, *D])


def test_gru_block_updates_both_states():
    torch.manual_seed(0)
    layer = GRUBlock(3, 8, 3, 1, conv_kernel_size=3)
    x, h = torch.randn(2, 3, 5), torch.randn(2, 8, 5)
    _, new = layer(x, h)
    expected_first, _ = layer.gru1(x, h[:, :4])
    torch.testing.assert_close(new[:, :4], expected_first)  # torch-rim kept h[:, :4]
    assert not torch.allclose(new[:, :4], h[:, :4])


# --- beyond the shapes: the two calling forms are one function -----------------------


def test_torch_rim_calls_give_spectorchs_results():
    """``model(x, y, score, initalize_hidden_states(...))`` is ``model(x, score)``, and
    a RIM around a torch-rim-style model (one with ``initalize_hidden_states`` and
    ``forward(x, y, score, h)``) runs it the torch-rim way, with the same result."""
    torch.manual_seed(0)
    model = Hourglass(2, 2, features=4, levels=1)
    torch.nn.init.normal_(model.output.weight)  # it starts at zero: make the updates count
    x, score = torch.randn(3, 2, 6, 6), torch.randn(3, 2, 6, 6)
    h = model.initialize_hidden_states([6, 6], 3)
    a, ha = model(x, None, score, h)
    b, hb = model(x, score)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(ha, hb, rtol=0, atol=0)

    class TorchRimStyle(torch.nn.Module):  # what a user wrote on torch-rim's base class
        def __init__(self, inner):
            super().__init__()
            self.inner, self.channels, self.seen = inner, inner.channels, []

        def initalize_hidden_states(self, dimensions, batch_size):
            return self.inner.initialize_hidden_states(dimensions, batch_size)

        def forward(self, x, y, score, h):
            self.seen.append(y)
            return self.inner(x, score, h)

    def score_fn(x, y):
        return y - x

    wrapped = TorchRimStyle(model)
    y = torch.randn(3, 2, 6, 6)
    ours = RIM((6, 6), model, score_fn, steps=3)(y)
    theirs = RIM((6, 6), wrapped, score_fn, steps=3)(y)
    assert len(wrapped.seen) == 3 and wrapped.seen[0] is not None
    assert ours[-1].abs().max() > 0.1
    for u, v in zip(ours, theirs, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=0)
