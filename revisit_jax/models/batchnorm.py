"""BatchNorm with PyTorch's semantics, so trained statistics export unchanged.

Differences from `flax.linen.BatchNorm` that matter for the bridge:
- the running variance is updated with the *unbiased* batch variance (torch does);
- `momentum` is torch's (weight of the new batch, 0.1), not flax's decay;
- a `num_batches_tracked` counter is kept, as torch keeps it;
- `groups` splits the batch into contiguous groups with their own statistics,
  which is what per-GPU BatchNorm computes when each group sits on its own GPU.
  The running statistics are updated with the mean over groups.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class BatchNorm(nn.Module):
  momentum: float = 0.1
  epsilon: float = 1e-5
  groups: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    channels = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (channels,), jnp.float32)
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (channels,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (channels,), jnp.float32)
    count = self.variable('batch_stats', 'num_batches_tracked', jnp.zeros, (), jnp.int32)

    if not train:
      inv = scale * jnp.reciprocal(jnp.sqrt(running_var.value + self.epsilon))
      y = x.astype(jnp.float32) * inv + (bias - running_mean.value * inv)
      return y.astype(self.dtype)

    if x.shape[0] % self.groups:
      raise ValueError(f'batch {x.shape[0]} is not divisible by bn groups {self.groups}')
    grouped = x.astype(jnp.float32).reshape(self.groups, -1, channels)
    n = grouped.shape[1]
    mean = grouped.mean(axis=1, keepdims=True)
    var = jnp.maximum(jnp.square(grouped).mean(axis=1, keepdims=True) - jnp.square(mean), 0.0)
    inv = scale * jnp.reciprocal(jnp.sqrt(var + self.epsilon))
    y = (grouped * inv + (bias - mean * inv)).reshape(x.shape)

    if not self.is_initializing():
      m = self.momentum
      unbiased = var * (n / max(n - 1, 1))
      running_mean.value = (1 - m) * running_mean.value + m * mean.mean(axis=(0, 1))
      running_var.value = (1 - m) * running_var.value + m * unbiased.mean(axis=(0, 1))
      count.value = count.value + 1
    return y.astype(self.dtype)
