"""Reusable network modules."""

from spectorch.nn._resnet import CifarResNet, cifar_resnet

__all__ = ["CifarResNet", "cifar_resnet"]
