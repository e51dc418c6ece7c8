"""Multi-crop boxes in TensorFlow (graph-compatible, stateless randomness), and the canvas.

Crop boxes follow torchvision's ``RandomResizedCrop.get_params``; small crops can be
constrained to overlap the key crop (crop 1) as in the paper. All randomness comes from a
per-image stateless seed, so the crops of an image do not depend on tf.data parallelism.

The CPU only decodes and draws boxes: the crops are cut and resized on the accelerator
(revisit_jax/augment/crop.py, PIL's pixels), from the decoded image placed in the top-left
corner of a fixed canvas (``data.canvas_size``; zeros elsewhere), so that a batch has one
shape. COCO's images (longer side at most 640) fit the default 640 canvas as they are, and
their crops are the original's. A larger image is first shrunk, keeping its aspect ratio,
until its longer side equals the canvas (``fit_canvas``: antialiased bilinear, rounded once);
its boxes are then drawn on the shrunk image, so the crops cover the same fractions of the
scene as the original's, from a slightly softer image.

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


def uniforms_needed(layout, constrained: bool) -> int:
  """How many U(0, 1) draws the boxes of one image take: 4 per try (area, ratio, top, left)."""
  total = 0
  for i, (_, count, _, _) in enumerate(layout):
    total += 4 * count * (TRIES + (DRAWS if i > 0 and constrained else 0))
  return total


def draw_uniforms(seed, layout, constrained: bool):
  """float64 [uniforms_needed] of one image, from its stateless seed (the only random op per
  image: the boxes are then computed for a whole batch at once)."""
  return tf.random.stateless_uniform([uniforms_needed(layout, constrained)], seed,
                                     dtype=tf.float64)


def _tries(u, height, width, scale, ratio):
  """torchvision-style draws from uniforms u [..., n, tries, 4] (height, width [...]): boxes
  float64 [..., n, tries, 4] (top, left, height, width) in whole pixels, whether each fits the
  image [..., n, tries] and its target area [..., n, tries]."""
  H = tf.cast(height, tf.float64)[..., None, None]
  W = tf.cast(width, tf.float64)[..., None, None]
  target = H * W * (scale[0] + u[..., 0] * (scale[1] - scale[0]))
  log_ratio = math.log(ratio[0]) + u[..., 1] * (math.log(ratio[1]) - math.log(ratio[0]))
  aspect = tf.exp(log_ratio)
  w = tf.round(tf.sqrt(target * aspect))  # round half to even, like Python's round
  h = tf.round(tf.sqrt(target / aspect))
  fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)
  top = tf.minimum(tf.floor(u[..., 2] * (H - h + 1)), H - h)  # torch.randint(0, H - h + 1)
  left = tf.minimum(tf.floor(u[..., 3] * (W - w + 1)), W - w)
  return tf.stack([top, left, h, w], axis=-1), fits, target


def rrc_boxes(u, height, width, scale, ratio=RATIO):
  """torchvision ``RandomResizedCrop.get_params`` for n independent crops from uniforms
  u [..., n, 10, 4] of images of height, width [...].

  Returns boxes float64 [..., n, 4] as (top, left, height, width) in whole pixels and a bool
  [..., n] that is True where all 10 tries failed and the centred crop was used.
  """
  boxes, fits, _ = _tries(u, height, width, scale, ratio)
  drawn = _pick_first(fits, boxes)
  H = tf.cast(height, tf.float64)[..., None]
  W = tf.cast(width, tf.float64)[..., None]
  in_ratio = W / H
  fw = tf.where(in_ratio > ratio[1], tf.round(H * ratio[1]), W)
  fh = tf.where(in_ratio < ratio[0], tf.round(W / ratio[0]), H)
  centred = tf.stack([tf.floor((H - fh) / 2), tf.floor((W - fw) / 2), fh, fw], axis=-1)
  found = tf.reduce_any(fits, axis=-1)
  centred = tf.broadcast_to(centred, tf.shape(drawn))
  return tf.where(found[..., None], drawn, centred), tf.logical_not(found)


def _overlap_area(boxes, key):
  """Intersection area of boxes [..., n, k, 4] with the key box [..., 4] of their image."""
  key = key[..., None, None, :]

  def extent(start, size):
    lo = tf.maximum(boxes[..., start], key[..., start])
    hi = tf.minimum(boxes[..., start] + boxes[..., size], key[..., start] + key[..., size])
    return tf.maximum(hi - lo, 0.0)

  return extent(0, 2) * extent(1, 3)


def constrained_boxes(u_draws, u_free, height, width, key_box, scale, ratio=RATIO):
  """n crops, each drawn up to 10 times (uniforms u_draws [..., n, 10, 4]) until it fits the
  image and >= 10 % of its target area lies in ``key_box`` [..., 4], as the original's
  ``get_params_conditioned``.

  A crop with no such draw gets one unconstrained random-resized crop (uniforms u_free
  [..., n, 10, 4]). Returns boxes [..., n, 4], the centred-fallback flags [..., n] and the
  constraint fallback flags [..., n].
  """
  cand, fits, target = _tries(u_draws, height, width, scale, ratio)
  ok = fits & (_overlap_area(cand, key_box) >= MIN_COVER * target)
  free, free_centred = rrc_boxes(u_free, height, width, scale, ratio)
  found = tf.reduce_any(ok, axis=-1)
  boxes = tf.where(found[..., None], _pick_first(ok, cand), free)
  return boxes, free_centred & tf.logical_not(found), tf.logical_not(found)


def crop_boxes(u, height, width, layout, constrained: bool):
  """Boxes of each crop group from the uniforms u [..., uniforms_needed] of images of height,
  width [...]: {name: (int32 [..., count, 4], centred [..., count], unconstrained [..., count])}.

  ``unconstrained`` is True for a constrained crop that fell back to a free draw (always
  False for the first group and when ``constrained`` is off).
  """
  batch = tf.shape(u)[:-1]
  out, key_box, first = {}, None, 0

  def take(count, tries):
    nonlocal first
    part = u[..., first:first + 4 * count * tries]
    first += 4 * count * tries
    return tf.reshape(part, tf.concat([batch, [count, tries, 4]], 0))

  for i, (name, count, _, scale) in enumerate(layout):
    if i > 0 and constrained:
      boxes, centred, free = constrained_boxes(take(count, DRAWS), take(count, TRIES), height,
                                               width, key_box, scale)
    else:
      boxes, centred = rrc_boxes(take(count, TRIES), height, width, scale)
      free = tf.zeros_like(centred)
    if i == 0 and constrained:
      key_box = boxes[..., 1, :]
    out[name] = (tf.cast(boxes, tf.int32), centred, free)
  return out


def pil_bilinear(image, size):
  """uint8 image resized to `size` (height, width) as PIL's antialiased bilinear, rounded once."""
  out = tf.image.resize(image, size, method='bilinear', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def fit_canvas(image, canvas: int):
  """uint8 [H, W, 3] as it is if both sides are at most `canvas`, else shrunk (aspect kept,
  the other side rounded) until the longer side is `canvas`."""
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  longer = tf.maximum(height, width)

  def shrink():
    scale = canvas / tf.cast(longer, tf.float64)
    size = tf.cast(tf.round(tf.cast(tf.stack([height, width]), tf.float64) * scale), tf.int32)
    return pil_bilinear(image, tf.clip_by_value(size, 1, canvas))

  return tf.cond(longer > canvas, shrink, lambda: image)


def all_boxes(u, height, width, layout, constrained: bool):
  """int32 [..., crops, 4] (top, left, height, width): every crop's box, in crop-id order."""
  boxes = crop_boxes(u, height, width, layout, constrained)
  return tf.concat([boxes[name][0] for name, *_ in layout], axis=-2)
