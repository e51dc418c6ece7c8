"""Crop sampling and resizing against torchvision (get_params; resized_crop on PIL images and on tensors)."""

import numpy as np
import pytest
import scipy.stats
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

# isort: split
import tensorflow as tf  # after torchvision: the other order segfaults (triton import)

from input_pipeline import crops

OURS = (('large', 2, 160, (0.2, 1.0)), ('small', 4, 96, (0.05, 0.14)))
H, W = 427, 640


def _seeds(n):
  return tf.random.experimental.stateless_split(tf.constant([0, 7], tf.int64), n)


def _all_boxes(layout, constrained, n=10_000, height=H, width=W):
  fn = tf.function(
    lambda s: tf.vectorized_map(
      lambda x: crops.crop_boxes(x, height, width, layout, constrained), s
    )
  )
  return {k: tuple(np.asarray(v) for v in vals) for k, vals in fn(_seeds(n)).items()}


def _assert_valid_rrc(boxes, scale, height=H, width=W):
  """Every box lies in the image and its unrounded area and ratio were in range.

  w = round(sqrt(a r)) and h = round(sqrt(a / r)) bound a and r through w +- 0.5 and h +- 0.5.
  """
  top, left, h, w = (boxes[..., k].astype(np.float64) for k in range(4))
  assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
  assert (top + h <= height).all() and (left + w <= width).all()
  area = height * width
  assert ((w + 0.5) * (h + 0.5) >= scale[0] * area).all()
  assert ((w - 0.5) * (h - 0.5) <= scale[1] * area).all()
  assert ((w + 0.5) / (h - 0.5) >= 3 / 4).all()
  assert ((w - 0.5) / (h + 0.5) <= 4 / 3).all()


def _overlap(small, key):
  """Area in pixels of each small box inside the key box, float64."""

  def extent(s, k, a, b):
    return np.clip(
      np.minimum(s[..., a] + s[..., b], k[..., None, a] + k[..., None, b])
      - np.maximum(s[..., a], k[..., None, a]),
      0,
      None,
    )

  small, key = small.astype(np.float64), key.astype(np.float64)
  return extent(small, key, 0, 2) * extent(small, key, 1, 3)


def _cover(small, key):
  """Part of each small box inside the key box."""
  return _overlap(small, key) / (small[..., 2] * small[..., 3]).astype(np.float64)


def _target_floor(boxes):
  """A lower bound of the unrounded target area behind w = round(sqrt(a r)), h = ..."""
  return (boxes[..., 2] - 0.5) * (boxes[..., 3] - 0.5)


def test_10k_draws_in_range_and_constraint_holds():
  out = _all_boxes(OURS, constrained=True)
  large, large_centred, _ = out['large']
  small, small_centred, small_free = out['small']
  _assert_valid_rrc(large[~large_centred], (0.2, 1.0))
  _assert_valid_rrc(small[~small_centred], (0.05, 0.14))
  overlap = _overlap(small, large[:, 1])
  assert (overlap >= 0.1 * _target_floor(small))[~small_free].all()
  rate = small_free.mean()
  print(
    f'constraint fallback rate (ours, 427x640, 40,000 small crops): {rate:.4%}; '
    f'centred fallback rate large {large_centred.mean():.4%}, small {small_centred.mean():.4%}'
  )
  assert rate < 0.05
  # Without the constraint some small crops miss the key crop: the check above is not vacuous.
  free = _all_boxes(OURS, constrained=False)
  free_cover = _cover(free['small'][0], free['large'][0][:, 1]).ravel()
  assert (free_cover < 0.1).mean() > 0.05


def test_constrained_draws_follow_the_rule_for_a_fixed_key_crop():
  """With one key box, the first accepted of 10 iid draws follows the draw distribution given
  acceptance, and all 10 fail with probability (1 - p)^10: a stricter or looser rule shows."""
  n = 20_000
  key = tf.constant([250.0, 400.0, 120.0, 160.0], tf.float64)  # a small key crop near a corner
  boxes, _, unconstrained = (
    np.asarray(x)
    for x in crops.constrained_boxes(tf.constant([8, 9], tf.int64), H, W, key, n, (0.05, 0.14))
  )
  draws, _ = crops.rrc_boxes(tf.constant([10, 11], tf.int64), H, W, (n,), (0.05, 0.14))
  key = np.asarray(key)[None]
  cover, draw_cover = _cover(boxes[None], key)[0], _cover(np.asarray(draws)[None], key)[0]
  p = (draw_cover >= 0.1).mean()
  assert 0.2 < p < 0.6  # a key crop that makes the rule matter
  assert abs(unconstrained.mean() - (1 - p) ** 10) < 0.01, (unconstrained.mean(), (1 - p) ** 10)
  assert scipy.stats.ks_2samp(cover[~unconstrained], draw_cover[draw_cover >= 0.1]).pvalue > 1e-3
  assert scipy.stats.ks_2samp(cover[unconstrained], draw_cover).pvalue > 1e-3


