"""OpenCV's cv2.resize rules in float64 NumPy, for the tests that compare with reference code
calling cv2 (cv2 is not a dependency). Written from OpenCV's imgproc/src/resize.cpp:

- INTER_NEAREST: source index floor(dst * src_size / dst_size), capped at src_size - 1.
- INTER_LINEAR: source coordinate (dst + 0.5) * src_size / dst_size - 0.5; below 0 it is 0, at
  or past the last pixel it is the last pixel; two taps, no antialiasing when shrinking.
- INTER_CUBIC: the same coordinate (not clamped); four taps with A = -0.75, edge pixels
  replicated. For uint8 images OpenCV rounds and saturates the result.
Each is separable: rows and columns are resampled independently.
"""
import numpy as np


def _linear_taps(src: int, dst: int):
  """(index pairs [dst, 2], weights [dst, 2]) along one axis."""
  x = (np.arange(dst) + 0.5) * (src / dst) - 0.5
  left = np.floor(x)
  frac = x - left
  left = left.astype(np.int64)
  frac = np.where(left < 0, 0.0, frac)
  left = np.maximum(left, 0)
  frac = np.where(left >= src - 1, 0.0, frac)
  left = np.minimum(left, src - 1)
  return np.stack([left, np.minimum(left + 1, src - 1)], 1), np.stack([1 - frac, frac], 1)


def _cubic_taps(src: int, dst: int, a: float = -0.75):
  x = (np.arange(dst) + 0.5) * (src / dst) - 0.5
  left = np.floor(x)
  t = x - left
  weights = np.stack([((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
                      ((a + 2) * t - (a + 3)) * t * t + 1,
                      ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1], 1)
  weights = np.concatenate([weights, 1 - weights.sum(1, keepdims=True)], 1)
  index = np.clip(left.astype(np.int64)[:, None] + np.arange(-1, 3), 0, src - 1)
  return index, weights


def _separable(image, size, taps):
  """Applies per-axis taps to an [H, W, ...] array; size is (height, width)."""
  out = np.asarray(image, np.float64)
  for axis, (src, dst) in enumerate(zip(out.shape[:2], size)):
    index, weights = taps(src, dst)
    gathered = np.take(out, index, axis=axis)  # [.., dst, taps, ..] at `axis`
    shape = [1] * gathered.ndim
    shape[axis], shape[axis + 1] = dst, weights.shape[1]
    out = (gathered * weights.reshape(shape)).sum(axis + 1)
  return out


def resize_linear(image, size):
  """cv2.resize(image, (w, h), interpolation=INTER_LINEAR) on a float array, in float64."""
  return _separable(image, size, _linear_taps)


def resize_cubic(image, size):
  """cv2.resize(image, (w, h), interpolation=INTER_CUBIC) in float64, before uint8 rounding."""
  return _separable(image, size, _cubic_taps)


def resize_nearest(image, size):
  """cv2.resize(image, (w, h), interpolation=INTER_NEAREST), exactly."""
  rows = np.minimum(np.floor(np.arange(size[0]) * (image.shape[0] / size[0])), image.shape[0] - 1)
  cols = np.minimum(np.floor(np.arange(size[1]) * (image.shape[1] / size[1])), image.shape[1] - 1)
  return np.asarray(image)[rows.astype(np.int64)][:, cols.astype(np.int64)]
