"""Reusable network modules."""

from spectorch.nn._resnet import CifarResNet, cifar_resnet
from spectorch.nn._spectral import Spectral, regularization_loss

__all__ = ["CifarResNet", "Spectral", "cifar_resnet", "regularization_loss"]
