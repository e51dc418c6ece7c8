"""The demo's labelled image set: eight kinds of texture drawn from a fixed seed (no download).

1,800 RGB uint8 32x32 images, 225 per class: horizontal stripes, vertical stripes,
checkerboard, dot grid, rings, grid lines, wavy lines and scattered crosses. Each image draws
its own period (4-8 px), phases, tilt (under 9 degrees) and its two colours, a light and a
dark one from a small palette shared by all classes, either way round. Colour dominates what
a network at initialisation sees, so its kNN top-1 is modest; the textures survive cropping
and colour jitter, so contrastive learning finds them. The palette is small so that colour
cannot tell images apart, and shared so that it cannot tell classes apart.
(scikit-learn's 8x8 digits were the first demo set: there a random ResNet already scores
60-67 % and neither this code nor a plain PyTorch MoCo beat it within the CPU budget.)
Every fifth image (index % 5 == 0) is the test split, the rest the train split.
"""

import functools

import numpy as np

SIZE = 32
CLASSES = (
  'horizontal stripes', 'vertical stripes', 'checkerboard', 'dot grid',
  'rings', 'grid lines', 'wavy lines', 'scattered crosses',
)
PER_CLASS = 225
PALETTE = 6
SPLITS = ('train', 'test')


def _crosses(seeds: np.ndarray) -> np.ndarray:
  """Each True pixel of [N, H, W] grown into a 5-pixel cross."""
  padded = np.pad(seeds, ((0, 0), (1, 1), (1, 1)))
  return (
    seeds | padded[:, :-2, 1:-1] | padded[:, 2:, 1:-1] | padded[:, 1:-1, :-2] | padded[:, 1:-1, 2:]
  )


def _textures(rng: np.random.Generator, n: int) -> np.ndarray:
  """Bool [len(CLASSES), n, SIZE, SIZE]: every texture with image i's own period, phases, tilt."""
  def per_image(values):
    return values[:, None, None]

  yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
  freq = per_image(2 * np.pi / rng.uniform(4, 8, n))
  phase1 = per_image(rng.uniform(0, 2 * np.pi, n))
  phase2 = per_image(rng.uniform(0, 2 * np.pi, n))
  tilt = per_image(rng.uniform(-0.15, 0.15, n))
  u = xx * np.cos(tilt) + yy * np.sin(tilt)
  v = yy * np.cos(tilt) - xx * np.sin(tilt)
  centre_y, centre_x = (per_image(c) for c in rng.uniform(0, SIZE, (2, n)))
  radius = np.hypot(xx - centre_x, yy - centre_y)
  wave_u, wave_v = np.sin(freq * u + phase1), np.sin(freq * v + phase2)
  return np.stack([
    np.sin(freq * v + phase1) > 0,
    wave_u > 0,
    wave_u * wave_v > 0,
    np.cos(freq * u + phase1) + np.cos(freq * v + phase2) > 1.2,
    np.sin(freq * radius + phase1) > 0,
    (np.cos(freq * u + phase1) > 0.8) | (np.cos(freq * v + phase2) > 0.8),
    np.sin(freq * v + 2 * np.sin(0.5 * freq * u + phase2) + phase1) > 0,
    _crosses(rng.uniform(size=(n, SIZE, SIZE)) < 0.04),
  ])


@functools.lru_cache(maxsize=1)
def _all_images() -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  n = PER_CLASS * len(CLASSES)
  labels = rng.permutation(np.arange(n) % len(CLASSES))
  texture = _textures(rng, n)[labels, np.arange(n)][..., None]  # [N, SIZE, SIZE, 1]
  light = rng.uniform(0.55, 1.0, (PALETTE, 3))
  dark = rng.uniform(0.0, 0.35, (PALETTE, 3))
  pick = rng.integers(0, PALETTE, n)
  swap = (rng.uniform(size=n) < 0.5)[:, None]
  ink = np.where(swap, dark[pick], light[pick])[:, None, None, :]
  ground = np.where(swap, light[pick], dark[pick])[:, None, None, :]
  images = np.round(255 * np.where(texture, ink, ground)).astype(np.uint8)
  return images, labels.astype(np.int64)


def load_demo(split: str = 'train') -> tuple[np.ndarray, np.ndarray]:
  """Images uint8 [N, 32, 32, 3] and labels int64 [N] (8 classes) of the given split."""
  if split not in SPLITS:
    raise ValueError(f'demo data split {split!r} is not one of {SPLITS}')
  images, labels = _all_images()
  test = np.arange(len(labels)) % 5 == 0
  keep = test if split == 'test' else ~test
  return images[keep], labels[keep]
