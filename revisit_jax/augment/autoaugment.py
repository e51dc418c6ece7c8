"""AutoAugment, ImageNet policy, on uint8 images [H, W, 3] (values 0-255).

Each op matches torchvision.transforms.functional on a uint8 CHW tensor, as torchvision's
AutoAugment calls it: blends compute in float32 and truncate to uint8, the sharpness blur is
rounded, geometric ops sample the nearest pixel (round half to even) at torchvision's
pixel-centre grid and fill 0. Three deliberate differences, from SPEC.md / the original
code: luma weights 0.299/0.587/0.114 (torchvision: 0.2989 for red) in Color and Contrast,
Solarize thresholds linspace(256, 0, 10) (torchvision: linspace(255, 0, 10)), and ShearX
about the image centre by tan(m), as the original's vendored torchvision 0.9 F.affine did.

A crop applies one drawn op per step. Under vmap, choosing among ten op functions would
evaluate all ten on every crop; instead `apply_op` evaluates three things whatever the op:
a per-channel lookup table of 256 values (Posterize, Solarize, Invert, AutoContrast,
Equalize and Contrast are each such a table; the others use the identity), a nearest-pixel
affine resampling (the identity matrix unless ShearX or Rotate), and the blend of Color and
Sharpness. The statistics the tables need (per-channel min, max and cumulative histogram,
mean luma) come from one sort per channel.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from revisit_jax.augment.color import blend, luma

VALUES = np.arange(256)


def _to_uint8(x):
  """torch's float -> uint8 cast of a value already clamped to [0, 255]: truncation."""
  return jnp.floor(x).astype(jnp.uint8)


def apply_lut(img, lut):
  """img uint8 [..., 3] through lut uint8 [256] (all channels) or [3, 256] (per channel)."""
  if lut.ndim == 1:
    return lut[img]
  return lut[jnp.arange(3), img]


# ---- lookup tables ----

def posterize_lut(bits):
  """Keep the top `bits` bits of each value."""
  mask = (0xFF << (8 - jnp.asarray(bits, jnp.int32))) & 0xFF
  return (VALUES & mask).astype(jnp.uint8)


def solarize_lut(threshold):
  """Invert every value >= threshold (a threshold above 255 leaves the image alone)."""
  return jnp.where(VALUES >= threshold, 255 - VALUES, VALUES).astype(jnp.uint8)


def invert_lut():
  return jnp.asarray(255 - VALUES, jnp.uint8)


def contrast_lut(factor, mean):
  """F.adjust_contrast on uint8: blend with the mean of the uint8 luma image."""
  return _to_uint8(blend(jnp.asarray(VALUES, jnp.float32), mean, factor, 255.0))


def channel_stats(img):
  """Per channel of uint8 [H, W, 3]: min [3], max [3] and cdf [3, 256] (pixels <= value)."""
  ordered = jnp.sort(img.reshape(-1, 3).T, axis=1)
  cdf = jax.vmap(lambda row: jnp.searchsorted(row, jnp.arange(256, dtype=jnp.uint8),
                                              side='right'))(ordered)
  return ordered[:, 0], ordered[:, -1], cdf.astype(jnp.int32)


def autocontrast_lut(low, high):
  """Stretch each channel from [low, high] to [0, 255]; constant channels are kept."""
  low, high = low.astype(jnp.float32)[:, None], high.astype(jnp.float32)[:, None]
  flat = high == low
  scale = jnp.where(flat, 1.0, 255.0 / jnp.where(flat, 1.0, high - low))
  low = jnp.where(flat, 0.0, low)
  return _to_uint8(jnp.clip((VALUES - low) * scale, 0.0, 255.0))


