"""Crops cut and resized on the accelerator, pixel for pixel as PIL cuts them on the CPU.

The original crops with torchvision's RandomResizedCrop on a PIL image: `img.crop(box)`, then
`Image.resize(size, BILINEAR)`. PIL's bilinear filter is a triangle widened by the downscale
factor (antialiasing); for each output pixel it computes the first input index and weights
over `2 * ceil(factor) + 1` taps at most, turns the weights into 22-bit fixed point, and runs
one pass per axis, rounding to uint8 after each. Here the weights come from the same integer
rule (exact, so the crops equal PIL's bit for bit), and each pass gathers the lines its taps
need (whole columns of the canvas, then rows of the intermediate): a few MFLOP per image,
where dense [out x canvas] products over a 640 px canvas would cost ~2 GFLOP.

Pass order: the original's Pillow (< 13) always resized horizontally first, and so does this.
Pillow >= 13 runs the vertical pass first when the height shrinks by more than twice as many
pixels as the width (python-pillow/Pillow#9549), one grey level apart on a few percent of such
crops' pixels; following it would make each pass choose its axis per crop, which XLA can only
do with a pixel-by-pixel gather (3x slower on a CPU) or a transposed copy of every canvas.
"""

import jax
import jax.numpy as jnp

PRECISION_BITS = 22  # PIL's fixed-point weights for 8-bit images


def max_taps(canvas: int, size: int) -> int:
  """Taps per output pixel when shrinking up to `canvas` pixels to `size`: PIL's ksize."""
  return 2 * -(-canvas // size) + 1


def pil_taps(length, size: int, taps: int):
  """PIL's bilinear precompute_coeffs + normalize_coeffs_8bpc for resizing `length` input
  pixels (traced) to `size`: input indices [size, taps] and fixed-point weights [size, taps]
  (zero past each pixel's last tap).

  Positions are kept as integers in units of 1 / (2 * size): output pixel j is centred at
  (2j + 1) * length, the filter's support is max(length, size) * 2 on each side, so PIL's
  double arithmetic is reproduced exactly.
  """
  j = jnp.arange(size, dtype=jnp.int32)
  centre = (2 * j + 1) * length
  support = 2 * jnp.maximum(length, size)
  first = jnp.maximum((centre - support + size) // (2 * size), 0)
  stop = jnp.minimum((centre + support + size) // (2 * size), length)
  index = first[:, None] + jnp.arange(taps, dtype=jnp.int32)
  distance = jnp.abs((2 * index + 1) * size - centre[:, None])
  weight = jnp.where(index < stop[:, None], jnp.maximum(support - distance, 0), 0)
  total = jnp.sum(weight, axis=1, keepdims=True)
  # round(weight / total * 2**22) in int32: 2**22 = 2**11 * 2**11 keeps the products small.
  quotient, remainder = jnp.divmod(weight << 11, total)
  fixed = (quotient << 11) + ((remainder << 12) + total) // (2 * total)
  return index, fixed


def _round_fixed(acc):
  """PIL's clip8: fixed-point sum -> uint8, rounding half up."""
  acc = (acc + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS
  return jnp.clip(acc, 0, 255).astype(jnp.uint8)


def resized_crop(image, box, size: int, flip):
  """uint8 [size, size, 3]: `image.crop(box).resize((size, size), BILINEAR)` as the original's
  Pillow computes it (horizontal pass first), mirrored if `flip`.

  image: uint8 [H, W, 3] (a canvas; the box lies inside it); box: int32 (top, left, height,
  width). Each pass gathers whole lines (columns, then rows of the intermediate), which XLA
  reads as strided slices rather than pixel by pixel.
  """
  height, width = image.shape[:2]
  top, left, h, w = box[0], box[1], box[2], box[3]
  taps = max_taps(max(height, width), size)
  cols, col_weights = pil_taps(w, size, taps)
  rows, row_weights = pil_taps(h, size, taps)
  picked = image[:, jnp.clip(left + cols, 0, width - 1)]  # [H, size, taps, 3]
  mid = _round_fixed(jnp.sum(picked.astype(jnp.int32) * col_weights[..., None], axis=2))
  picked = mid[jnp.clip(top + rows, 0, height - 1)]  # [size, taps, size, 3]
  out = _round_fixed(jnp.sum(picked.astype(jnp.int32) * row_weights[..., None, None], axis=1))
  # The mirror is a gather of whole columns: as the last op it is also where XLA writes the
  # crop to memory once, rather than recompute it in each of the ops that read it.
  columns = jnp.arange(size)
  return out[:, jnp.where(flip, size - 1 - columns, columns)]


def cut_crops(images, boxes, size: int, flips):
  """uint8 [N, C, size, size, 3] from images uint8 [N, H, W, 3], boxes int [N, C, 4] and
  flips bool [N, C]."""
  one_image = jax.vmap(resized_crop, in_axes=(None, 0, None, 0))
  return jax.vmap(one_image, in_axes=(0, 0, None, 0))(images, boxes.astype(jnp.int32), size,
                                                      flips)
