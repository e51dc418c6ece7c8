"""FCN fine-tuning of the exported ResNet-50 for semantic segmentation (VOC 2012, Cityscapes).

  python -m eval.segmentation WEIGHTS --dataset voc --data VOCdevkit/VOC2012 --workdir DIR
  torchrun --nproc_per_node 8 -m eval.segmentation WEIGHTS --dataset cityscapes --data DIR ...

Backbone: torchvision ResNet-50 with every layer4 3x3 conv dilated by 2 and every layer4 stride
1 (output stride 16). Head: two [3x3 conv 256 (dilation d), BN, ReLU] blocks and a 1x1
classifier, all without bias, logits upsampled bilinearly to the input. Every epoch a
checkpoint goes to WORKDIR/run<r>/; starting again resumes there.
`--runs N` trains N seeds and reports the mean and standard deviation of the mIoU.
`--select best` scores val after every epoch and reports each run's best epoch, as the
original did; the default reports the last epoch.
"""
import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from eval import common
from eval import seg_data
from eval.metrics import confusion_matrix, iou_per_class

# Protocol defaults per dataset (SPEC.md section 4); every value can be overridden by a flag.
DEFAULTS = {
    'voc': dict(dilation=6, classes=seg_data.VOC_CLASSES, optimizer='sgd', lr=0.003,
                weight_decay=1e-4, batch_size=16, epochs=45, milestones=(30, 40), size=512),
    'cityscapes': dict(dilation=1, classes=seg_data.CITYSCAPES_CLASSES, optimizer='adam',
                       lr=1e-4, weight_decay=1e-4, batch_size=8, epochs=150, milestones=(),
                       size=768),
}


def resnet_trunk(resnet: nn.Module) -> nn.Sequential:
  """The torchvision ResNet up to layer4 (no pooling): the 2048-channel feature grid."""
  return nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
                       resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)


class FCN(nn.Module):
  """Dilated ResNet-50 trunk + FCN head; returns float32 logits at the input resolution."""

  def __init__(self, resnet: nn.Module, num_classes: int, dilation: int):
    super().__init__()
    self.backbone = resnet_trunk(resnet)
    layers, channels = [], 2048
    for _ in range(2):
      layers += [nn.Conv2d(channels, 256, 3, padding=dilation, dilation=dilation, bias=False),
                 nn.BatchNorm2d(256), nn.ReLU(inplace=True)]
      channels = 256
    self.head = nn.Sequential(*layers, nn.Conv2d(256, num_classes, 1, bias=False))

  def forward(self, x):
    logits = self.head(self.backbone(x))
    return F.interpolate(logits.float(), size=x.shape[-2:], mode='bilinear', align_corners=False)


def dilate_layer4(layer4: nn.Module) -> None:
  """The original's output stride 16: every layer4 3x3 conv gets dilation 2, every layer4
  stride becomes 1. (torchvision's replace_stride_with_dilation would leave the first block's
  3x3 conv undilated.)"""
  for conv in layer4.modules():
    if isinstance(conv, nn.Conv2d):
      conv.stride = (1, 1)
      if conv.kernel_size == (3, 3):
        conv.dilation, conv.padding = (2, 2), (2, 2)


def build_fcn(weights, num_classes: int, dilation: int, device) -> FCN:
  resnet = common.build_resnet50(weights, device=device)
  dilate_layer4(resnet.layer4)
  return FCN(resnet, num_classes, dilation).to(device)


def datasets(args):
  """(train set, val set) for --dataset, with the protocol's augmentation."""
  if args.dataset == 'voc':
    train = seg_data.VOCSegmentation(args.data, 'train_aug',
                                     seg_data.voc_train_transform(args.size))
    val = seg_data.VOCSegmentation(args.data, 'val', seg_data.resize_image_only(args.size))
  else:
    train = seg_data.Cityscapes(args.data, 'train', seg_data.cityscapes_train_transform(args.size))
    val = seg_data.Cityscapes(args.data, 'val', seg_data.full_resolution())
  return train, val


def lr_factor(args, epoch: int) -> float:
  """The original's per-epoch schedule (epochs counted from 0): x0.1 for each milestone the
  epoch exceeds, or poly decay (1 - epoch / epochs) ** 0.9 when there are none."""
  if args.milestones:
    return 0.1 ** sum(epoch > m for m in args.milestones)
  return (1 - epoch / args.epochs) ** 0.9


