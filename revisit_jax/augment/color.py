"""Colour ops on float images in [0, 1], channels last ([..., H, W, 3]).

They follow torchvision.transforms.functional on float tensors, which does not round to
uint8 between ops (the original PIL pipeline did: about one grey level per op, up to three
for hue, which PIL rotates in uint8 HSV). One deliberate difference: the luma weights are
ITU-R 601 (0.299, 0.587, 0.114), as PIL uses them, where torchvision's tensor path uses
0.2989 for red (at most 1e-4 apart). Every op takes one image (the contrast mean runs over
the last three axes); vmap them over a batch.

Inside, an image is a tuple of three channel planes, and the ops avoid divisions where
torchvision's formulas allow (hue needs one per pixel). That is what lets XLA compile the
whole jitter, four ops in a random order, into one pass over the pixels: an op that mixes
channels of a [..., 3] array, or a division used more than once, makes XLA write every step
to memory (the jitter read and wrote ~60 times its input before).
"""

import jax
import jax.numpy as jnp

from revisit_jax.imagenet import MEAN as IMAGENET_MEAN, STD as IMAGENET_STD

LUMA = (0.299, 0.587, 0.114)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # torchvision ColorJitter's op indices


def planes(img):
  """[..., 3] -> (r, g, b)."""
  return img[..., 0], img[..., 1], img[..., 2]


def stack(channels):
  return jnp.stack(channels, axis=-1)


def luma(channels):
  r, g, b = channels
  return LUMA[0] * r + LUMA[1] * g + LUMA[2] * b


def blend(img1, img2, ratio, bound=1.0):
  """torchvision's _blend: ratio * img1 + (1 - ratio) * img2, clamped to [0, bound]."""
  return jnp.clip(ratio * img1 + (1.0 - ratio) * img2, 0.0, bound)


def grayscale(img):
  """ITU-R 601 luma, one channel: [..., H, W, 1]."""
  return luma(planes(img))[..., None]


def to_grayscale(img):
  """Luma copied to all three channels (torchvision rgb_to_grayscale(img, 3))."""
  return jnp.broadcast_to(grayscale(img), img.shape)


def linear(channels, scale, mean_weight, mean, luma_weight):
  """clip(scale * x + mean_weight * mean + luma_weight * luma(x)): brightness (f, 0, _, 0),
  contrast (f, 1 - f, mean, 0) and saturation (f, 0, _, 1 - f) are this op, bit for bit
  (the terms with weight 0 add exact zeros)."""
  y = luma(channels)
  return tuple(jnp.clip(scale * x + mean_weight * mean + luma_weight * y, 0.0, 1.0)
               for x in channels)


def rotate_hue(channels, hue_factor):
  """torchvision's adjust_hue (RGB -> HSV, rotate h by hue_factor turns, -> RGB), written
  with one division per pixel: HSV's p, q, t are max - chroma * (...) instead of
  v * (1 - s * ...). Within 1e-6 of torchvision."""
  r, g, b = channels
  maxc = jnp.maximum(jnp.maximum(r, g), b)
  chroma = maxc - jnp.minimum(jnp.minimum(r, g), b)
  is_r = maxc == r
  is_g = (maxc == g) & ~is_r
  numerator = jnp.where(is_r, g - b, jnp.where(is_g, b - r, r - g))
  sextant = jnp.where(is_r, 0.0, jnp.where(is_g, 2.0, 4.0))
  h = (sextant + numerator / jnp.where(chroma == 0, 1.0, chroma)) * (1.0 / 6.0) + hue_factor
  h6 = (h - jnp.floor(h)) * 6.0
  i = jnp.floor(h6)
  f = h6 - i
  i = jnp.where(i == 6.0, 0.0, i)  # h - floor(h) rounds up to 1.0 for h just below 0
  p = jnp.clip(maxc - chroma, 0.0, 1.0)
  q = jnp.clip(maxc - chroma * f, 0.0, 1.0)
  t = jnp.clip(maxc - chroma * (1.0 - f), 0.0, 1.0)

  def pick(*by_sextant):  # nested selects: jnp.select would add a reduction
    out = by_sextant[5]
    for k in range(4, -1, -1):
      out = jnp.where(i == k, by_sextant[k], out)
    return out

  return pick(maxc, q, p, p, t, maxc), pick(t, maxc, maxc, q, p, p), pick(p, p, t, maxc, maxc, q)


