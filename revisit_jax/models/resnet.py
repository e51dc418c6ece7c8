"""ResNets laid out exactly as `torchvision.models.resnet*`.

Module names follow torchvision's state_dict (`layer1_0.conv2` is `layer1.0.conv2`),
convolutions pad explicitly and symmetrically as torch does (stride 2 included),
and the stride of a bottleneck sits in its 3x3 conv (ResNet v1.5). Inputs are NHWC.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from revisit_jax.models.batchnorm import BatchNorm

# torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu').
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def conv(features, kernel, stride=1, dilation=1, name=None, dtype=jnp.float32):
  pad = dilation * (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), kernel_dilation=(dilation, dilation),
                 use_bias=False, kernel_init=conv_init, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


class BasicBlock(nn.Module):
  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  bn_groups: int = 1
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x, train):
    if self.dilation > 1:
      raise NotImplementedError('dilation > 1 is not supported in BasicBlock (as in torchvision)')
    bn = functools.partial(BatchNorm, groups=self.bn_groups, dtype=self.dtype)
    out = conv(self.planes, 3, self.stride, name='conv1', dtype=self.dtype)(x)
    out = nn.relu(bn(name='bn1')(out, train))
    out = conv(self.planes, 3, name='conv2', dtype=self.dtype)(out)
    out = bn(name='bn2')(out, train)
    return nn.relu(out + shortcut(self, x, train))


class Bottleneck(nn.Module):
  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  bn_groups: int = 1
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x, train):
    bn = functools.partial(BatchNorm, groups=self.bn_groups, dtype=self.dtype)
    out = conv(self.planes, 1, name='conv1', dtype=self.dtype)(x)
    out = nn.relu(bn(name='bn1')(out, train))
    out = conv(self.planes, 3, self.stride, self.dilation, name='conv2', dtype=self.dtype)(out)
    out = nn.relu(bn(name='bn2')(out, train))
    out = conv(self.planes * 4, 1, name='conv3', dtype=self.dtype)(out)
    out = bn(name='bn3')(out, train)
    return nn.relu(out + shortcut(self, x, train))


def shortcut(block, x, train):
  """torchvision's `downsample`: a strided 1x1 conv and BN when the shape changes."""
  if not block.downsample:
    return x
  out = conv(block.planes * block.expansion, 1, block.stride, name='downsample_0',
             dtype=block.dtype)(x)
  return BatchNorm(groups=block.bn_groups, dtype=block.dtype, name='downsample_1')(out, train)


class ResNet(nn.Module):
  """torchvision's ResNet without `fc`; returns the pooled feature or every stage.

  `replace_stride_with_dilation` follows torchvision (one flag each for layer2..4);
  `num_stages=3` drops layer4 (the DAVIS feature extractor); `width` below 64 makes
  the tiny networks that tests and the CPU demo use. `stem='cifar'` is the small-image
  stem of MoCo's CIFAR demo (3x3 stride-1 conv1, no max-pool), so 32 px crops keep their
  detail; in torchvision it is `conv1 = Conv2d(3, width, 3, 1, 1, bias=False)`,
  `maxpool = Identity()`.
  """
  block: Any
  stage_sizes: Sequence[int]
  replace_stride_with_dilation: Sequence[bool] = (False, False, False)
  num_stages: int = 4
  bn_groups: int = 1
  dtype: Any = jnp.float32
  return_stages: bool = False
  width: int = 64
  stem: str = 'imagenet'

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    stages = {}
    if self.stem not in ('imagenet', 'cifar'):
      raise ValueError(f"unknown stem {self.stem!r}; known: 'imagenet', 'cifar'")
    imagenet = self.stem == 'imagenet'
    x = conv(self.width, 7 if imagenet else 3, 2 if imagenet else 1, name='conv1',
             dtype=self.dtype)(x)
    x = nn.relu(BatchNorm(groups=self.bn_groups, dtype=self.dtype, name='bn1')(x, train))
    if imagenet:
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    stages['stem'] = x

    in_channels, dilation = self.width, 1
    for i, blocks in enumerate(self.stage_sizes[:self.num_stages]):
      planes = self.width * 2 ** i
      stride = 1 if i == 0 else 2
      previous_dilation = dilation
      if i > 0 and self.replace_stride_with_dilation[i - 1]:
        dilation, stride = dilation * stride, 1
      for j in range(blocks):
        first = j == 0
        x = self.block(
            planes=planes, stride=stride if first else 1,
            dilation=previous_dilation if first else dilation,
            downsample=first and (stride != 1 or in_channels != planes * self.block.expansion),
            bn_groups=self.bn_groups, dtype=self.dtype, name=f'layer{i + 1}_{j}')(x, train)
        in_channels = planes * self.block.expansion
      stages[f'layer{i + 1}'] = x

    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.return_stages:
      return {**stages, 'pooled': pooled}
    return pooled


STAGE_SIZES = {
    'resnet18': (BasicBlock, (2, 2, 2, 2)),
    'resnet34': (BasicBlock, (3, 4, 6, 3)),
    'resnet50': (Bottleneck, (3, 4, 6, 3)),
    'resnet101': (Bottleneck, (3, 4, 23, 3)),
}


def resnet(arch: str, **kwargs) -> ResNet:
  """`resnet('resnet50', dtype=jnp.bfloat16)`; kwargs are ResNet fields."""
  if arch not in STAGE_SIZES:
    raise ValueError(f'unknown architecture {arch!r}; known: {sorted(STAGE_SIZES)}')
  block, sizes = STAGE_SIZES[arch]
  return ResNet(block=block, stage_sizes=sizes, **kwargs)


def feature_dim(arch: str, width: int = 64) -> int:
  block, _ = STAGE_SIZES[arch]
  return 8 * width * block.expansion
