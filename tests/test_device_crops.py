"""Crops cut on the device (revisit_jax.augment.crop) against PIL, the original's resizer:
torchvision's RandomResizedCrop on a PIL image is `img.crop(box).resize(size, BILINEAR)`.
Bit for bit against PIL in the original's pass order, within one grey level of torchvision on
the installed Pillow (>= 13 may resize vertically first)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torchvision.transforms.functional as TF
from PIL import Image
from sklearn.datasets import load_sample_images

# isort: split
import tensorflow as tf  # after torchvision: the other order segfaults (triton import)

from input_pipeline import crops, sources
from revisit_jax.augment import cut_crops
from revisit_jax.augment.crop import max_taps, pil_taps

DAVIS = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'davis-car-shadow'
LAYOUTS = {'ours': ((('large', 2, 160, (0.2, 1.0)), ('small', 4, 96, (0.05, 0.14))), True),
           'moco': ((('large', 2, 224, (0.2, 1.0)),), False)}
CANVAS = 864  # holds the 427 x 640 photos and the 854 x 480 DAVIS frames


def pil_weights(length, size):
  """PIL's precompute_coeffs + normalize_coeffs_8bpc (Resample.c, bilinear) in float64, as
  PIL computes them: [(first index, fixed-point weights)] per output pixel."""
  scale = length / size
  filterscale = max(scale, 1.0)
  out = []
  for xx in range(size):
    centre = (xx + 0.5) * scale
    first = max(int(centre - filterscale + 0.5), 0)
    stop = min(int(centre + filterscale + 0.5), length)
    w = [max(0.0, 1.0 - abs((x + first - centre + 0.5) / filterscale)) for x in range(stop - first)]
    total = sum(w)
    out.append((first, [int(0.5 + v / total * (1 << 22)) for v in w]))
  return out


@pytest.mark.parametrize('length,size', [(640, 160), (427, 96), (200, 224), (333, 160), (1, 96),
                                         (96, 96), (641, 7), (17, 3)])
def test_fixed_point_weights_are_pils(length, size):
  index, weights = map(np.asarray, jax.jit(pil_taps, static_argnums=(1, 2))(
      jnp.int32(length), size, max_taps(max(length, size), size)))
  for j, (first, want) in enumerate(pil_weights(length, size)):
    assert index[j, 0] == first, j
    np.testing.assert_array_equal(weights[j, :len(want)], want, err_msg=str(j))
    assert not weights[j, len(want):].any()


@pytest.fixture(scope='module')
def photos():
  """Real photos decoded as training decodes them (PIL's pixels): scikit-learn's two JPEGs
  and three DAVIS frames."""
  paths = list(load_sample_images().filenames)
  paths += [str(DAVIS / 'JPEGImages' / '480p' / 'car-shadow' / f'{k:05d}.jpg') for k in (0, 20, 39)]
  return [sources.FolderSource.decode(p).numpy() for p in paths]


def pil_horizontal_first(img, box, size):
  """PIL's bilinear resize of the crop with the horizontal pass first, as Pillow < 13 (the
  original's) always ran it: two single-axis resizes, since PIL skips an axis whose size and
  box it leaves unchanged and rounds to uint8 between passes either way."""
  top, left, h, w = box
  crop = Image.fromarray(img).crop((left, top, left + w, top + h))
  return np.asarray(crop.resize((size, h), Image.BILINEAR).resize((size, size), Image.BILINEAR))


@pytest.fixture(scope='module')
def cut():
  return jax.jit(cut_crops, static_argnums=2)


@pytest.mark.parametrize('name', sorted(LAYOUTS))
def test_device_crops_equal_pil_on_photos_for_the_samplers_boxes(name, photos, cut):
  """For boxes from the project's own sampler, half of them mirrored: equal to PIL in the
  original's pass order, and no pixel more than one grey level from torchvision's crop on the
  installed Pillow."""
  layout, constrained = LAYOUTS[name]
  for k, image in enumerate(photos):
    h, w = image.shape[:2]
    canvas = np.zeros((1, CANVAS, CANVAS, 3), np.uint8)
    canvas[0, :h, :w] = image
    pil = Image.fromarray(image)
    for seed in range(2):
      u = crops.draw_uniforms(tf.constant([seed, k], tf.int64), layout, constrained)
      boxes = crops.crop_boxes(u, h, w, layout, constrained)
      for group, count, size, _ in layout:
        box = boxes[group][0].numpy()
        flips = np.arange(count) % 2 == seed
        got = np.asarray(cut(canvas, box[None], size, flips[None]))[0]
        for crop, (top, left, bh, bw), flip in zip(got, box, flips, strict=True):
          mirror = (lambda a: a[:, ::-1]) if flip else (lambda a: a)
          original = pil_horizontal_first(image, (top, left, bh, bw), size)
          np.testing.assert_array_equal(crop, mirror(original), err_msg=str((name, k, group)))
          installed = np.asarray(TF.resized_crop(pil, top, left, bh, bw, [size, size],
                                                 antialias=True))
          assert np.abs(crop.astype(int) - mirror(installed)).max() <= 1, (name, k, group)


def _test_image(height=48, width=64):
  """A smooth gradient with texture and noise: edges and flat parts both appear."""
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:height, 0:width]
  base = np.stack(
    [x * 255 / width, y * 255 / height, 128 + 100 * np.sin(x / 3.0) * np.cos(y / 5.0)], -1
  )
  return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


# Boxes at the image edges, a single pixel, up- and downscaling, crops whose height shrinks by
# more than twice their width's change (Pillow >= 13 would resize them vertically first).
BOXES = [(3, 5, 40, 50), (0, 50, 30, 14), (10, 0, 21, 33), (2, 4, 10, 12), (40, 60, 8, 4),
         (0, 0, 48, 64), (5, 7, 33, 21), (1, 43, 47, 21), (0, 0, 1, 1), (0, 30, 48, 12)]


@pytest.mark.parametrize('size', [16, 20, 32, 48])
def test_device_crops_equal_pil_on_hand_boxes(size, cut):
  img = _test_image()
  boxes = np.asarray(BOXES, np.int32)[None]
  flips = (np.arange(len(BOXES)) % 3 == 0)[None]
  got = np.asarray(cut(img[None], boxes, size, flips))[0]
  assert got.dtype == np.uint8 and got.shape == (len(BOXES), size, size, 3)
  for crop, box, flip in zip(got, BOXES, flips[0], strict=True):
    want = pil_horizontal_first(img, box, size)
    np.testing.assert_array_equal(crop, want[:, ::-1] if flip else want, err_msg=str(box))
