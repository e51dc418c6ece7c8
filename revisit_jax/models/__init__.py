"""Flax ResNets with torchvision's layout, and the MoCo projection head."""

from revisit_jax.models.batchnorm import BatchNorm
from revisit_jax.models.heads import Encoder, ProjectionHead
from revisit_jax.models.resnet import ResNet, feature_dim, resnet

__all__ = ['BatchNorm', 'Encoder', 'ProjectionHead', 'ResNet', 'feature_dim', 'resnet']
