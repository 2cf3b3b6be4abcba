"""scikit-learn's bundled 8x8 handwritten digits (1,797 images; no download)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["load_digits"]

_SPLITS = ("all", "train", "test")


def load_digits(
    *,
    split: str = "all",
    test_fraction: float = 0.2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The UCI 8x8 digits shipped inside scikit-learn, as tensors.

    Pixels (0..16) are scaled to [0, 1] and flattened to 64 features.

    Args:
        split: ``"all"``, ``"train"`` or ``"test"``; the split is a fixed random
            permutation seeded by ``seed``.
        test_fraction: share of the samples in the test split.
        dtype: floating dtype of the inputs; targets are int64 class labels 0..9.

    Returns:
        ``(inputs, targets)`` of shapes ``(N, 64)`` and ``(N,)``.

    Raises:
        ImportError: without scikit-learn (``pip install 'spectorch[examples]'``).
        ValueError: on an unknown split or a test fraction outside (0, 1).
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits data ships with scikit-learn: pip install 'spectorch[examples]'"
        ) from exc
    bunch = _sk_load_digits()
    X = torch.as_tensor(bunch.data / 16.0, dtype=dtype)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    if split == "all":
        return X, y
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = round(test_fraction * len(y))
    idx = order[:n_test] if split == "test" else order[n_test:]
    idx_t = torch.as_tensor(idx)
    return X[idx_t], y[idx_t]
