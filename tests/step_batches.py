"""Training batches whose crops are known exactly: the crops side by side on one canvas, each
box covering one crop at its own size, so cutting it (a resize to the same size) copies it."""

import numpy as np


def canvas_size(large, small, num_small):
  """The canvas side that holds 2 large and `num_small` small crops in a row."""
  return 2 * large + num_small * small


def tiled_batch(large, small=None):
  """large uint8 [B, 2, L, L, 3], small uint8 [B, n, s, s, 3] or None -> a training batch
  {'image', 'boxes', 'image_id'} whose cut crops are exactly these."""
  b, _, size = large.shape[:3]
  crops = [large[:, 0], large[:, 1]] + ([] if small is None else list(np.moveaxis(small, 1, 0)))
  side = sum(c.shape[2] for c in crops)
  image = np.zeros((b, side, side, 3), np.uint8)
  boxes, left = [], 0
  for c in crops:
    h = c.shape[1]
    image[:, :h, left:left + h] = c
    boxes.append((0, left, h, h))
    left += h
  return {'image': image, 'boxes': np.broadcast_to(np.asarray(boxes, np.int32), (b, len(boxes), 4)),
          'image_id': np.arange(b, dtype=np.int32)}
