"""Linear classification on frozen features: the protocol of MoCo's main_lincls.py.

  python -m eval.linear WEIGHTS --data DIR --workdir DIR [--out r.json]
  python -m eval.linear WEIGHTS --data tfds:imagenet2012 --workdir DIR
  python -m eval.linear runs/demo --data demo --workdir runs/demo/linear [--fast]

The protocol (facebookresearch/moco main_lincls.py): the backbone frozen and in eval mode (its
BN statistics stay fixed), a linear layer on its pooled features (2048-d for ResNet-50)
initialised N(0, 0.01) with a zero bias; training images RandomResizedCrop(size) and a
horizontal flip, val images resized to size * 256/224 and centre-cropped, ImageNet
normalisation; cross-entropy, SGD with lr 30, momentum 0.9, no weight decay, batch 256,
100 epochs, lr x0.1 from epochs 60 and 80; top-1 / top-5 on val after every epoch. The val
features are computed once: the backbone is frozen and the val transform fixed, so they are
the ones main_lincls.py recomputes each epoch. One process (main_lincls.py spreads the batch
over GPUs with DDP; the numbers do not depend on that). A checkpoint per epoch in WORKDIR;
the same command again resumes there, or only reports once every epoch is done.

--fast is NOT the protocol, and the JSON says so: the training features are also of centre
crops (no augmentation), computed once and cached in WORKDIR, and the same linear layer,
optimiser and schedule train on them. It is for quick comparisons of checkpoints.
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2
from tqdm import tqdm

from eval import common, knn
from input_pipeline import tfds_eval
from revisit_jax import files

MODES = {'full': "moco main_lincls.py's protocol (RandomResizedCrop + flip every epoch)",
         'fast': 'FAST MODE, not the protocol: centre-crop training features computed once, '
                 'no augmentation'}
CHECKPOINT, SETUP = 'checkpoint.pt', 'setup.json'


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.add_weights_args(parser)
  knn.add_data_args(parser, batch_size=256)
  parser.add_argument('--workdir', required=True, help='checkpoint, cached features, setup')
  parser.add_argument('--fast', action='store_true', help=MODES['fast'])
  parser.add_argument('--epochs', type=int, default=100)
  parser.add_argument('--lr', type=float, default=30.0)
  parser.add_argument('--momentum', type=float, default=0.9)
  parser.add_argument('--weight_decay', type=float, default=0.0)
  parser.add_argument('--schedule', type=int, nargs='*', default=[60, 80],
                      help='epochs (from 0) from which the lr is multiplied by 0.1')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  if args.epochs < 1:
    parser.error(f'--epochs {args.epochs}: must be at least 1')
  if args.lr <= 0:
    parser.error(f'--lr {args.lr}: must be positive')
  knn.check_data_args(parser, args)
  args.test_split = args.test_split or knn.default_test_split(args.data)
  return args


def setup_of(args) -> dict:
  """What makes an evaluation: everything but where its outputs and workers go."""
  setup = {k: v for k, v in vars(args).items() if k not in ('out', 'workers', 'workdir')}
  setup['weights'] = str(Path(args.weights).resolve())
  return setup


def check_setup(args, workdir: Path) -> None:
  """The workdir holds one evaluation: refuse to resume with other weights, data or settings."""
  path, setup = workdir / SETUP, setup_of(args)
  if path.is_file():
    saved = json.loads(path.read_text())
    changed = sorted(k for k in setup.keys() | saved.keys() if setup.get(k) != saved.get(k))
    if changed:
      raise ValueError(f'{workdir} holds an evaluation with other settings ('
                       + ', '.join(f'{k}: {saved.get(k)!r} there, {setup.get(k)!r} now'
                                   for k in changed) + '); use another --workdir')


def record_setup(args, workdir: Path) -> None:
  """Written with the workdir's first result, so a run that failed on its inputs (weights,
  data) leaves nothing that would refuse the corrected command."""
  files.write_text(workdir / SETUP, json.dumps(setup_of(args), indent=2) + '\n')


def cached_features(args, split, backbone, device, workdir: Path):
  """(raw pooled features [N, D], labels [N], class names) of a split's centre crops, computed
  once and kept in WORKDIR/features_<split>.npz."""
  path = workdir / f'features_{split}.npz'
  if path.is_file():
    with np.load(path) as saved:
      return saved['features'], saved['labels'], list(saved['classes'])
  features, labels, classes = knn.split_features(args, split, backbone, device,
                                                 l2_normalize=False)
  record_setup(args, workdir)
  tmp = path.with_suffix('.tmp.npz')
  np.savez(tmp, features=features, labels=labels, classes=np.array(classes))
  os.replace(tmp, path)
  return features, labels, classes


def train_transform(size: int):
  """main_lincls.py's: RandomResizedCrop(size), RandomHorizontalFlip, ImageNet normalisation."""
  return v2.Compose([v2.RandomResizedCrop(size), v2.RandomHorizontalFlip(), v2.ToImage(),
                     common.normalize()])


