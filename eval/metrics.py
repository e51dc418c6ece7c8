"""Evaluation metrics shared by the VOC07 SVM, segmentation and retrieval commands.

NumPy only, so the same code scores predictions from any framework.
"""
import numpy as np


def voc_ap(scores, labels, eleven_point: bool = False) -> float:
  """VOC average precision of one class: rank by descending score, precision and recall at
  every rank, then either

  - the VOC2010+ devkit's AP (default; VOCevalcls + VOCap, also what the original's
    `evaluation/voc_svm/metrics.py` and the fair benchmark's `svm_helper.py` compute): the area
    under the monotone precision envelope p(r) = max precision at recall >= r, summed over the
    recall steps; not scikit-learn's step-wise `average_precision_score`; or
  - eleven_point=True: the VOC2007 devkit's 11-point AP, the mean over t = 0, 0.1, ..., 1 of the
    best precision at recall >= t (0 where recall never reaches t); many VOC07 papers report it.

  Tied scores keep their input order (a stable sort of -score, as the devkit's MATLAB `sort`).
  The original's and the benchmark's Python code use np.argsort(score)[::-1], which puts tied
  items in reverse input order: with ties between positives and negatives the two can differ
  (five tied scores labelled +, -, -, +, -: 0.75 here, 0.45 there); SVM scores of real
  features are not tied.

  Args:
    scores: (N,) classifier scores; higher means more likely positive.
    labels: (N,) with positives > 0; everything else (-1, 0) counts as negative. Callers drop
      items they want ignored (e.g. VOC "difficult") before calling.
  """
  scores = np.asarray(scores, np.float64).ravel()
  positive = np.asarray(labels).ravel() > 0
  if scores.shape != positive.shape:
    raise ValueError(f'voc_ap: {scores.shape[0]} scores but {positive.shape[0]} labels')
  if not positive.any():
    raise ValueError('voc_ap: no positive label, AP is undefined')
  order = np.argsort(-scores, kind='stable')
  tp = np.cumsum(positive[order])
  fp = np.cumsum(~positive[order])
  precision = tp / (tp + fp)
  if eleven_point:  # recall >= t/10 compared in integers: tp * 10 >= t * positives
    best = [precision[tp * 10 >= t * tp[-1]].max(initial=0.0) for t in range(11)]
    return float(np.mean(best))
  recall = np.concatenate([[0.0], tp / tp[-1], [1.0]])
  precision = np.concatenate([[0.0], precision, [0.0]])
  envelope = np.maximum.accumulate(precision[::-1])[::-1]
  steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
  return float(np.sum((recall[steps] - recall[steps - 1]) * envelope[steps]))


def confusion_matrix(pred, target, num_classes: int, ignore_index: int = 255) -> np.ndarray:
  """(num_classes, num_classes) int64 counts, rows = ground truth, columns = prediction.

  Pixels whose target is `ignore_index` are skipped; any other target or prediction outside
  [0, num_classes) is an error, since it would silently shift the matrix.
  """
  pred = np.asarray(pred).ravel().astype(np.int64)
  target = np.asarray(target).ravel().astype(np.int64)
  if pred.shape != target.shape:
    raise ValueError(f'confusion_matrix: prediction has {pred.size} pixels, target {target.size}')
  keep = target != ignore_index
  pred, target = pred[keep], target[keep]
  for name, values in (('target', target), ('prediction', pred)):
    bad = (values < 0) | (values >= num_classes)
    if bad.any():
      raise ValueError(f'confusion_matrix: {name} value {values[bad][0]} outside '
                       f'[0, {num_classes}) and not the ignore index {ignore_index}')
  counts = np.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray, absent: float = np.nan) -> np.ndarray:
  """IoU_c = TP / (TP + FP + FN); `absent` for a class absent from both ground truth and
  prediction: NaN (left out of a nanmean), or 0 as MaskContrast's SemsegMeter counts it."""
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - tp
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(union > 0, tp / union, absent)


def mean_iou(confusion: np.ndarray, classes=None) -> float:
  """Mean IoU over `classes` (default all), skipping classes that never occur (NaN IoU)."""
  iou = iou_per_class(confusion)
  if classes is not None:
    iou = iou[list(classes)]
  return float(np.nanmean(iou))