def equalize_lut(high, cdf):
  """torchvision's F.equalize per channel: lut = (cdf + step // 2) // step, shifted by one,
  with step = (pixels below the top value) // 255; a channel with step 0 is kept."""
  below_top = jnp.where(high > 0, jnp.take_along_axis(
      cdf, jnp.maximum(high.astype(jnp.int32) - 1, 0)[:, None], axis=1)[:, 0], 0)
  step = (below_top // 255)[:, None]
  lut = (cdf + step // 2) // jnp.maximum(step, 1)
  lut = jnp.clip(jnp.pad(lut, ((0, 0), (1, 0)))[:, :-1], 0, 255)
  return jnp.where(step > 0, lut, VALUES).astype(jnp.uint8)


# ---- ops on images ----

def _affine_nearest(img, matrix):
  """Sample img at inverse-mapped pixel centres, as torchvision's affine/rotate (nearest,
  zeros outside). matrix = (a, b, c, d, e, f) maps output to input coordinates centred on the
  image, y pointing down, like torchvision's _get_inverse_affine_matrix. One gather from the
  pixels and an appended zero pixel (what lies outside reads it)."""
  h, w = img.shape[0], img.shape[1]
  a, b, c, d, e, f = matrix
  x = jnp.arange(w, dtype=jnp.float32)[None, :] + (0.5 - w / 2)
  y = jnp.arange(h, dtype=jnp.float32)[:, None] + (0.5 - h / 2)
  # torch's grid_sample route (align_corners=False): normalise by the half size, unnormalise.
  gx = (a * x + b * y + c) * (2.0 / w)
  gy = (d * x + e * y + f) * (2.0 / h)
  ix = jnp.round(((gx + 1) * w - 1) * 0.5).astype(jnp.int32)
  iy = jnp.round(((gy + 1) * h - 1) * 0.5).astype(jnp.int32)
  inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
  pixels = jnp.concatenate([img.reshape(h * w, img.shape[2]), jnp.zeros_like(img[0, :1])])
  return pixels[jnp.where(inside, iy * w + ix, h * w)]


def _shear_matrix(m):
  return (1.0, jnp.tan(m), 0.0, 0.0, 1.0, 0.0)


def _rotation_matrix(degrees):
  t = jnp.deg2rad(degrees)
  cos, sin = jnp.cos(t), jnp.sin(t)
  return (cos, -sin, 0.0, sin, cos, 0.0)


def shear_x(img, m):
  """The original's ShearX, F.affine(shear=[degrees(m), 0]) with the default centre: rows
  slide by tan(m) * (y - h/2) about the image centre. (torchvision's own AutoAugment since
  0.10 shears by m about the top-left corner instead.)"""
  return _affine_nearest(img, _shear_matrix(m))


def rotate(img, degrees):
  """F.rotate: counter-clockwise about the image centre, same size."""
  return _affine_nearest(img, _rotation_matrix(degrees))


def _luma_floor(img):
  """torchvision's uint8 grayscale: the luma truncated to an integer, float32 [H, W, 1].
  (Each channel is converted after slicing: one shared float copy of the image would be
  written to memory.)"""
  return jnp.floor(luma(tuple(img[..., c].astype(jnp.float32) for c in range(3))))[..., None]


def _sharpness_degenerate(img):
  """[[1,1,1],[1,5,1],[1,1,1]]/13 smoothing (rounded) of the interior; the one-pixel border
  keeps its values. float32 [H, W, 3]."""
  h, w = img.shape[0], img.shape[1]
  weights = np.ones((3, 3), np.float32)
  weights[1, 1] = 5.0
  weights /= weights.sum()
  padded = jnp.pad(img, ((1, 1), (1, 1), (0, 0)))
  smooth = sum(weights[i, j] * padded[i:i + h, j:j + w].astype(jnp.float32)
               for i in range(3) for j in range(3))
  rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
  interior = (rows > 0) & (rows < h - 1) & (cols > 0) & (cols < w - 1)
  return jnp.where(interior[..., None], jnp.round(smooth), img.astype(jnp.float32))


def color(img, factor):
  """F.adjust_saturation on uint8: blend with the luma image truncated to uint8."""
  return _to_uint8(blend(img.astype(jnp.float32), _luma_floor(img), factor, 255.0))


def contrast(img, factor):
  """F.adjust_contrast on uint8: blend with the mean of the uint8 luma image."""
  return apply_lut(img, contrast_lut(factor, jnp.mean(_luma_floor(img))))


def sharpness(img, factor):
  """F.adjust_sharpness: blend with a [[1,1,1],[1,5,1],[1,1,1]]/13 smoothing (rounded to
  uint8) of the interior; the one-pixel border keeps its values."""
  return _to_uint8(blend(img.astype(jnp.float32), _sharpness_degenerate(img), factor, 255.0))


def posterize(img, bits):
  return apply_lut(img, posterize_lut(bits))


def solarize(img, threshold):
  return apply_lut(img, solarize_lut(threshold))


def autocontrast(img):
  low, high, _ = channel_stats(img)
  return apply_lut(img, autocontrast_lut(low, high))


def equalize(img):
  _, high, cdf = channel_stats(img)
  return apply_lut(img, equalize_lut(high, cdf))


def invert(img):
  return 255 - img


# Op name -> (function of (image, signed magnitude), magnitude of each of the 10 bins, signed).
OPS = {
    'ShearX': (shear_x, np.linspace(0.0, 0.3, 10), True),
    'Rotate': (rotate, np.linspace(0.0, 30.0, 10), True),
    'Color': (lambda x, m: color(x, 1.0 + m), np.linspace(0.0, 0.9, 10), True),
    'Contrast': (lambda x, m: contrast(x, 1.0 + m), np.linspace(0.0, 0.9, 10), True),
    'Sharpness': (lambda x, m: sharpness(x, 1.0 + m), np.linspace(0.0, 0.9, 10), True),
    'Posterize': (lambda x, m: posterize(x, m.astype(jnp.int32)),
                  np.array([8, 8, 7, 7, 6, 6, 5, 5, 4, 4], np.float64), False),
    'Solarize': (solarize, np.linspace(256.0, 0.0, 10), False),
    'AutoContrast': (lambda x, m: autocontrast(x), None, False),
    'Equalize': (lambda x, m: equalize(x), None, False),
    'Invert': (lambda x, m: invert(x), None, False),
}
OP_INDEX = {name: i for i, name in enumerate(OPS)}
IDENTITY = len(OPS)  # the op index of a step that is not applied


def apply_op(img, op, magnitude, possible=tuple(OPS)):
  """OPS[op] (op traced; IDENTITY: none) with its signed magnitude, evaluated as one lookup
  table, one affine resampling and one blend whatever the op (see the module docstring).
  `possible` (static) names the ops `op` can be: only their parts are computed."""
  can = lambda name: name in possible  # noqa: E731
  is_op = lambda name: op == OP_INDEX[name]  # noqa: E731
  lut = jnp.broadcast_to(jnp.asarray(VALUES, jnp.uint8), (3, 256))
  tables = {'Posterize': lambda: posterize_lut(magnitude.astype(jnp.int32)),
            'Solarize': lambda: solarize_lut(magnitude),
            'Invert': invert_lut,
            'Contrast': lambda: contrast_lut(1.0 + magnitude, jnp.mean(_luma_floor(img)))}
  if can('AutoContrast') or can('Equalize'):
    low, high, cdf = channel_stats(img)
    tables.update(AutoContrast=lambda: autocontrast_lut(low, high),
                  Equalize=lambda: equalize_lut(high, cdf))
  for name, table in tables.items():
    if can(name):
      lut = jnp.where(is_op(name), jnp.broadcast_to(table(), (3, 256)), lut)
  matrix = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
  for name, of_magnitude in (('ShearX', _shear_matrix), ('Rotate', _rotation_matrix)):
    if can(name):
      matrix = [jnp.where(is_op(name), a, b) for a, b in zip(of_magnitude(magnitude), matrix)]
  out = apply_lut(img, lut)
  blends = [(name, degenerate) for name, degenerate in (('Color', _luma_floor),
                                                         ('Sharpness', _sharpness_degenerate))
            if can(name)]
  if blends:
    degenerate = blends[-1][1](img)
    for name, of_image in blends[:-1]:
      degenerate = jnp.where(is_op(name), of_image(img), degenerate)
    blended = _to_uint8(blend(img.astype(jnp.float32), degenerate, 1.0 + magnitude, 255.0))
    out = jnp.where(functools.reduce(jnp.logical_or, [is_op(n) for n, _ in blends]), blended, out)
  # The ops are exclusive, so the resampling may come last; it leaves the rest alone. (Last, its
  # gather is where XLA writes the step's result once, rather than recompute it in each reader.)
  if can('ShearX') or can('Rotate'):
    out = _affine_nearest(out, matrix)
  return out


# 25 sub-policies of two (op, probability, magnitude bin) steps (SPEC.md section 3).
IMAGENET_POLICY = (
    (('Posterize', 0.4, 8), ('Rotate', 0.6, 9)),
    (('Solarize', 0.6, 5), ('AutoContrast', 0.6, None)),
    (('Equalize', 0.8, None), ('Equalize', 0.6, None)),
    (('Posterize', 0.6, 7), ('Posterize', 0.6, 6)),
    (('Equalize', 0.4, None), ('Solarize', 0.2, 4)),
    (('Equalize', 0.4, None), ('Rotate', 0.8, 8)),
    (('Solarize', 0.6, 3), ('Equalize', 0.6, None)),
    (('Posterize', 0.8, 5), ('Equalize', 1.0, None)),
    (('Rotate', 0.2, 3), ('Solarize', 0.6, 8)),
    (('Equalize', 0.6, None), ('Posterize', 0.4, 6)),
    (('Rotate', 0.8, 8), ('Color', 0.4, 0)),
    (('Rotate', 0.4, 9), ('Equalize', 0.6, None)),
    (('Equalize', 0.0, None), ('Equalize', 0.8, None)),
    (('Invert', 0.6, None), ('Equalize', 1.0, None)),
    (('Color', 0.6, 4), ('Contrast', 1.0, 8)),
    (('Rotate', 0.8, 8), ('Color', 1.0, 2)),
    (('Color', 0.8, 8), ('Solarize', 0.8, 7)),
    (('Sharpness', 0.4, 7), ('Invert', 0.6, None)),
    (('ShearX', 0.6, 5), ('Equalize', 1.0, None)),
    (('Color', 0.4, 0), ('Equalize', 0.6, None)),
    (('Equalize', 0.4, None), ('Solarize', 0.2, 4)),
    (('Solarize', 0.6, 5), ('AutoContrast', 0.6, None)),
    (('Invert', 0.6, None), ('Equalize', 1.0, None)),
    (('Color', 0.6, 4), ('Contrast', 1.0, 8)),
    (('Equalize', 0.8, None), ('Equalize', 0.6, None)),
)


def _policy_arrays(policy):
  """Per (sub-policy, step): op index into OPS, probability, magnitude, signed."""
  index, prob, magnitude, signed = (np.zeros((len(policy), 2), t)
                                    for t in (np.int32, np.float32, np.float32, bool))
  for i, sub_policy in enumerate(policy):
    for j, (name, p, bin_) in enumerate(sub_policy):
      _, bins, is_signed = OPS[name]
      index[i, j], prob[i, j], signed[i, j] = OP_INDEX[name], p, is_signed
      magnitude[i, j] = 0.0 if bins is None else bins[bin_]
  return index, prob, magnitude, signed


def policy_draws(key, policy=IMAGENET_POLICY):
  """The ops [2] (IDENTITY where a step is not applied) and signed magnitudes [2] of one
  uniformly chosen sub-policy; a signed magnitude is negated with probability 0.5."""
  index, prob, magnitude, signed = map(jnp.asarray, _policy_arrays(policy))
  k_sub, *k_steps = jax.random.split(key, 5)
  sub = jax.random.randint(k_sub, (), 0, len(policy))
  ops, magnitudes = [], []
  for step in range(2):
    k_apply, k_sign = k_steps[2 * step], k_steps[2 * step + 1]
    flip = signed[sub, step] & jax.random.bernoulli(k_sign)
    magnitudes.append(jnp.where(flip, -magnitude[sub, step], magnitude[sub, step]))
    applied = jax.random.uniform(k_apply) < prob[sub, step]
    ops.append(jnp.where(applied, index[sub, step], IDENTITY))
  return jnp.stack(ops), jnp.stack(magnitudes)


def apply_policy(img, ops, magnitudes, policy=IMAGENET_POLICY):
  """Both steps of a sub-policy drawn from `policy` (see policy_draws)."""
  for step in range(2):
    possible = tuple(sorted({sub_policy[step][0] for sub_policy in policy}))
    img = apply_op(img, ops[step], magnitudes[step], possible)
  return img


def autoaugment_image(key, img, policy=IMAGENET_POLICY):
  """One uniformly chosen sub-policy; each step applied with its probability, a signed
  magnitude negated with probability 0.5."""
  return apply_policy(img, *policy_draws(key, policy), policy)
