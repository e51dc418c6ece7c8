"""The MoCo v2 projection head and the encoder (backbone + head) it sits on."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from revisit_jax.models.resnet import ResNet


def torch_linear_bias_init(fan_in):
  """torch.nn.Linear's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / jnp.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_linear(features, fan_in, name, dtype):
  # kaiming_uniform_(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name,
                  kernel_init=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
                  bias_init=torch_linear_bias_init(fan_in))


class ProjectionHead(nn.Module):
  """2048 -> 2048 -> ReLU -> 128, named as the original's `fc.0` / `fc.2`."""
  hidden_dim: int = 2048
  out_dim: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    x = torch_linear(self.hidden_dim, h.shape[-1], 'fc_0', self.dtype)(h)
    x = nn.relu(x)
    return torch_linear(self.out_dim, self.hidden_dim, 'fc_2', self.dtype)(x).astype(jnp.float32)


class Encoder(nn.Module):
  """MoCo's encoder: returns (z, h) = (head output, pooled backbone feature), not normalised."""
  backbone: ResNet
  head: ProjectionHead

  def __call__(self, x, train: bool = False):
    h = self.backbone(x, train)
    return self.head(h), h
