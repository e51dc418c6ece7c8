"""Evaluation metrics shared by the VOC07 SVM, segmentation and retrieval commands.

NumPy only, so the same code scores predictions from any framework.
"""
import numpy as np


def voc_ap(scores, labels) -> float:
  """VOC average precision: area under the monotone (interpolated) precision envelope.

  This is the VOC devkit formula the original VOC07 SVM protocol used (not scikit-learn's
  step-wise `average_precision_score`): rank by descending score, precision/recall at every
  rank, envelope p(r) = max precision at recall >= r, summed over the recall steps.

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
  recall = np.concatenate([[0.0], tp / positive.sum(), [1.0]])
  precision = np.concatenate([[0.0], tp / (tp + fp), [0.0]])
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


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
  """IoU_c = TP / (TP + FP + FN); NaN for a class absent from both ground truth and prediction."""
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - tp
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(union > 0, tp / union, np.nan)


def mean_iou(confusion: np.ndarray, classes=None) -> float:
  """Mean IoU over `classes` (default all), skipping classes that never occur (NaN IoU)."""
  iou = iou_per_class(confusion)
  if classes is not None:
    iou = iou[list(classes)]
  return float(np.nanmean(iou))