def _original_conditioned(rng, key, n, scale, height, width):
  """The original's get_params_conditioned, typed in from SPEC.md section 3: up to 10 draws
  (a draw that does not fit the image uses one up) until >= 10 % of the target area lies in
  the key box; else an unconstrained draw. Returns (areas [n], fell back [n])."""
  areas, fallback = [], []
  for _ in range(n):
    for _ in range(10):
      target = rng.uniform(*scale) * height * width
      aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
      w, h = round(np.sqrt(target * aspect)), round(np.sqrt(target / aspect))
      if 0 < w <= width and 0 < h <= height:
        box = np.array([rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w])
        if _overlap(box[None], key[None])[0, 0] >= 0.1 * target:
          areas.append(h * w)
          fallback.append(False)
          break
    else:
      fallback.append(True)
  return np.array(areas), np.array(fallback)


def test_constrained_crops_match_the_original_on_an_elongated_image():
  """On a 120 x 900 image many small draws do not fit; each such draw uses up one of the 10."""
  height, width, n, scale = 120, 900, 6000, (0.05, 0.14)
  key = np.array([10.0, 300.0, 100.0, 90.0])
  boxes, _, fell_back = (
    np.asarray(x)
    for x in crops.constrained_boxes(
      tf.constant([3, 4], tf.int64), height, width, tf.constant(key, tf.float64), n, scale
    )
  )
  areas, their_fallback = _original_conditioned(np.random.default_rng(0), key, n, scale,
                                                height, width)
  rate, their_rate = fell_back.mean(), their_fallback.mean()
  assert 0.05 < their_rate < 0.5  # the case where the counting of misfits matters
  se = np.sqrt(their_rate * (1 - their_rate) * 2 / n)
  assert abs(rate - their_rate) < 4 * se, (rate, their_rate)
  ours = boxes[~fell_back]
  assert scipy.stats.ks_2samp(ours[:, 2] * ours[:, 3], areas).pvalue > 1e-3


def _torch_boxes(n, scale, height, width):
  torch.manual_seed(0)
  img = torch.zeros(3, height, width)
  return np.array(
    [T.RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3]) for _ in range(n)]
  )


@pytest.mark.parametrize(
  'scale,height,width', [((0.2, 1.0), H, W), ((0.05, 0.14), H, W), ((0.2, 1.0), 200, 640)]
)
def test_rrc_distribution_matches_torchvision(scale, height, width):
  n = 5_000
  ref = _torch_boxes(n, scale, height, width)
  ours, centred = (
    np.asarray(x)
    for x in crops.rrc_boxes(tf.constant([3, 4], tf.int64), height, width, (n,), scale)
  )

  def stats(b):
    top, left, h, w = b.T.astype(np.float64)
    return {
      'area': h * w / (height * width),
      'log_ratio': np.log(w / h),
      'centre_y': (top + h / 2) / height,
      'centre_x': (left + w / 2) / width,
    }

  s_ref, s_ours = stats(ref), stats(ours)
  for k in s_ref:
    assert scipy.stats.ks_2samp(s_ref[k], s_ours[k]).pvalue > 1e-3, k
    se = np.sqrt(s_ref[k].var() / n + s_ours[k].var() / n)
    assert abs(s_ref[k].mean() - s_ours[k].mean()) < 4 * se + 1e-9, k
  # Fallback rate: torchvision's fallback is the centred box at the clamped ratio.
  ref_rate = np.all(ref == _centred_box(height, width), axis=1).mean()
  rate = centred.mean()
  se = np.sqrt((rate * (1 - rate) + ref_rate * (1 - ref_rate)) / n)
  assert abs(rate - ref_rate) < 4 * se + 1e-3, (rate, ref_rate)
  print(
    f'{height}x{width} scale {scale}: centred fallback rate {rate:.4f}, torchvision {ref_rate:.4f}'
  )


