"""torch-rim's tests/test_rim.py (AlexandreAdam/torch_rim, the 0.2.x series), with
only the import changed (``from rim import RIM, Hourglass`` becomes spectorch's):
torch-rim's constructor names (``T``, ``initialization_method``,
``score_preprocessing_method``) and ``Hourglass(C, ch_mult=..., dimensions=...)`` work
as written. An energy that does not depend on ``x`` (``torch.ones([B])``) gives a zero
score, as torch-rim's ``vjp``.

Its ``setup(dim)`` ignores ``dim`` (it sets ``dim = 1``), so its "2d" test is 1-D;
kept as written. Its tests/test_training.py cannot pass anywhere (it ends with
``assert 0 == 1`` and passes ``RIM(model, D, ...)`` in the wrong order); the behaviour
it meant, a fit over a map-style dataset, is ``test_training`` below.
"""

from __future__ import annotations

import torch

from spectorch.rim import RIM, Hourglass


def setup(dim):
    H = 32
    B = 10
    C = 15  # channels
    T = 10
    ch_mult = (2, 2)
    dim = 1
    D = [16] * dim
    x = torch.randn(B, C, *D)
    y = torch.randn_like(x)
    model = Hourglass(C, ch_mult=ch_mult, dimensions=dim)
    score_fn = lambda x, y: torch.randn_like(x)
    energy_fn = lambda x, y: torch.ones([B])
    return x, y, model, score_fn, energy_fn, H, B, C, T, D


def _check(x_series, length, B, C, D):
    assert len(x_series) == length
    for x in x_series:
        assert x.shape == torch.Size([B, C, *D])


def test_rim_hourglass_basic_1d():
    x, y, model, score_fn, energy_fn, H, B, C, T, D = setup(1)
    rim = RIM(D, model, score_fn=score_fn, T=T)
    _check(rim(y), T, B, C, D)


def test_rim_hourglass_basic_2d():
    x, y, model, score_fn, energy_fn, H, B, C, T, D = setup(2)
    rim = RIM(D, model, score_fn=score_fn, T=T)
    _check(rim(y), T, B, C, D)


def test_rim_hourglass_energy_1d():
    x, y, model, score_fn, energy_fn, H, B, C, T, D = setup(1)
    rim = RIM(D, model, energy_fn=energy_fn, T=T)
    _check(rim(y), T, B, C, D)


def test_rim_hourglass_model_init_1d():
    x, y, model, score_fn, energy_fn, H, B, C, T, D = setup(1)
    rim = RIM(D, model, score_fn=score_fn, T=T, initialization_method="model")
    _check(rim(y), T + 1, B, C, D)


def test_rim_hourglass_link_fn_1d():
    x, y, model, score_fn, energy_fn, H, B, C, T, D = setup(1)
    link_fn = lambda x: 2 * x
    inv_link_fn = lambda x: x / 2
    rim = RIM(
        D,
        model,
        score_fn=score_fn,
        T=T,
        link_function=link_fn,
        inverse_link_function=inv_link_fn,
        initialization_method="model",
    )
    _check(rim(y), T + 1, B, C, D)


def test_rim_hourglass_adam_preprocessing_1d():
    x, y, model, score_fn, energy_fn, H, B, C, T, D = setup(1)
    rim = RIM(D, model, score_fn=score_fn, T=T, score_preprocessing_method="adam")
    _check(rim(y), T, B, C, D)


def test_rim_hourglass_arcsinh_1d():
    x, y, model, score_fn, energy_fn, H, B, C, T, D = setup(1)
    rim = RIM(D, model, score_fn=score_fn, T=T, score_preprocessing_method="arcsinh")
    _check(rim(y), T, B, C, D)


def test_rim_hourglass_rmsprop_preprocessing_1d():
    x, y, model, score_fn, energy_fn, H, B, C, T, D = setup(1)
    rim = RIM(D, model, score_fn=score_fn, T=T, score_preprocessing_method="rmsprop")
    _check(rim(y), T, B, C, D)


def test_training():
    x, y, model, score_fn, energy_fn, H, B, C, T, D = setup(1)
    rim = RIM(D, model, score_fn, T=T)

    class Dataset(torch.utils.data.Dataset):
        def __len__(self):
            return 2 * B

        def __getitem__(self, index):
            return torch.randn(C, *D), torch.randn(C, *D)

    result = rim.fit(
        Dataset(), learning_rate=1e-3, batch_size=B, epochs=2, clip=0.0, seed=42, progress=False
    )
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
