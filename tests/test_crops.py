"""Crop box sampling against torchvision (RandomResizedCrop.get_params) and the original's
constrained rule. The crops themselves are cut on the device: tests/test_device_crops.py."""

import numpy as np
import pytest
import scipy.stats
import torch
import torchvision.transforms as T

# isort: split
import tensorflow as tf  # after torchvision: the other order segfaults (triton import)

from input_pipeline import crops

OURS = (('large', 2, 160, (0.2, 1.0)), ('small', 4, 96, (0.05, 0.14)))
H, W = 427, 640


def _uniforms(seed, *shape):
  """U(0, 1) float64 draws of the given shape (a stateless seed per test)."""
  return tf.random.stateless_uniform(shape, tf.constant([seed, 7], tf.int64), dtype=tf.float64)


def _all_boxes(layout, constrained, n=10_000, height=H, width=W):
  """The boxes of n images at once, as the input pipeline computes them for a batch."""
  u = _uniforms(0, n, crops.uniforms_needed(layout, constrained))
  boxes = crops.crop_boxes(u, tf.fill([n], height), tf.fill([n], width), layout, constrained)
  return {k: tuple(np.asarray(v) for v in vals) for k, vals in boxes.items()}


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
    for x in crops.constrained_boxes(_uniforms(8, n, crops.DRAWS, 4),
                                     _uniforms(9, n, crops.TRIES, 4), H, W, key, (0.05, 0.14))
  )
  draws, _ = crops.rrc_boxes(_uniforms(10, n, crops.TRIES, 4), H, W, (0.05, 0.14))
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
      _uniforms(3, n, crops.DRAWS, 4), _uniforms(4, n, crops.TRIES, 4), height, width,
      tf.constant(key, tf.float64), scale
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
    for x in crops.rrc_boxes(_uniforms(3, n, crops.TRIES, 4), height, width, scale)
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
  boxes, centred = crops.rrc_boxes(_uniforms(1, 3, crops.TRIES, 4), height, width, (0.2, 1.0))
  assert np.asarray(centred).all()
  np.testing.assert_array_equal(np.asarray(boxes), np.tile(ref, (3, 1)))


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
