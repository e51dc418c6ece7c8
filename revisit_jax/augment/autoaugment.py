"""AutoAugment, ImageNet policy, on uint8 images [H, W, 3] (values 0-255).

Each op matches torchvision.transforms.functional on a uint8 CHW tensor, as torchvision's
AutoAugment calls it: blends compute in float32 and truncate to uint8, the sharpness blur is
rounded, geometric ops sample the nearest pixel (round half to even) at torchvision's
pixel-centre grid and fill 0. Three deliberate differences, from SPEC.md / the original
code: luma weights 0.299/0.587/0.114 (torchvision: 0.2989 for red) in Color and Contrast,
Solarize thresholds linspace(256, 0, 10) (torchvision: linspace(255, 0, 10)), and ShearX
about the image centre by tan(m), as the original's vendored torchvision 0.9 F.affine did.
"""

import jax
import jax.numpy as jnp
import numpy as np

from revisit_jax.augment.color import blend, grayscale


def _affine_nearest(img, matrix):
  """Sample img at inverse-mapped pixel centres, as torchvision's affine/rotate (nearest,
  zeros outside). matrix = (a, b, c, d, e, f) maps output to input coordinates centred on the
  image, y pointing down, like torchvision's _get_inverse_affine_matrix."""
  h, w = img.shape[0], img.shape[1]
  a, b, c, d, e, f = matrix
  x = jnp.arange(w, dtype=jnp.float32)[None, :] + (0.5 - w / 2)
  y = jnp.arange(h, dtype=jnp.float32)[:, None] + (0.5 - h / 2)
  # torch's grid_sample route: normalise by the half size, then unnormalise (align_corners=False).
  gx = (a * x + b * y + c) / (0.5 * w)
  gy = (d * x + e * y + f) / (0.5 * h)
  ix = jnp.round(((gx + 1) * w - 1) / 2).astype(jnp.int32)
  iy = jnp.round(((gy + 1) * h - 1) / 2).astype(jnp.int32)
  inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
  out = img[jnp.clip(iy, 0, h - 1), jnp.clip(ix, 0, w - 1)]
  return jnp.where(inside[..., None], out, jnp.zeros_like(out))


def shear_x(img, m):
  """The original's ShearX, F.affine(shear=[degrees(m), 0]) with the default centre: rows
  slide by tan(m) * (y - h/2) about the image centre. (torchvision's own AutoAugment since
  0.10 shears by m about the top-left corner instead.)"""
  return _affine_nearest(img, (1.0, jnp.tan(m), 0.0, 0.0, 1.0, 0.0))


def rotate(img, degrees):
  """F.rotate: counter-clockwise about the image centre, same size."""
  t = jnp.deg2rad(degrees)
  cos, sin = jnp.cos(t), jnp.sin(t)
  return _affine_nearest(img, (cos, -sin, 0.0, sin, cos, 0.0))


def _to_uint8(x):
  """torch's float -> uint8 cast of a value already clamped to [0, 255]: truncation."""
  return jnp.floor(x).astype(jnp.uint8)


def color(img, factor):
  """F.adjust_saturation on uint8: blend with the luma image truncated to uint8."""
  x = img.astype(jnp.float32)
  return _to_uint8(blend(x, jnp.floor(grayscale(x)), factor, 255.0))


def contrast(img, factor):
  """F.adjust_contrast on uint8: blend with the mean of the uint8 luma image."""
  x = img.astype(jnp.float32)
  mean = jnp.mean(jnp.floor(grayscale(x)))
  return _to_uint8(blend(x, mean, factor, 255.0))


