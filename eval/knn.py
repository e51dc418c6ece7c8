"""Weighted kNN top-1 accuracy on frozen pooled ResNet-50 features.

  python -m eval.knn WEIGHTS --data DIR [--k 20 200] [--temperature 0.07] [--out r.json]
  python -m eval.knn WEIGHTS --data tfds:NAME [--tfds_data_dir D]

DIR holds train/<class>/* and val/<class>/* (or test/<class>/*) image folders; a TFDS dataset
must already be prepared (nothing is downloaded). Features: shorter side resized to
size * 256/224, centre crop `size`, ImageNet normalisation, the pooled 2048-d output,
L2-normalised; the classifier is revisit_jax.knn (the InstDisc / MoCo monitor).
"""

import argparse
from pathlib import Path

import numpy as np
import torch
import torchvision

from eval import common
from eval.seg_data import require_dir
from input_pipeline import tfds_eval
from revisit_jax.knn import knn_predict


def folder_split(root, split):
  """(image paths, labels, class names) of <root>/<split>/<class>/*, as ImageFolder reads them."""
  folder = require_dir(Path(root) / split, f'split {split!r}')
  try:
    dataset = torchvision.datasets.ImageFolder(folder)
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f'{folder}: expected one sub-folder of images per class ({e})') from None
  paths, labels = zip(*dataset.samples)
  return list(paths), np.array(labels), dataset.classes


def default_test_split(data):
  """'test'; for a folder without test/, 'val'."""
  folder = Path(data)
  if data.startswith('tfds:') or (folder / 'test').is_dir() or not (folder / 'val').is_dir():
    return 'test'
  return 'val'


def split_features(args, split, model, device):
  """(L2-normalised features [N, 2048], labels [N], class names) of one split."""
  transform = common.feature_transform(round(args.size * 256 / 224), args.size)
  if args.data.startswith('tfds:'):
    ds, labels, classes = tfds_eval.classification_split(args.data[len('tfds:'):], split,
                                                         args.tfds_data_dir)
    source, workers = common.TFDSImages(ds, transform), 0
  else:
    paths, labels, classes = folder_split(args.data, split)
    source, workers = common.ImageFiles(paths, transform), args.workers
  loader = torch.utils.data.DataLoader(source, batch_size=args.batch_size, num_workers=workers,
                                       pin_memory=device.type == 'cuda')
  features = common.pooled_features(model, loader, device, total=-(-len(labels) // args.batch_size))
  return features, labels, classes


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.add_weights_args(parser)
  parser.add_argument('--data', required=True, help='image-folder root, or tfds:NAME')
  parser.add_argument('--tfds_data_dir', default=None)
  parser.add_argument('--train_split', default='train')
  parser.add_argument('--test_split', default=None,
                      help='default: test (val for a folder without test/)')
  parser.add_argument('--size', type=int, default=224, help='centre-crop size')
  parser.add_argument('--k', type=int, nargs='+', default=[20, 200])
  parser.add_argument('--temperature', type=float, default=0.07)
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--workers', type=int, default=4)
  args = parser.parse_args(argv)
  if not args.data.startswith('tfds:'):
    require_dir(Path(args.data), 'dataset')
  test_split = args.test_split or default_test_split(args.data)

  device = common.pick_device()
  model = common.build_resnet50(args.weights, device=device)
  train_x, train_y, classes = split_features(args, args.train_split, model, device)
  test_x, test_y, test_classes = split_features(args, test_split, model, device)
  if test_classes != classes:
    raise ValueError(f'{args.data}: classes of {test_split!r} {test_classes} differ from '
                     f'those of {args.train_split!r} {classes}')
  preds = knn_predict(train_x, train_y, test_x, ks=args.k, temperature=args.temperature,
                      num_classes=len(classes))
  top1 = {str(k): 100 * float(np.mean(p == test_y)) for k, p in zip(args.k, preds)}
  common.report({'task': 'knn', 'weights': str(args.weights), 'data': args.data,
                 'train_split': args.train_split, 'test_split': test_split,
                 'num_train': len(train_y), 'num_test': len(test_y),
                 'temperature': args.temperature, 'top1': top1}, args.out)


if __name__ == '__main__':
  from revisit_jax import cli  # one-line errors, exit status 2
  cli.run(main)
