"""VOC AP and mIoU against hand-worked cases and the VOC devkit's rules."""
import numpy as np
import pytest

from eval.metrics import confusion_matrix, iou_per_class, mean_iou, voc_ap


def test_perfect_ranking_gives_ap_one():
  assert voc_ap([0.9, 0.8, 0.3, 0.1], [1, 1, -1, -1]) == pytest.approx(1.0)


def test_hand_worked_five_item_ranking():
  # Ranked labels +, -, +, -, +: precision at the hits 1, 2/3, 3/5; recall steps of 1/3.
  ap = voc_ap([0.9, 0.8, 0.7, 0.6, 0.5], [1, -1, 1, -1, 1])
  assert ap == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)  # 34/45


def test_envelope_lifts_precision_to_the_best_later_value():
  # Ranked -, +, +: raw precision at the hits is 1/2 and 2/3, the envelope makes both 2/3.
  assert voc_ap([3, 2, 1], [-1, 1, 1]) == pytest.approx(2 / 3)


def test_input_order_and_difficult_labels():
  scores, labels = np.array([0.5, 0.9, 0.7, 0.8, 0.6]), np.array([1, 1, 1, -1, 0])
  order = np.random.default_rng(0).permutation(5)
  assert voc_ap(scores[order], labels[order]) == pytest.approx(voc_ap(scores, labels))
  # Label 0 counts as a negative: the same as -1.
  assert voc_ap(scores, labels) == pytest.approx(voc_ap(scores, np.where(labels > 0, 1, -1)))


def reference_ap(scores, labels):
  """Float64 loop: mean over positives of the best precision at that rank or later."""
  positive = np.asarray(labels)[np.argsort(-np.asarray(scores))] > 0
  precision = np.cumsum(positive) / np.arange(1, len(positive) + 1)
  return np.mean([precision[i:].max() for i in np.flatnonzero(positive)])


def test_matches_reference_on_random_rankings():
  rng = np.random.default_rng(1)
  for _ in range(20):
    scores = rng.normal(size=40)  # No ties, so the ranking is unique.
    labels = np.where(rng.random(40) < 0.3, 1, -1)
    labels[0] = 1
    assert voc_ap(scores, labels) == pytest.approx(reference_ap(scores, labels), abs=1e-12)


def devkit_ap(scores, labels, eleven_point):
  """VOCevalcls.m: [so, si] = sort(-out) (MATLAB's sort is stable), tp/fp cumulated, then
  VOC2007's 11-point AP (recall >= t compared exactly, t = 0, 0.1, ..., 1) or VOC2010's VOCap."""
  from fractions import Fraction
  gt = np.asarray(labels)[np.argsort(-np.asarray(scores, float), kind='stable')]
  tp, fp = np.cumsum(gt > 0), np.cumsum(gt < 0)
  prec = tp / (tp + fp)
  if eleven_point:
    rec = [Fraction(int(t), int(tp[-1])) for t in tp]
    return sum(max([p for p, r in zip(prec, rec) if r >= Fraction(t, 10)], default=0) / 11
               for t in range(11))
  mrec, mpre = [0, *(tp / tp[-1]), 1], [0, *prec, 0]
  for i in range(len(mpre) - 2, -1, -1):
    mpre[i] = max(mpre[i], mpre[i + 1])
  return sum((mrec[i] - mrec[i - 1]) * mpre[i]
             for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


@pytest.mark.parametrize('eleven_point', [False, True])
def test_matches_the_devkit_with_ties(eleven_point):
  """Scores rounded to 0.5 so that many tie, 10 positives so that recalls hit the tenths."""
  rng = np.random.default_rng(2)
  for _ in range(30):
    scores = np.round(rng.normal(size=30) * 2) / 2
    labels = np.full(30, -1)
    labels[rng.choice(30, 10, replace=False)] = 1
    assert voc_ap(scores, labels, eleven_point) == pytest.approx(
        devkit_ap(scores, labels, eleven_point), abs=1e-12)


def test_tied_scores_keep_input_order_unlike_the_originals_argsort():
  """All five scores tied: the devkit ranks them as given (+, -, -, +, -: AP 0.75); the
  original's np.argsort(score)[::-1] reverses them (-, +, -, -, +: AP 0.45)."""
  labels = [1, -1, -1, 1, -1]
  assert voc_ap([0.3] * 5, labels) == pytest.approx(0.75)
  assert voc_ap([0.3] * 5, labels[::-1]) == pytest.approx(0.45)


def test_eleven_point_hand_case():
  # Ranked +, -, +: precision 1 up to recall 1/2, then 2/3 up to recall 1. Thresholds
  # 0..0.5 (6 of them) see max precision 1, 0.6..1 (5) see 2/3: (6 + 5 * 2/3) / 11.
  assert voc_ap([3, 2, 1], [1, -1, 1], eleven_point=True) == pytest.approx((6 + 10 / 3) / 11)


def test_ap_without_positive_is_an_error():
  with pytest.raises(ValueError, match='no positive'):
    voc_ap([1, 2], [-1, 0])


def test_miou_ignores_255_pixels():
  target = np.array([[0, 0, 1], [1, 255, 2]])
  pred = np.array([[0, 1, 1], [1, 2, 0]])
  cm = confusion_matrix(pred, target, 3)
  np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
  # IoU0 = 1 / (1 + 1 + 1), IoU1 = 2 / (2 + 1 + 0), IoU2 = 0 / 1; the ignored pixel's
  # prediction 2 must not count as a false positive of class 2.
  np.testing.assert_allclose(iou_per_class(cm), [1 / 3, 2 / 3, 0])
  assert mean_iou(cm) == pytest.approx(1 / 3)
  assert mean_iou(cm, classes=[0, 1]) == pytest.approx(1 / 2)


def test_class_absent_everywhere_is_left_out_of_the_mean():
  cm = confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 4)
  iou = iou_per_class(cm)
  assert np.isnan(iou[2]) and np.isnan(iou[3])
  assert mean_iou(cm) == pytest.approx((1 / 2 + 1 / 2) / 2)
  # MaskContrast's SemsegMeter counts such a class as 0 (tp / max(tp + fp + fn, 1e-8)).
  np.testing.assert_allclose(iou_per_class(cm, absent=0.0), [1 / 2, 1 / 2, 0, 0])


def test_out_of_range_labels_are_errors():
  with pytest.raises(ValueError, match='target value 7'):
    confusion_matrix(np.array([0]), np.array([7]), 3)
  with pytest.raises(ValueError, match='prediction value 3'):
    confusion_matrix(np.array([3]), np.array([0]), 3)