def _centred_box(height, width):
  """torchvision's documented fallback: the largest centred box with ratio clamped to [3/4, 4/3]."""
  h, w = height, width
  if width / height < 3 / 4:
    h = round(width / (3 / 4))
  elif width / height > 4 / 3:
    w = round(height * 4 / 3)
  return np.array([(height - h) // 2, (width - w) // 2, h, w])


@pytest.mark.parametrize('height,width', [(10, 1000), (1000, 10), (7, 500)])
def test_centred_fallback_equals_torchvision(height, width):
  ref = _torch_boxes(1, (0.2, 1.0), height, width)[0]
  boxes, centred = crops.rrc_boxes(tf.constant([1, 2], tf.int64), height, width, (3,), (0.2, 1.0))
  assert np.asarray(centred).all()
  np.testing.assert_array_equal(np.asarray(boxes), np.tile(ref, (3, 1)))


def _test_image(height=48, width=64):
  """A smooth gradient with texture and noise: edges and flat parts both appear."""
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:height, 0:width]
  base = np.stack(
    [x * 255 / width, y * 255 / height, 128 + 100 * np.sin(x / 3.0) * np.cos(y / 5.0)], -1
  )
  return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


# One group per size: crops of different sizes, some at the image edges, one of a single pixel.
GROUPS = [
  (((3, 5, 40, 50), (0, 50, 30, 14), (10, 0, 21, 33)), 16),
  (((2, 4, 10, 12), (40, 60, 8, 4)), 32),
  (((0, 0, 48, 64),), 48),
  (((5, 7, 33, 21), (1, 43, 47, 21), (0, 0, 1, 1)), 20),
]


@pytest.mark.parametrize('boxes,size', GROUPS)
def test_resized_crops_close_to_torchvision_pil(boxes, size):
  img = _test_image()
  ours = crops.resized_crops(tf.constant(img), tf.constant(boxes, tf.int32), size).numpy()
  assert ours.dtype == np.uint8 and ours.shape == (len(boxes), size, size, 3)
  for k, box in enumerate(boxes):
    ref = np.asarray(
      TF.resized_crop(
        Image.fromarray(img),
        *box,
        [size, size],
        interpolation=T.InterpolationMode.BILINEAR,
        antialias=True,
      )
    )
    diff = np.abs(ours[k].astype(int) - ref.astype(int))
    # PIL rounds to uint8 between its two separable passes, we round once: 1 grey level at most.
    assert diff.max() <= 1 and diff.mean() < 0.3, (box, diff.max(), diff.mean())


@pytest.mark.parametrize('boxes,size', GROUPS)
def test_resized_crops_equal_torchvision_float_antialias(boxes, size):
  """torchvision's tensor resize uses PIL's filter in float with one rounding, like ours: they
  differ only where the float64 value is a rounding tie (x.5) up to float32 error."""
  img = _test_image()
  ours = crops.resized_crops(tf.constant(img), tf.constant(boxes, tf.int32), size).numpy()
  chw = torch.from_numpy(img).permute(2, 0, 1).double()
  for k, box in enumerate(boxes):
    ref = TF.resized_crop(chw, *box, [size, size], antialias=True)
    ref = ref.clamp(0, 255).permute(1, 2, 0).numpy()
    diff = np.abs(ours[k] - ref)
    near_tie = np.abs(np.abs(ref - np.round(ref)) - 0.5) < 1e-3
    assert diff.max() <= 0.5 + 1e-3, (box, diff.max())
    assert (diff[~near_tie] < 0.5).all(), box


def test_multi_crop_shapes_determinism_and_content():
  img = tf.constant(_test_image())
  seed = tf.constant([5, 6], tf.int64)
  a = crops.multi_crop(img, seed, OURS, True)
  b = crops.multi_crop(img, seed, OURS, True)
  c = crops.multi_crop(img, tf.constant([5, 7], tf.int64), OURS, True)
  assert a['large'].shape == (2, 160, 160, 3) and a['small'].shape == (4, 96, 96, 3)
  assert a['large'].dtype == tf.uint8
  for k in a:
    np.testing.assert_array_equal(a[k].numpy(), b[k].numpy())
    assert not np.array_equal(a[k].numpy(), c[k].numpy())
  # Each crop is torchvision's resized_crop of its box.
  boxes = crops.crop_boxes(seed, 48, 64, OURS, True)
  top, left, h, w = boxes['small'][0][2].numpy()
  ref = np.asarray(
    TF.resized_crop(Image.fromarray(_test_image()), top, left, h, w, [96, 96], antialias=True)
  )
  assert np.abs(a['small'][2].numpy().astype(int) - ref).max() <= 1


def test_tiny_image_gives_full_size_crops():
  img = tf.constant(_test_image(10, 10))
  out = crops.multi_crop(img, tf.constant([0, 1], tf.int64), OURS, True)
  assert out['large'].shape == (2, 160, 160, 3) and out['small'].shape == (4, 96, 96, 3)


@pytest.mark.parametrize(
  'layout,constrained,match',
  [
    ((), False, 'empty'),
    ((('large', 2, 160),), False, 'not \\(name, count'),
    ((('large', 2, 160, (0.2, 1.5)),), False, "'large'.*area range"),
    ((('large', 0, 160, (0.2, 1.0)),), False, "'large'.*>= 1"),
    ((('large', 1, 160, (0.2, 1.0)), ('small', 2, 96, (0.05, 0.14))), True, 'key crop'),
    ((('a', 2, 160, (0.2, 1.0)), ('a', 2, 96, (0.05, 0.14))), False, 'repeats'),
  ],
)
def test_bad_layout_is_named(layout, constrained, match):
  with pytest.raises(ValueError, match=match):
    crops.check_layout(layout, constrained)