def adjust_brightness(img, factor):
  return stack(linear(planes(img), factor, 0.0, 0.0, 0.0))


def adjust_contrast(img, factor):
  """Blend with the mean luma of the whole image (a scalar)."""
  mean = jnp.mean(grayscale(img), axis=(-3, -2, -1))[..., None, None]
  return stack(linear(planes(img), factor, 1.0 - factor, mean, 0.0))


def adjust_saturation(img, factor):
  return stack(linear(planes(img), factor, 0.0, 0.0, 1.0 - factor))


def adjust_hue(img, hue_factor):
  """Rotate the hue by hue_factor turns (torchvision: -0.5 <= hue_factor <= 0.5)."""
  return stack(rotate_hue(planes(img), hue_factor))


def jitter_params(key, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1):
  """torchvision ColorJitter's draws: factors [4] (brightness, contrast, saturation ~
  U(1 - x, 1 + x), hue ~ U(-hue, hue)) and the order of the four ops [4]."""
  k_perm, k_b, k_c, k_s, k_h = jax.random.split(key, 5)
  factors = jnp.stack([
      jax.random.uniform(k_b, (), minval=max(0.0, 1.0 - brightness), maxval=1.0 + brightness),
      jax.random.uniform(k_c, (), minval=max(0.0, 1.0 - contrast), maxval=1.0 + contrast),
      jax.random.uniform(k_s, (), minval=max(0.0, 1.0 - saturation), maxval=1.0 + saturation),
      jax.random.uniform(k_h, (), minval=-hue, maxval=hue),
  ])
  return factors, jax.random.permutation(k_perm, 4)


IDENTITY_STEP = (0.0, 1.0, 0.0, 0.0)  # a linear step that returns [0, 1] pixels unchanged


def jitter_plan(factors, order):
  """The jitter as steps [7, 4] of (is hue, scale, mean weight, luma weight): rows 0-3 are
  the four ops in order, rows 4-6 the ops before contrast then identities (the contrast mean is
  taken after them). Per-pixel code reads these few numbers instead of choosing ops itself,
  which XLA's CPU backend compiles into code that recomputes earlier steps for every use."""
  def step(op):
    f = factors[op]
    return jnp.stack([jnp.where(op == HUE, 1.0, 0.0), jnp.where(op == HUE, 1.0, f),
                      jnp.where(op == CONTRAST, 1.0 - f, 0.0),
                      jnp.where(op == SATURATION, 1.0 - f, 0.0)])
  steps = [step(order[k]) for k in range(4)]
  before = jnp.argmax(order == CONTRAST)
  prefix = [jnp.where(k < before, steps[k], jnp.asarray(IDENTITY_STEP)) for k in range(3)]
  return jnp.stack(steps + prefix)


def _apply_step(channels, step, hue_factor, mean):
  mixed = linear(channels, step[1], step[2], mean, step[3])
  rotated = rotate_hue(channels, hue_factor)
  return tuple(jnp.where(step[0] > 0, h, m) for h, m in zip(rotated, mixed))


def contrast_mean(channels, plan, hue_factor):
  """The mean luma of the image as the contrast op receives it: after the ops before it."""
  for k in range(4, 7):
    channels = _apply_step(channels, plan[k], hue_factor, 0.0)
  # The clip changes nothing (luma of [0, 1] pixels) but keeps XLA's CPU backend from moving
  # the weighted sum into its reduction kernel, which needs all three planes in memory.
  return jnp.mean(jnp.clip(luma(channels), 0.0, 1.0))


def jitter(channels, plan, hue_factor, mean):
  """ColorJitter on channel planes by its `jitter_plan`; `mean` is their contrast_mean (taken
  apart, so that the planes it is taken over may differ)."""
  for k in range(4):
    channels = _apply_step(channels, plan[k], hue_factor, mean)
  return channels


def color_jitter(key, img, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1):
  """torchvision ColorJitter: factors ~ U(1 - x, 1 + x), hue ~ U(-hue, hue), the four ops
  applied in a random order."""
  factors, order = jitter_params(key, brightness, contrast, saturation, hue)
  plan, channels = jitter_plan(factors, order), planes(img)
  mean = contrast_mean(channels, plan, factors[HUE])
  return stack(jitter(channels, plan, factors[HUE], mean))


def normalize(img):
  """ImageNet mean/std on [0, 1] pixels."""
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  inverse_std = 1.0 / jnp.asarray(IMAGENET_STD, jnp.float32)
  return (img - mean) * inverse_std