def epoch_seed(args, epoch: int) -> int:
  return args.seed * 100003 + epoch


def image_batches(args, backbone, device):
  """(number of training images, classes, batches(epoch)): augmented images through the frozen
  backbone, in an order and with augmentations fixed by the seed and the epoch (for resuming)."""
  images, labels, classes, workers = knn.labelled_images(args, args.train_split,
                                                         train_transform(args.size))

  def batches(epoch):
    torch.manual_seed(epoch_seed(args, epoch))  # augmentations in this process (workers=0)
    if isinstance(images, common.TFDSImages):  # a stream: shuffled through a buffer
      data = common.TFDSImages(
          tfds_eval.shuffled_with_labels(images.ds, labels, epoch_seed(args, epoch)),
          images.transform)
      loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size)
    else:
      loader = torch.utils.data.DataLoader(
          common.WithLabels(images, labels), batch_size=args.batch_size, shuffle=True,
          num_workers=workers, pin_memory=device.type == 'cuda',
          generator=torch.Generator().manual_seed(epoch_seed(args, epoch)))
    for x, y in loader:
      with torch.no_grad():
        features = backbone(x.to(device, non_blocking=True))
      yield features, y.to(device)

  return len(labels), classes, batches


def feature_batches(args, features, labels, device):
  """(number of training images, batches(epoch)): cached features in a per-epoch random order."""
  features = torch.from_numpy(features).to(device)
  labels = torch.from_numpy(labels).to(device)

  def batches(epoch):
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(
        epoch_seed(args, epoch))).to(device)
    for start in range(0, len(labels), args.batch_size):
      ids = order[start:start + args.batch_size]
      yield features[ids], labels[ids]

  return len(labels), batches


def linear_head(features: int, classes: int) -> nn.Linear:
  """main_lincls.py's classifier: weights N(0, 0.01), bias 0."""
  head = nn.Linear(features, classes)
  nn.init.normal_(head.weight, mean=0.0, std=0.01)
  nn.init.zeros_(head.bias)
  return head


def lr_at(args, epoch: int) -> float:
  """main_lincls.py's adjust_learning_rate: x0.1 for each milestone the epoch has reached."""
  return args.lr * 0.1 ** sum(epoch >= m for m in args.schedule)


@torch.no_grad()
def top_k(head, features, labels, device, batch_size=4096) -> dict[str, float]:
  """Top-1 and top-5 (top-k for fewer than 5 classes) accuracy in percent."""
  k = min(5, head.out_features)
  hits = {1: 0, k: 0}
  for start in range(0, len(labels), batch_size):
    logits = head(torch.from_numpy(features[start:start + batch_size]).to(device))
    truth = torch.from_numpy(labels[start:start + batch_size]).to(device)[:, None]
    ranked = logits.topk(k, dim=1).indices == truth
    hits[1] += int(ranked[:, :1].sum())
    hits[k] += int(ranked.sum())
  return {'top1': 100 * hits[1] / len(labels), f'top{k}': 100 * hits[k] / len(labels)}