def optimizer_and_schedule(args, model, steps_per_epoch):
  """The protocol's optimizer; the schedule is stepped per iteration, its value set per epoch."""
  if args.optimizer == 'sgd':
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9,
                          weight_decay=args.weight_decay)
  else:
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda step: lr_factor(args, step // steps_per_epoch))
  return opt, sched


@torch.no_grad()
def evaluate(model, val_set, num_classes, device, rank=0, world=1, workers=0) -> np.ndarray:
  """Confusion matrix over the val set at the ground truth's resolution (summed over ranks).

  The image may have been resized (VOC: 512 x 512); the argmax is nearest-resized back to the
  original mask size before scoring.
  """
  model.eval()
  confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
  shard = torch.utils.data.Subset(val_set, range(rank, len(val_set), world))
  loader = torch.utils.data.DataLoader(shard, batch_size=1, num_workers=workers)
  for image, mask in tqdm(loader, desc='val', disable=rank != 0):
    logits = model(image.to(device))
    pred = logits.argmax(1, keepdim=True).float()
    pred = F.interpolate(pred, size=mask.shape[-2:], mode='nearest')[0, 0]
    confusion += torch.from_numpy(
        confusion_matrix(pred.cpu().numpy(), mask.numpy(), num_classes)).to(device)
  if world > 1:
    dist.all_reduce(confusion)
  return confusion.cpu().numpy()


def score(net, val_set, args, device, rank=0, world=1) -> dict:
  """mIoU and per-class IoU (x100) of rank 0's network on the val set."""
  if world > 1:  # Each rank's last forward updated its own BN statistics; evaluate rank 0's.
    for buffer in net.buffers():
      dist.broadcast(buffer, 0)
  iou = iou_per_class(evaluate(net, val_set, len(args.classes), device, rank, world,
                               args.workers))
  return {'miou': float(np.nanmean(iou)) * 100,
          'iou': {c: None if math.isnan(v) else v * 100 for c, v in zip(args.classes, iou)}}


def train_run(args, run: int, device, rank=0, world=1) -> dict:
  """Trains (or resumes) one seed and returns its per-class IoU; cached in run<r>/result.json."""
  run_dir = Path(args.workdir) / f'run{run}'
  result_file, ckpt_file = run_dir / 'result.json', run_dir / 'checkpoint.pt'
  if result_file.is_file():
    return json.loads(result_file.read_text())
  seed = args.seed + run
  torch.manual_seed(seed)
  train_set, val_set = datasets(args)
  num_classes = len(args.classes)
  model = build_fcn(args.weights, num_classes, args.dilation, device)
  if world > 1:
    sync_bn = device.type == 'cuda' if args.sync_bn is None else args.sync_bn
    if sync_bn:
      model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == 'cuda' else None)
  if args.batch_size % world:
    raise ValueError(f'--batch_size {args.batch_size} is not divisible by {world} processes')
  sampler = torch.utils.data.DistributedSampler(train_set, world, rank, shuffle=True, seed=seed,
                                                drop_last=True)
  loader = torch.utils.data.DataLoader(
      train_set, batch_size=args.batch_size // world, sampler=sampler, drop_last=True,
      num_workers=args.workers, pin_memory=device.type == 'cuda')
  if len(loader) == 0:
    raise ValueError(f'{len(train_set)} training images give no full batch of {args.batch_size}')
  opt, sched = optimizer_and_schedule(args, model, len(loader))
  net = model.module if world > 1 else model
  start, best = 0, None
  if ckpt_file.is_file():
    state = torch.load(ckpt_file, map_location=device, weights_only=True)
    net.load_state_dict(state['model'])
    opt.load_state_dict(state['optimizer'])
    sched.load_state_dict(state['schedule'])
    start, best = state['epoch'] + 1, state.get('best')
  loss_fn = nn.CrossEntropyLoss(ignore_index=seg_data.IGNORE)
  bar = tqdm(total=args.epochs * len(loader), initial=start * len(loader),
             desc=f'run {run}', disable=rank != 0)
  for epoch in range(start, args.epochs):
    sampler.set_epoch(epoch)
    torch.manual_seed(seed * 100003 + epoch)  # Augmentations resume deterministically.
    model.train()
    for images, masks in loader:
      images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
      loss = loss_fn(model(images), masks)  # float32 throughout, as the original
      if not torch.isfinite(loss):
        raise FloatingPointError(f'run {run} epoch {epoch}: loss is {loss.item()}')
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      sched.step()
      bar.update()
      bar.set_postfix(loss=f'{loss.item():.3f}', lr=f'{sched.get_last_lr()[0]:.2e}')
    if args.select == 'best':
      scored = {**score(net, val_set, args, device, rank, world), 'epoch': epoch}
      best = scored if best is None or scored['miou'] > best['miou'] else best
    if rank == 0:
      run_dir.mkdir(parents=True, exist_ok=True)
      torch.save({'model': net.state_dict(), 'optimizer': opt.state_dict(),
                  'schedule': sched.state_dict(), 'epoch': epoch, 'best': best},
                 ckpt_file.with_suffix('.tmp'))
      os.replace(ckpt_file.with_suffix('.tmp'), ckpt_file)
  bar.close()
  if args.select == 'last':
    best = {**score(net, val_set, args, device, rank, world), 'epoch': args.epochs - 1}
  result = {'seed': seed, **best}
  if rank == 0:
    run_dir.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result))
  return result


