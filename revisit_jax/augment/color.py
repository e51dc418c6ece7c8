"""Colour ops on float images in [0, 1], channels last ([..., H, W, 3]).

They follow torchvision.transforms.functional on float tensors, which does not round to
uint8 between ops (the original PIL pipeline did: about one grey level per op, up to three
for hue, which PIL rotates in uint8 HSV). One deliberate difference: the luma weights are
ITU-R 601 (0.299, 0.587, 0.114), as PIL uses them, where torchvision's tensor path uses
0.2989 for red (at most 1e-4 apart). Every op takes one image (the contrast mean runs over
the last three axes); vmap them over a batch."""

import jax
import jax.numpy as jnp

LUMA = (0.299, 0.587, 0.114)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def blend(img1, img2, ratio, bound=1.0):
  """torchvision's _blend: ratio * img1 + (1 - ratio) * img2, clamped to [0, bound]."""
  return jnp.clip(ratio * img1 + (1.0 - ratio) * img2, 0.0, bound)


def grayscale(img):
  """ITU-R 601 luma, one channel: [..., H, W, 1]."""
  r, g, b = img[..., 0], img[..., 1], img[..., 2]
  return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b)[..., None]


def to_grayscale(img):
  """Luma copied to all three channels (torchvision rgb_to_grayscale(img, 3))."""
  return jnp.broadcast_to(grayscale(img), img.shape)


def adjust_brightness(img, factor):
  return blend(img, 0.0, factor)


def adjust_contrast(img, factor):
  """Blend with the mean luma of the whole image (a scalar)."""
  mean = jnp.mean(grayscale(img), axis=(-3, -2, -1), keepdims=True)
  return blend(img, mean, factor)


def adjust_saturation(img, factor):
  return blend(img, grayscale(img), factor)


def rgb_to_hsv(img):
  """torchvision's _rgb2hsv (after Pillow): h, s, v in [0, 1], channels last."""
  r, g, b = img[..., 0], img[..., 1], img[..., 2]
  maxc = jnp.max(img, axis=-1)
  minc = jnp.min(img, axis=-1)
  eqc = maxc == minc
  cr = maxc - minc
  s = cr / jnp.where(eqc, 1.0, maxc)
  cr_divisor = jnp.where(eqc, 1.0, cr)
  rc = (maxc - r) / cr_divisor
  gc = (maxc - g) / cr_divisor
  bc = (maxc - b) / cr_divisor
  hr = jnp.where(maxc == r, bc - gc, 0.0)
  hg = jnp.where((maxc == g) & (maxc != r), 2.0 + rc - bc, 0.0)
  hb = jnp.where((maxc != g) & (maxc != r), 4.0 + gc - rc, 0.0)
  h = jnp.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
  return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(hsv):
  """torchvision's _hsv2rgb, channels last."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  i = jnp.floor(h * 6.0)
  f = h * 6.0 - i
  i = i.astype(jnp.int32) % 6
  p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  sector = [i == k for k in range(6)]
  r = jnp.select(sector, [v, q, p, p, t, v])
  g = jnp.select(sector, [t, v, v, q, p, p])
  b = jnp.select(sector, [p, p, t, v, v, q])
  return jnp.stack([r, g, b], axis=-1)


def adjust_hue(img, hue_factor):
  """Rotate the hue by hue_factor turns (torchvision: -0.5 <= hue_factor <= 0.5)."""
  hsv = rgb_to_hsv(img)
  h = jnp.mod(hsv[..., 0] + hue_factor, 1.0)
  return hsv_to_rgb(jnp.stack([h, hsv[..., 1], hsv[..., 2]], axis=-1))


def color_jitter(key, img, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1):
  """torchvision ColorJitter: factors ~ U(1 - x, 1 + x), hue ~ U(-hue, hue), the four ops
  applied in a random order. Under vmap lax.switch evaluates all four ops per step."""
  k_perm, k_b, k_c, k_s, k_h = jax.random.split(key, 5)
  factors = (
      jax.random.uniform(k_b, (), minval=max(0.0, 1.0 - brightness), maxval=1.0 + brightness),
      jax.random.uniform(k_c, (), minval=max(0.0, 1.0 - contrast), maxval=1.0 + contrast),
      jax.random.uniform(k_s, (), minval=max(0.0, 1.0 - saturation), maxval=1.0 + saturation),
      jax.random.uniform(k_h, (), minval=-hue, maxval=hue),
  )
  ops = (
      lambda x: adjust_brightness(x, factors[0]),
      lambda x: adjust_contrast(x, factors[1]),
      lambda x: adjust_saturation(x, factors[2]),
      lambda x: adjust_hue(x, factors[3]),
  )
  order = jax.random.permutation(k_perm, 4)
  for step in range(4):
    img = jax.lax.switch(order[step], ops, img)
  return img


def normalize(img):
  """ImageNet mean/std on [0, 1] pixels."""
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  return (img - mean) / std
