"""spectraltools 0.4.1's test/test_spectraltools.py, translated from Keras to PyTorch.

The script trains ``Flatten -> Spectral(200, relu, use_bias, diag_regularizer='l2') ->
Dense(10, softmax)`` with Adam 1e-3 and sparse categorical cross-entropy, runs
``spectral_distiller(model, fit_dictionary=tr_dict, percentile=98)`` and evaluates the
result; it asserts nothing. Translation: MNIST is not shipped with any package here, so
the bundled 8x8 digits stand in (64 inputs instead of 784, 20 epochs kept); ``Dense(10,
softmax)`` with the cross-entropy is ``nn.Linear(200, 10)`` on logits; the
``fit_dictionary`` is passed as written (``validation_split`` holds out the last 20%,
as Keras). The checks are what the script printed: the distilled model keeps 2% of the
200 nodes, and it still classifies the digits.
"""

from __future__ import annotations

import torch

from spectorch.data import Batches, load_digits
from spectorch.nn import Spectral, regularization_loss
from spectorch.prune import make_evaluate, spectral_distiller


def test_spectral_distiller_script():
    torch.manual_seed(0)
    x_train, y_train = load_digits(split="train")
    x_test, y_test = load_digits(split="test")
    spec = Spectral(64, units=200, activation="relu", use_bias=True, diag_regularizer="l2")
    model = torch.nn.Sequential(torch.nn.Flatten(), spec, torch.nn.Linear(200, 10))
    # Keras' 'l2' is 0.01 * sum(w^2) over the eigenvalues (diag_start and diag_end)
    expected = 0.01 * (spec.diag_start.square().sum() + spec.diag_end.square().sum())
    torch.testing.assert_close(regularization_loss(model), expected)
    tr_dict = dict(
        x=x_train.numpy(),
        y=y_train.numpy(),
        validation_split=0.2,
        batch_size=300,
        epochs=20,
        verbose=0,
    )
    minimal = spectral_distiller(model, fit_dictionary=tr_dict, percentile=98)
    assert minimal[1].out_features == 4  # 2% of 200 nodes
    evalout = make_evaluate(Batches(x_test, y_test, 300))(minimal)
    assert evalout["acc"] > 0.3  # 4 hidden nodes, 10 classes: far above chance (0.1)
