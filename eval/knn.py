"""Weighted kNN top-1 accuracy on frozen pooled ResNet features.

  python -m eval.knn WEIGHTS --data DIR [--k 20 200] [--temperature 0.07] [--out r.json]
  python -m eval.knn WEIGHTS --data tfds:NAME [--tfds_data_dir D]
  python -m eval.knn runs/demo --data demo

DIR holds train/<class>/* and val/<class>/* (or test/<class>/*) image folders; a TFDS dataset
must already be prepared (nothing is downloaded); 'demo' is the demo's embedded texture set
(input_pipeline/demo_data.py). Any torchvision-layout ResNet loads (the demo's narrow
ResNet-18 too). Features: shorter side resized to size * 256/224, centre crop `size`,
ImageNet normalisation, the pooled output (2048-d for ResNet-50), L2-normalised; the
classifier is revisit_jax.knn (the InstDisc / MoCo monitor).
"""

import argparse
from pathlib import Path

import numpy as np
import torch
import torchvision

from eval import common
from eval.seg_data import require_dir
from input_pipeline import demo_data, tfds_eval
from input_pipeline.sources import DEMO, TFDS_PREFIX
from revisit_jax.imagenet import resize_for_crop
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
  if (data == DEMO or data.startswith(TFDS_PREFIX) or (folder / 'test').is_dir()
      or not (folder / 'val').is_dir()):
    return 'test'
  return 'val'


def check_data_args(parser, args):
  """--data names the demo set, a TFDS dataset, or an existing folder; --size defaults to the
  demo's 32 px or else 224."""
  if args.data == TFDS_PREFIX:
    parser.error('--data tfds: needs a dataset name, e.g. tfds:imagenet2012')
  if args.data != DEMO and not args.data.startswith(TFDS_PREFIX):
    require_dir(Path(args.data), 'dataset')
  if args.size is None:
    args.size = demo_data.SIZE if args.data == DEMO else 224
  for name in ('size', 'batch_size'):
    if getattr(args, name) < 1:
      parser.error(f'--{name} {getattr(args, name)}: must be at least 1')


def labelled_images(args, split, transform):
  """(dataset of transformed images in label order, labels [N], class names, loader workers)
  of one split of --data: 'demo', tfds:NAME or an image folder."""
  if args.data == DEMO:
    images, labels = demo_data.load_demo(split)
    return common.ArrayImages(images, transform), labels, list(demo_data.CLASSES), args.workers
  if args.data.startswith(TFDS_PREFIX):
    ds, labels, classes = tfds_eval.classification_split(args.data[len(TFDS_PREFIX):], split,
                                                         args.tfds_data_dir)
    return common.TFDSImages(ds, transform), labels, classes, 0
  paths, labels, classes = folder_split(args.data, split)
  return common.ImageFiles(paths, transform), labels, classes, args.workers


def split_features(args, split, model, device, l2_normalize=True):
  """(features [N, D], L2-normalised unless told otherwise, labels [N], class names) of one
  split's centre crops."""
  transform = common.feature_transform(resize_for_crop(args.size), args.size)
  source, labels, classes, workers = labelled_images(args, split, transform)
  loader = torch.utils.data.DataLoader(source, batch_size=args.batch_size, num_workers=workers,
                                       pin_memory=device.type == 'cuda')
  features = common.pooled_features(model, loader, device, total=-(-len(labels) // args.batch_size),
                                    l2_normalize=l2_normalize)
  return features, labels, classes


def add_data_args(parser, batch_size=64, data=None):
  """--data and how to read it; `data` is the default (else --data is required)."""
  parser.add_argument('--data', required=data is None, default=data,
                      help='image-folder root (train/<class>/, val/<class>/), tfds:NAME, or demo'
                           + (f' (default {data})' if data else ''))
  parser.add_argument('--tfds_data_dir', default=None)
  parser.add_argument('--train_split', default='train')
  parser.add_argument('--test_split', default=None,
                      help='default: test (val for a folder without test/)')
  parser.add_argument('--size', type=int, default=None,
                      help='crop size (default 224; 32 for the demo set)')
  parser.add_argument('--batch_size', type=int, default=batch_size)
  parser.add_argument('--workers', type=int, default=4)


def both_splits(args, model, device, l2_normalize=True):
  """(train features, train labels, test features, test labels, class names, test split)."""
  test_split = args.test_split or default_test_split(args.data)
  train_x, train_y, classes = split_features(args, args.train_split, model, device, l2_normalize)
  test_x, test_y, test_classes = split_features(args, test_split, model, device, l2_normalize)
  check_same_classes(args, test_split, classes, test_classes)
  return train_x, train_y, test_x, test_y, classes, test_split


def check_same_classes(args, test_split, classes, test_classes):
  if test_classes != classes:
    raise ValueError(f'{args.data}: classes of {test_split!r} {test_classes} differ from '
                     f'those of {args.train_split!r} {classes}')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.add_weights_args(parser)
  add_data_args(parser)
  parser.add_argument('--k', type=int, nargs='+', default=[20, 200])
  parser.add_argument('--temperature', type=float, default=0.07)
  args = parser.parse_args(argv)
  check_data_args(parser, args)

  device = common.pick_device()
  model = common.build_resnet(args.weights, device=device)
  train_x, train_y, test_x, test_y, classes, test_split = both_splits(args, model, device)
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
