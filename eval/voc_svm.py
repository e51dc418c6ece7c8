"""VOC07 linear SVM classification on frozen ResNet-50 features.

  python -m eval.voc_svm WEIGHTS --data VOCdevkit/VOC2007 [--protocol original|costsweep]
  python -m eval.voc_svm WEIGHTS --data tfds:voc/2007

Features (pooled 2048-d, divided by their norm + 1e-5 as both references do) come from the
torchvision ResNet-50 on the accelerator; one scikit-learn LinearSVC per class is trained on
trainval and scored on test with the VOC AP (`--ap area`: the VOC2010+ devkit's, which both
references compute; `--ap 11point`: the VOC2007 devkit's 11-point AP).
- original: the original project's protocol (wvangansbeke/Revisiting-Contrastive-SSL,
  evaluation/voc_svm), C = 0.5, "difficult" (label 0) counts as negative in train and test.
- costsweep: the fair self-supervision benchmark's
  (facebookresearch/fair_self_supervision_benchmark, tools/svm): per class the cost with the best 3-fold CV AP (scikit-learn's) on trainval is kept,
  difficult train images are negatives and difficult test images are left out of that class's AP.
"""
import argparse
from pathlib import Path

import joblib
import numpy as np
import torch
from sklearn.model_selection import cross_val_score
from sklearn.svm import LinearSVC

from eval import common
from eval.metrics import voc_ap
from eval.seg_data import VOC_CLASSES
from input_pipeline import tfds_eval

CLASSES = VOC_CLASSES[1:]
# The benchmark's list: its ten given costs plus the 0.5**4 .. 0.5**19 its parse_cost_list adds.
COSTS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0) + tuple(
    0.5**n for n in range(4, 20))
ORIGINAL_COST = 0.5


def read_voc07_split(root, split: str):
  """Image paths and an (N, 20) int8 label matrix (1 present, 0 difficult only, -1 absent).

  Reads ImageSets/Main/<class>_<split>.txt, whose lines are "id label".
  """
  root = Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f'VOC2007 folder {root} not found (expected VOCdevkit/VOC2007 with '
                            'JPEGImages/ and ImageSets/Main/)')
  ids, columns = None, []
  for name in CLASSES:
    path = root / 'ImageSets' / 'Main' / f'{name}_{split}.txt'
    if not path.is_file():
      raise FileNotFoundError(f'VOC07 class list {path} not found')
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    try:
      file_ids = [r[0] for r in rows]
      labels = np.array([int(r[1]) for r in rows], np.int8)
    except (IndexError, ValueError) as e:
      raise ValueError(f'{path}: expected lines "<image id> <1|0|-1>" ({e})') from None
    if not np.isin(labels, (-1, 0, 1)).all():
      raise ValueError(f'{path}: labels must be 1, 0 or -1')
    if ids is None:
      ids = file_ids
    elif file_ids != ids:
      raise ValueError(f'{path}: image ids differ from {CLASSES[0]}_{split}.txt')
    columns.append(labels)
  images = [root / 'JPEGImages' / f'{i}.jpg' for i in ids]
  missing = [p for p in images if not p.is_file()]
  if missing:
    raise FileNotFoundError(f'{len(missing)} VOC07 {split} images missing, first: {missing[0]}')
  return images, np.stack(columns, 1)


def normalize_features(features: np.ndarray) -> np.ndarray:
  """Rows divided by their L2 norm + 1e-5, as the original and the benchmark do."""
  return features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-5)


def svm(cost: float) -> LinearSVC:
  """The references' SVM. random_state fixes liblinear's coordinate order, which they leave
  unseeded (it moves the solution only within the tolerance), so reruns give the same AP."""
  return LinearSVC(C=cost, class_weight={1: 2, -1: 1}, loss='squared_hinge', penalty='l2',
                   dual=True, tol=1e-4, max_iter=2000, random_state=0)