def train(args, head, batches, num_train, val, device, workdir: Path) -> list[dict]:
  """Trains (or resumes) the linear layer; returns the per-epoch history (loss, lr, val top-k)."""
  optimizer = torch.optim.SGD(head.parameters(), args.lr, momentum=args.momentum,
                              weight_decay=args.weight_decay)
  start, history = 0, []
  path = workdir / CHECKPOINT
  if path.is_file():
    saved = torch.load(path, map_location=device, weights_only=True)
    head.load_state_dict(saved['head'])
    optimizer.load_state_dict(saved['optimizer'])
    start, history = saved['epoch'], saved['history']
  steps = -(-num_train // args.batch_size)
  loss_fn = nn.CrossEntropyLoss()
  bar = tqdm(total=args.epochs * steps, initial=start * steps, unit='step', desc='linear',
             dynamic_ncols=True)
  for epoch in range(start, args.epochs):
    for group in optimizer.param_groups:
      group['lr'] = lr_at(args, epoch)
    total, seen = 0.0, 0
    for features, labels in batches(epoch):
      loss = loss_fn(head(features), labels)
      if not torch.isfinite(loss):
        raise FloatingPointError(f'epoch {epoch}: loss is {loss.item()}; try a smaller --lr')
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      total, seen = total + loss.item() * len(labels), seen + len(labels)
      bar.update()
      bar.set_postfix(epoch=epoch, loss=f'{loss.item():.3f}', lr=f'{lr_at(args, epoch):.3g}',
                      refresh=False)
    history.append({'epoch': epoch + 1, 'lr': lr_at(args, epoch), 'loss': total / seen,
                    **top_k(head, *val, device)})
    bar.write(f"epoch {epoch + 1}: loss {total / seen:.4f}, val top-1 {history[-1]['top1']:.2f} %")
    tmp = path.with_suffix('.tmp')
    torch.save({'epoch': epoch + 1, 'head': head.state_dict(), 'optimizer': optimizer.state_dict(),
                'history': history}, tmp)
    os.replace(tmp, path)
  bar.close()
  return history


def main(argv=None):
  args = parse_args(argv)
  workdir = Path(args.workdir)
  check_setup(args, workdir)
  device = common.pick_device()
  backbone = common.build_resnet(args.weights, device=device)
  backbone.requires_grad_(False)
  val_x, val_y, classes = cached_features(args, args.test_split, backbone, device, workdir)
  if args.fast:
    train_x, train_y, train_classes = cached_features(args, args.train_split, backbone, device,
                                                      workdir)
    num_train, batches = feature_batches(args, train_x, train_y, device)
  else:
    num_train, train_classes, batches = image_batches(args, backbone, device)
  knn.check_same_classes(args, args.test_split, train_classes, classes)

  torch.manual_seed(args.seed)
  head = linear_head(backbone.num_features, len(classes)).to(device)
  history = train(args, head, batches, num_train, (val_x, val_y), device, workdir)
  best = max(history, key=lambda h: h['top1'])
  last = history[-1]
  common.report({'task': 'linear', 'mode': 'fast' if args.fast else 'full',
                 'protocol': MODES['fast' if args.fast else 'full'],
                 'weights': str(args.weights), 'data': args.data,
                 'train_split': args.train_split, 'test_split': args.test_split,
                 'num_train': num_train, 'num_test': len(val_y), 'classes': len(classes),
                 'feature_dim': backbone.num_features, 'epochs': args.epochs,
                 **{k: v for k, v in last.items() if k.startswith('top')},
                 'best_top1': best['top1'], 'best_epoch': best['epoch'],
                 'history': history}, args.out)


if __name__ == '__main__':
  from revisit_jax import cli  # one-line errors, exit status 2
  cli.run(main)
