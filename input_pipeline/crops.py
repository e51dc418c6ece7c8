"""Multi-crop sampling and resizing in TensorFlow (graph-compatible, stateless randomness).

Crop boxes follow torchvision's ``RandomResizedCrop.get_params``; small crops can be
constrained to overlap the key crop (crop 1) as in the paper. All randomness comes from a
per-image stateless seed, so the crops of an image do not depend on tf.data parallelism.

Resizing: the original ran torchvision on PIL images (bilinear, antialiased when
shrinking). We slice the box and call ``tf.image.resize(..., antialias=True)``, which uses the
same triangle filter widened by the scale factor. It computes in float32 and rounds once,
where PIL rounds to uint8 after each of its two separable passes, so ~13 % of the pixels
differ by one grey level, none by more (tests/test_crops.py). This resize is over half of the
CPU stage's time. A resize written as two blocked matrix products with PIL's weights took
~20 % less CPU on the crops alone but gained nothing measurable end to end, and
``tf.image.crop_and_resize`` is ~2.5x faster but does not antialias, so shrinking a 500 px
crop to 96 px would alias (BENCHMARKS.md).

A layout is a tuple of groups ``(name, count, size, (min_area, max_area))``, e.g.
``(('large', 2, 160, (0.2, 1.0)), ('small', 4, 96, (0.05, 0.14)))``. Crops are numbered
globally in group order; crop 1 (the second crop of the first group) is the key crop.
"""

import math

from input_pipeline.sources import import_tf

tf = import_tf()

RATIO = (3 / 4, 4 / 3)
TRIES = 10  # torchvision's tries per random-resized-crop
DRAWS = 10  # draws per constrained crop before an unconstrained one
MIN_COVER = 0.1  # part of a constrained crop's target area that must lie inside the key crop


def layout_of(config) -> tuple:
  """A pretraining config's crop groups: 2 large crops (query, key), then the small ones."""
  c = config.crops
  layout = (('large', 2, c.large_size, tuple(c.large_scale)),)
  if c.num_small:
    layout += (('small', c.num_small, c.small_size, tuple(c.small_scale)),)
  return layout


def check_layout(layout, constrained: bool) -> None:
  """Raise ValueError naming the bad group of a crop layout."""
  if not layout:
    raise ValueError('crop layout is empty')
  names = set()
  for group in layout:
    try:
      name, count, size, (lo, hi) = group
    except (TypeError, ValueError):
      raise ValueError(
        f'crop layout group {group!r} is not (name, count, size, (min_area, max_area))'
      ) from None
    if name in names:
      raise ValueError(f'crop layout repeats the group name {name!r}')
    names.add(name)
    if int(count) < 1 or int(size) < 1:
      raise ValueError(
        f'crop layout group {name!r}: count and size must be >= 1, got {count}, {size}'
      )
    if not 0 < lo <= hi <= 1:
      raise ValueError(f'crop layout group {name!r}: area range {(lo, hi)} is not within (0, 1]')
  if constrained and layout[0][1] < 2:
    raise ValueError(
      f'constrained crops need the key crop (crop 1) in the first group {layout[0][0]!r}, '
      f'which has only {layout[0][1]} crop'
    )


def _pick_first(ok, values):
  """values[..., k, :] at the first k where ok[..., k]; rows without any are arbitrary."""
  onehot = tf.one_hot(
    tf.argmax(tf.cast(ok, tf.int32), axis=-1), tf.shape(ok)[-1], dtype=values.dtype
  )
  return tf.reduce_sum(values * onehot[..., None], axis=-2)


def _tries(seed, height, width, shape, scale, ratio, tries):
  """``tries`` torchvision-style draws for each of ``shape``: boxes float64 [*shape, tries, 4]
  (top, left, height, width) in whole pixels, whether each fits the image [*shape, tries] and
  its target area [*shape, tries]."""
  s_area, s_ratio, s_pos = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  H = tf.cast(height, tf.float64)
  W = tf.cast(width, tf.float64)
  shape = tuple(shape) + (tries,)
  target = H * W * tf.random.stateless_uniform(shape, s_area, scale[0], scale[1], tf.float64)
  aspect = tf.exp(
    tf.random.stateless_uniform(shape, s_ratio, math.log(ratio[0]), math.log(ratio[1]), tf.float64)
  )
  w = tf.round(tf.sqrt(target * aspect))  # round half to even, like Python's round
  h = tf.round(tf.sqrt(target / aspect))
  fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)
  pos = tf.random.stateless_uniform(shape + (2,), s_pos, 0.0, 1.0, tf.float64)
  top = tf.minimum(tf.floor(pos[..., 0] * (H - h + 1)), H - h)  # torch.randint(0, H - h + 1)
  left = tf.minimum(tf.floor(pos[..., 1] * (W - w + 1)), W - w)
  return tf.stack([top, left, h, w], axis=-1), fits, target


