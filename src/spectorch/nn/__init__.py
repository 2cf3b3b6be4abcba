"""Reusable network modules."""

from spectorch.nn._gpt import GPT, GPTConfig, hf_gpt2
from spectorch.nn._resnet import CifarResNet, cifar_resnet
from spectorch.nn._spectral import Spectral, regularization_loss

__all__ = [
    "GPT",
    "CifarResNet",
    "GPTConfig",
    "Spectral",
    "cifar_resnet",
    "hf_gpt2",
    "regularization_loss",
]
