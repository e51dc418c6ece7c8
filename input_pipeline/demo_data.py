"""The demo's labelled image set, built from data scikit-learn ships (no download).

scikit-learn's ``load_digits`` holds 1,797 labelled 8x8 grey digits. Each one becomes a
32x32 RGB uint8 image: bilinearly upsampled, shifted by up to 3 px and painted in a light
digit on a dark ground, both tinted from one small palette (drawn from a fixed seed). The
tints are few and shared by many images of every digit, so they cannot identify an image:
contrastive learning then has to use the shapes (colours unique to each image were a
shortcut the network learned instead of the digits).
Every fifth image (index % 5 == 0) is the test split, the rest the train split.
"""

import functools

import numpy as np

SIZE = 32
PALETTE = 4
SPLITS = ('train', 'test')


@functools.lru_cache(maxsize=1)
def _all_images() -> tuple[np.ndarray, np.ndarray]:
  import scipy.ndimage
  from sklearn.datasets import load_digits

  digits = load_digits()
  rng = np.random.default_rng(0)
  n = len(digits.target)
  grey = digits.images / 16.0  # [N, 8, 8] in [0, 1]
  big = scipy.ndimage.zoom(grey, (1, 3, 3), order=1)  # [N, 24, 24]
  canvas = np.zeros((n, SIZE, SIZE))
  offsets = rng.integers(1, SIZE - 24, size=(n, 2))
  for k, (y, x) in enumerate(offsets):
    canvas[k, y : y + 24, x : x + 24] = big[k]
  canvas = np.clip(canvas, 0.0, 1.0)[..., None]
  palette = rng.uniform(0.7, 1.0, size=(PALETTE, 3))
  tint = palette[rng.integers(0, PALETTE, size=n)][:, None, None, :]
  foreground = 255 * tint
  background = 60 * tint[:, :, :, ::-1]
  images = np.round(canvas * foreground + (1 - canvas) * background).astype(np.uint8)
  return images, digits.target.astype(np.int64)


def load_demo(split: str = 'train') -> tuple[np.ndarray, np.ndarray]:
  """Images uint8 [N, 32, 32, 3] and labels int64 [N] (10 classes) of the given split."""
  if split not in SPLITS:
    raise ValueError(f'demo data split {split!r} is not one of {SPLITS}')
  images, labels = _all_images()
  test = np.arange(len(labels)) % 5 == 0
  keep = test if split == 'test' else ~test
  return images[keep], labels[keep]