def rrc_boxes(seed, height, width, shape, scale, ratio=RATIO):
  """torchvision ``RandomResizedCrop.get_params`` for a batch ``shape`` of independent draws.

  Returns boxes float64 [*shape, 4] as (top, left, height, width) in whole pixels and a bool
  [*shape] that is True where all 10 tries failed and the centred crop was used.
  """
  boxes, fits, _ = _tries(seed, height, width, shape, scale, ratio, TRIES)
  drawn = _pick_first(fits, boxes)
  H = tf.cast(height, tf.float64)
  W = tf.cast(width, tf.float64)
  in_ratio = W / H
  fw = tf.where(in_ratio > ratio[1], tf.round(H * ratio[1]), W)
  fh = tf.where(in_ratio < ratio[0], tf.round(W / ratio[0]), H)
  centred = tf.stack([tf.floor((H - fh) / 2), tf.floor((W - fw) / 2), fh, fw])
  found = tf.reduce_any(fits, axis=-1)
  return tf.where(found[..., None], drawn, centred), tf.logical_not(found)


def _overlap_area(boxes, key):
  """Intersection area of boxes [..., 4] with one box [4], all (top, left, height, width)."""

  def extent(start, size):
    lo = tf.maximum(boxes[..., start], key[start])
    hi = tf.minimum(boxes[..., start] + boxes[..., size], key[start] + key[size])
    return tf.maximum(hi - lo, 0.0)

  return extent(0, 2) * extent(1, 3)


def constrained_boxes(seed, height, width, key_box, count, scale, ratio=RATIO):
  """``count`` crops, each drawn up to 10 times until it fits the image and >= 10 % of its
  target area lies in ``key_box``, as the original's ``get_params_conditioned``.

  A crop with no such draw gets one unconstrained random-resized crop. Returns boxes
  [count, 4], the centred-fallback flags [count] and the constraint fallback flags [count].
  """
  s_draw, s_free = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  cand, fits, target = _tries(s_draw, height, width, (count,), scale, ratio, DRAWS)
  ok = fits & (_overlap_area(cand, key_box) >= MIN_COVER * target)
  free, free_centred = rrc_boxes(s_free, height, width, (count,), scale, ratio)
  found = tf.reduce_any(ok, axis=-1)
  boxes = tf.where(found[:, None], _pick_first(ok, cand), free)
  return boxes, free_centred & tf.logical_not(found), tf.logical_not(found)


def crop_boxes(seed, height, width, layout, constrained: bool):
  """Boxes of each crop group: {name: (int32 [count, 4], centred [count], unconstrained [count])}.

  ``unconstrained`` is True for a constrained crop that fell back to a free draw (always
  False for the first group and when ``constrained`` is off).
  """
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, len(layout)))
  out = {}
  key_box = None
  for i, (name, count, _, scale) in enumerate(layout):
    if i > 0 and constrained:
      boxes, centred, free = constrained_boxes(seeds[i], height, width, key_box, count, scale)
    else:
      boxes, centred = rrc_boxes(seeds[i], height, width, (count,), scale)
      free = tf.zeros([count], tf.bool)
    if i == 0 and constrained:
      key_box = boxes[1]
    out[name] = (tf.cast(boxes, tf.int32), centred, free)
  return out


def pil_bilinear(image, size):
  """uint8 image resized to `size` (height, width) as PIL's antialiased bilinear, rounded once."""
  out = tf.image.resize(image, size, method='bilinear', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def resized_crops(image, boxes, size: int):
  """uint8 [n, size, size, 3]: the crops of uint8 [H, W, 3] resized as PIL's antialiased bilinear.

  ``boxes``: int32 [n, 4] (top, left, height, width) with a static n.
  """
  out = []
  for k in range(boxes.shape[0]):
    top, left, height, width = tf.unstack(boxes[k])
    out.append(pil_bilinear(image[top : top + height, left : left + width], (size, size)))
  return tf.stack(out)


def multi_crop(image, seed, layout, constrained: bool):
  """All crops of one decoded image: {name: uint8 [count, size, size, 3]}."""
  shape = tf.shape(image)
  boxes = crop_boxes(seed, shape[0], shape[1], layout, constrained)
  return {name: resized_crops(image, boxes[name][0], size) for name, _, size, _ in layout}