def sharpness(img, factor):
  """F.adjust_sharpness: blend with a [[1,1,1],[1,5,1],[1,1,1]]/13 smoothing (rounded to
  uint8) of the interior; the one-pixel border keeps its values."""
  x = img.astype(jnp.float32)
  h, w = x.shape[0], x.shape[1]
  weights = np.ones((3, 3), np.float32)
  weights[1, 1] = 5.0
  weights /= weights.sum()
  smooth = sum(weights[i, j] * x[i:i + h - 2, j:j + w - 2] for i in range(3) for j in range(3))
  degenerate = x.at[1:-1, 1:-1].set(jnp.round(smooth))
  return _to_uint8(blend(x, degenerate, factor, 255.0))


def posterize(img, bits):
  """Keep the top `bits` bits of each value."""
  mask = (0xFF << (8 - jnp.asarray(bits, jnp.int32))) & 0xFF
  return img & mask.astype(jnp.uint8)


def solarize(img, threshold):
  """Invert every value >= threshold (a threshold above 255 leaves the image alone)."""
  return jnp.where(img.astype(jnp.float32) >= threshold, 255 - img, img)


def autocontrast(img):
  """Stretch each channel to [0, 255]; constant channels are kept."""
  x = img.astype(jnp.float32)
  lo = jnp.min(x, axis=(0, 1))
  hi = jnp.max(x, axis=(0, 1))
  flat = hi == lo
  scale = jnp.where(flat, 1.0, 255.0 / jnp.where(flat, 1.0, hi - lo))
  lo = jnp.where(flat, 0.0, lo)
  return _to_uint8(jnp.clip((x - lo) * scale, 0.0, 255.0))


def equalize(img):
  """torchvision's F.equalize per channel: lut = (cdf + step // 2) // step, shifted by one,
  with step = (pixels not at the top value) // 255; a channel with step 0 is kept."""
  h, w, ch = img.shape
  flat = img.reshape(h * w, ch).astype(jnp.int32)
  hist = jnp.zeros((ch, 256), jnp.int32).at[jnp.arange(ch)[None, :], flat].add(1)
  top = jnp.take_along_axis(hist, jnp.max(flat, axis=0)[:, None], axis=1)[:, 0]
  step = (h * w - top) // 255
  lut = (jnp.cumsum(hist, axis=1) + step[:, None] // 2) // jnp.maximum(step, 1)[:, None]
  lut = jnp.clip(jnp.pad(lut, ((0, 0), (1, 0)))[:, :-1], 0, 255).astype(jnp.uint8)
  out = jnp.take_along_axis(lut, flat.T, axis=1).T.reshape(h, w, ch)
  return jnp.where(step > 0, out, img)


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
  names = list(OPS)
  index, prob, magnitude, signed = (np.zeros((len(policy), 2), t)
                                    for t in (np.int32, np.float32, np.float32, bool))
  for i, sub_policy in enumerate(policy):
    for j, (name, p, bin_) in enumerate(sub_policy):
      _, bins, is_signed = OPS[name]
      index[i, j], prob[i, j], signed[i, j] = names.index(name), p, is_signed
      magnitude[i, j] = 0.0 if bins is None else bins[bin_]
  return index, prob, magnitude, signed


def autoaugment_image(key, img, policy=IMAGENET_POLICY):
  """One uniformly chosen sub-policy; each step applied with its probability, a signed
  magnitude negated with probability 0.5. Under vmap lax.switch evaluates all ops."""
  index, prob, magnitude, signed = map(jnp.asarray, _policy_arrays(policy))
  branches = [fn for fn, _, _ in OPS.values()]
  k_sub, *k_steps = jax.random.split(key, 5)
  sub = jax.random.randint(k_sub, (), 0, len(policy))
  for step in range(2):
    k_apply, k_sign = k_steps[2 * step], k_steps[2 * step + 1]
    flip = signed[sub, step] & jax.random.bernoulli(k_sign)
    m = jnp.where(flip, -magnitude[sub, step], magnitude[sub, step])
    out = jax.lax.switch(index[sub, step], branches, img, m)
    img = jnp.where(jax.random.uniform(k_apply) < prob[sub, step], out, img)
  return img