def summarize(runs: list[dict], classes) -> dict:
  """Mean and (population) standard deviation of the mIoU over runs, mean IoU per class."""
  miou = np.array([r['miou'] for r in runs])
  per_class = {}
  for c in classes:
    values = [r['iou'][c] for r in runs if r['iou'][c] is not None]
    per_class[c] = float(np.mean(values)) if values else None
  return {'miou': float(miou.mean()), 'miou_std': float(miou.std()),
          'miou_runs': miou.tolist(), 'iou': per_class}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.add_weights_args(parser)
  parser.add_argument('--dataset', choices=tuple(DEFAULTS), required=True)
  parser.add_argument('--data', required=True, help='VOC2012 folder or Cityscapes root')
  parser.add_argument('--workdir', required=True, help='checkpoints and per-run results')
  parser.add_argument('--runs', type=int, default=1)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--epochs', type=int)
  parser.add_argument('--batch_size', type=int, help='global batch over all processes')
  parser.add_argument('--lr', type=float)
  parser.add_argument('--weight_decay', type=float)
  parser.add_argument('--optimizer', choices=('sgd', 'adam'))
  parser.add_argument('--milestones', type=int, nargs='*',
                      help='lr x0.1 in the epochs (from 0) past each; none means poly 0.9 decay')
  parser.add_argument('--size', type=int, help='VOC: train/val resize; Cityscapes: train crop')
  parser.add_argument('--dilation', type=int, help='dilation of the head convs')
  parser.add_argument('--workers', type=int, default=4)
  parser.add_argument('--sync_bn', action=argparse.BooleanOptionalAction,
                      help="SyncBatchNorm under torchrun, as the original's multi-GPU script "
                           '(default: on CUDA; torch has it only there)')
  parser.add_argument('--select', choices=('last', 'best'), default='last',
                      help="report the last epoch, or score val after every epoch and report "
                           "the best one (the original's model selection, on the val set)")
  args = parser.parse_args(argv)
  for key, value in DEFAULTS[args.dataset].items():
    if getattr(args, key, None) is None:
      setattr(args, key, value)
  return args


def main(argv=None):
  args = parse_args(argv)
  world = int(os.environ.get('WORLD_SIZE', '1'))
  rank = 0
  if world > 1:
    dist.init_process_group('nccl' if torch.cuda.is_available() else 'gloo')
    rank = dist.get_rank()
    local = int(os.environ.get('LOCAL_RANK', '0'))
    device = torch.device('cuda', local) if torch.cuda.is_available() else torch.device('cpu')
    if device.type == 'cuda':
      torch.cuda.set_device(device)
  else:
    device = common.pick_device()
  runs = [train_run(args, r, device, rank, world) for r in range(args.runs)]
  if rank == 0:
    common.report({'task': 'segmentation', 'dataset': args.dataset, 'weights': str(args.weights),
                   'epochs': args.epochs, 'runs': args.runs, 'select': args.select,
                   **summarize(runs, args.classes)},
                  args.out)
  if world > 1:
    dist.destroy_process_group()


if __name__ == '__main__':
  from revisit_jax import cli  # one-line errors, exit status 2
  cli.run(main)