def fit_class(name, train_x, train_labels, test_x, test_labels, protocol: str, costs=COSTS,
              eleven_point=False):
  """AP on test (x100) and the cost used, for one class. Difficult train images are negatives."""
  y = np.where(train_labels == 1, 1, -1)
  positives = int((y == 1).sum())
  if protocol == 'original':
    cost = ORIGINAL_COST
    if positives == 0:
      raise ValueError(f'class {name}: no positive trainval image')
  else:
    if positives < 3:
      raise ValueError(f'class {name}: {positives} positive trainval images, 3-fold CV needs 3')
    cv_ap = [cross_val_score(svm(c), train_x, y, cv=3, scoring='average_precision').mean()
             for c in costs]
    cost = costs[int(np.argmax(cv_ap))]
  scores = svm(cost).fit(train_x, y).decision_function(test_x)
  keep = test_labels != 0 if protocol == 'costsweep' else np.ones(len(test_labels), bool)
  if not (test_labels[keep] == 1).any():
    raise ValueError(f'class {name}: no positive test image')
  return 100 * voc_ap(scores[keep], test_labels[keep] == 1, eleven_point), cost


def evaluate_svms(train_x, train_labels, test_x, test_labels, protocol='original', jobs=-1,
                  costs=COSTS, eleven_point=False) -> dict:
  """Per-class AP and mAP (x100). Classes run in parallel threads (liblinear drops the GIL)."""
  results = joblib.Parallel(n_jobs=jobs, prefer='threads')(
      joblib.delayed(fit_class)(name, train_x, train_labels[:, k], test_x, test_labels[:, k],
                                protocol, costs, eleven_point)
      for k, name in enumerate(CLASSES))
  ap = {name: ap for name, (ap, _) in zip(CLASSES, results)}
  out = {'mAP': float(np.mean(list(ap.values()))), 'ap': ap}
  if protocol == 'costsweep':
    out['cost'] = {name: cost for name, (_, cost) in zip(CLASSES, results)}
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.add_weights_args(parser)
  parser.add_argument('--data', required=True,
                      help='VOCdevkit/VOC2007 folder, or tfds:voc/2007 for the TFDS copy')
  parser.add_argument('--tfds_data_dir', default=None)
  parser.add_argument('--protocol', choices=('original', 'costsweep'), default='original')
  parser.add_argument('--ap', choices=('area', '11point'), default='area',
                      help="area: the VOC2010+ devkit's AP (the references'); 11point: VOC2007's")
  parser.add_argument('--resize', type=int, default=256)
  parser.add_argument('--crop', type=int, default=224)
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--workers', type=int, default=4)
  parser.add_argument('--costs', type=lambda s: tuple(float(c) for c in s.split(',')),
                      default=COSTS, help='costsweep: comma-separated SVM costs to try')
  parser.add_argument('--jobs', type=int, default=-1, help='parallel SVMs (-1: all cores)')
  args = parser.parse_args(argv)

  device = common.pick_device()
  model = common.build_resnet50(args.weights, device=device)
  transform = common.feature_transform(args.resize, args.crop)
  features, labels = {}, {}
  for split in ('trainval', 'test'):
    if args.data.startswith('tfds:'):
      ds, labels[split] = tfds_eval.voc07_split(args.data[len('tfds:'):], split, len(CLASSES),
                                                args.tfds_data_dir)
      source, workers = common.TFDSImages(ds, transform), 0
    else:
      paths, labels[split] = read_voc07_split(args.data, split)
      source, workers = common.ImageFiles(paths, transform), args.workers
    loader = torch.utils.data.DataLoader(source, batch_size=args.batch_size, num_workers=workers,
                                         pin_memory=device.type == 'cuda')
    features[split] = normalize_features(common.pooled_features(
        model, loader, device, total=-(-len(labels[split]) // args.batch_size),
        l2_normalize=False))
  results = evaluate_svms(features['trainval'], labels['trainval'], features['test'],
                          labels['test'], args.protocol, args.jobs, args.costs,
                          args.ap == '11point')
  common.report({'task': 'voc07_svm', 'protocol': args.protocol, 'ap_method': args.ap,
                 'weights': str(args.weights),
                 'data': args.data, 'num_trainval': len(labels['trainval']),
                 'num_test': len(labels['test']), **results}, args.out)


if __name__ == '__main__':
  from revisit_jax import cli  # one-line errors, exit status 2
  cli.run(main)
