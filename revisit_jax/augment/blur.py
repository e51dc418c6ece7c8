"""Gaussian blur with a traced sigma, as torchvision's F.gaussian_blur.

The original MoCo v2 blurred PIL images with ImageFilter.GaussianBlur(radius=sigma): Pillow
approximates the Gaussian of standard deviation sigma by three box blurs and extends edges
by repeating them. Here the kernel is the exact sampled Gaussian of torchvision
(exp(-x^2 / 2 sigma^2), normalised) with a fixed size wide enough for the largest sigma
(radius ceil(3 * sigma_max)) and reflect padding, applied separably on H then W. On natural
images the two differ by about a grey level inside the image, more at the border.

Each pass is a product with a banded [size, size] matrix that holds the kernel and the
reflect padding. A dot materialises its input; shifted slices let XLA fuse the colour ops
before the blur into every one of the 2 x 13 taps and recompute them (6x slower on CPU).
"""

import math

import jax.numpy as jnp
import numpy as np

SIGMA_MAX = 2.0


def kernel_radius(sigma_max=SIGMA_MAX):
  return math.ceil(3 * sigma_max)


def gaussian_kernel1d(sigma, radius):
  """torchvision's _get_gaussian_kernel1d for kernel_size = 2 * radius + 1."""
  x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  pdf = jnp.exp(-0.5 * (x / sigma) ** 2)
  return pdf / jnp.sum(pdf)


def _reflect_taps(size, radius):
  """taps[i, t, j] = 1 where tap t of output i reads input j under reflect padding."""
  src = np.arange(size)[:, None] + np.arange(-radius, radius + 1)[None, :]
  src = np.abs(src)
  src = np.where(src > size - 1, 2 * (size - 1) - src, src)
  return (src[..., None] == np.arange(size)).astype(np.float32)


def blur_matrix(kernel, size):
  """[size, size] matrix applying the 1-D kernel with reflect padding along one axis."""
  return jnp.einsum('t,itj->ij', kernel, _reflect_taps(size, (kernel.shape[0] - 1) // 2))


def gaussian_blur(img, sigma, radius=None):
  """Blur one image [H, W, C]; sigma may be traced, radius is static (H, W > radius)."""
  radius = kernel_radius() if radius is None else radius
  h, w = img.shape[-3], img.shape[-2]
  if min(h, w) <= radius:
    raise ValueError(f'gaussian_blur: image {h}x{w} must be larger than the kernel radius '
                     f'{radius} for reflect padding')
  kernel = gaussian_kernel1d(sigma, radius)
  out = jnp.einsum('ij,jwc->iwc', blur_matrix(kernel, h), img, precision='highest')
  return jnp.einsum('ij,hjc->hic', blur_matrix(kernel, w), out, precision='highest')
