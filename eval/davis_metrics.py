"""DAVIS-2017 semi-supervised benchmark metrics (region J, boundary F), in NumPy/SciPy.

Follows the conventions of the official davis2017-evaluation tool so that numbers are
comparable with published ones: void (255) counts as background, objects are the ids
1..max of the first ground-truth frame, the first and last frames are not scored, J and F
are averaged per object and then over all objects of all sequences.
"""

import math

import numpy as np
from scipy import ndimage

VOID = 255
BOUND_TH = 0.008  # boundary tolerance as a fraction of the image diagonal


def jaccard(gt, pred):
  """Region similarity J (IoU) of boolean masks [..., H, W]; both empty gives 1."""
  gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
  if gt.shape != pred.shape:
    raise ValueError(f'mask shapes differ: ground truth {gt.shape}, prediction {pred.shape}')
  inter = np.sum(gt & pred, axis=(-2, -1))
  union = np.sum(gt | pred, axis=(-2, -1))
  return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def boundary_map(mask):
  """One-pixel boundary of a boolean mask, offset half a pixel towards the origin (seg2bmap)."""
  seg = np.asarray(mask, bool)
  east, south, south_east = (np.zeros_like(seg) for _ in range(3))
  east[:, :-1] = seg[:, 1:]
  south[:-1, :] = seg[1:, :]
  south_east[:-1, :-1] = seg[1:, 1:]
  b = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
  b[-1, :] = seg[-1, :] ^ east[-1, :]
  b[:, -1] = seg[:, -1] ^ south[:, -1]
  b[-1, -1] = False
  return b


def bound_pix(shape, bound_th=BOUND_TH):
  """Boundary tolerance in pixels: ceil(bound_th * diagonal) (8 at 854x480)."""
  return bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*shape[-2:]))


def _within(boundary, radius):
  """Pixels within Euclidean distance `radius` of a boundary pixel: a dilation by a disk."""
  return ndimage.distance_transform_edt(~boundary) <= radius


def f_measure(gt, pred, bound_th=BOUND_TH):
  """Boundary F-measure of one frame's boolean masks [H, W], as the DAVIS benchmark scores it."""
  gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
  if gt.shape != pred.shape or gt.ndim != 2:
    raise ValueError(f'f_measure takes two [H, W] masks, got {gt.shape} and {pred.shape}')
  gt_b, pred_b = boundary_map(gt), boundary_map(pred)
  n_gt, n_pred = gt_b.sum(), pred_b.sum()
  if n_gt == 0 and n_pred == 0:
    return 1.0
  if n_gt == 0 or n_pred == 0:
    return 0.0
  radius = bound_pix(gt.shape, bound_th)
  precision = np.sum(pred_b & _within(gt_b, radius)) / n_pred
  recall = np.sum(gt_b & _within(pred_b, radius)) / n_gt
  if precision + recall == 0:
    return 0.0
  return float(2 * precision * recall / (precision + recall))


def statistics(per_frame):
  """(mean, recall = fraction above 0.5, decay = first-quarter mean - last-quarter mean)."""
  values = np.asarray(per_frame, float)
  ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(int)
  bins = [values[ids[i]:ids[i + 1] + 1] for i in range(4)]
  decay = np.mean(bins[0]) - np.mean(bins[3])
  return float(np.mean(values)), float(np.mean(values > 0.5)), float(decay)


def evaluate_sequence(gt_labels, pred_labels, name='sequence'):
  """Per-object, per-frame J and F of one sequence.

  gt_labels, pred_labels: integer label maps [T, H, W] (0 background, 1..N objects, 255 void
  in the ground truth). Returns (J, F), each [N, T - 2]: frames 1..T-2 (first and last excluded).
  """
  gt = np.array(gt_labels, np.int64)
  pred = np.asarray(pred_labels, np.int64)
  if gt.shape != pred.shape or gt.ndim != 3:
    raise ValueError(f'{name}: ground truth {gt.shape} and prediction {pred.shape} must both '
                     'be [T, H, W]')
  if gt.shape[0] < 3:
    raise ValueError(f'{name}: {gt.shape[0]} frames; scoring needs at least 3 (the first and '
                     'last are excluded)')
  gt[gt == VOID] = 0
  n_objects = int(gt[0].max())
  if n_objects == 0:
    raise ValueError(f'{name}: the first ground-truth frame has no objects')
  if pred.max() > n_objects:
    raise ValueError(f'{name}: prediction has object id {pred.max()} but the first ground-truth '
                     f'frame has {n_objects} objects')
  gt, pred = gt[1:-1], pred[1:-1]
  j = np.zeros((n_objects, gt.shape[0]))
  f = np.zeros_like(j)
  for i in range(n_objects):
    gt_i, pred_i = gt == i + 1, pred == i + 1
    j[i] = jaccard(gt_i, pred_i)
    f[i] = [f_measure(g, p) for g, p in zip(gt_i, pred_i)]
  return j, f


def summarize(per_sequence):
  """Benchmark summary from {sequence: (J [N, T'], F [N, T'])}.

  Means, recalls and decays are per object, then averaged over all objects of all sequences;
  J&F-Mean = (J-Mean + F-Mean) / 2. Also a per-object table (keys '<seq>_<id>', as the
  benchmark prints) and a per-sequence table (mean over the sequence's objects).
  """
  stats = {'J': [], 'F': []}
  per_object, sequences = {}, {}
  for seq, (j, f) in per_sequence.items():
    seq_stats = {}
    for key, values in (('J', j), ('F', f)):
      seq_stats[key] = [statistics(v) for v in values]
      stats[key] += seq_stats[key]
    for i, (sj, sf) in enumerate(zip(seq_stats['J'], seq_stats['F'])):
      per_object[f'{seq}_{i + 1}'] = {'J-Mean': sj[0], 'F-Mean': sf[0]}
    jm = float(np.mean([s[0] for s in seq_stats['J']]))
    fm = float(np.mean([s[0] for s in seq_stats['F']]))
    sequences[seq] = {'J&F-Mean': (jm + fm) / 2, 'J-Mean': jm, 'F-Mean': fm, 'objects': len(j)}
  if not stats['J']:
    raise ValueError('no objects to score')
  out = {}
  for key in ('J', 'F'):
    m, r, d = np.mean(np.array(stats[key]), axis=0)
    out.update({f'{key}-Mean': float(m), f'{key}-Recall': float(r), f'{key}-Decay': float(d)})
  out = {'J&F-Mean': (out['J-Mean'] + out['F-Mean']) / 2, **out}
  out['per_sequence'] = sequences
  out['per_object'] = per_object
  return out
