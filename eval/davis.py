"""DAVIS-2017 video label propagation (Jabri et al. protocol) and J&F scoring.

  python -m eval.davis WEIGHTS --data DAVIS_ROOT [--split val] [--save_dir DIR] [--out r.json]
  python -m eval.davis --results_path DIR --data DAVIS_ROOT      # score existing predictions

Features are the layer3 output of the torchvision ResNet-50 with layer3 at stride 1 (1024-d,
stride 8), L2-normalised. The first frame's one-hot mask is resized bilinearly to the feature
grid and kept soft; each later frame's labels are a top-k softmax-weighted sum over the labels of
the first frame and the `context` previous frames (soft predictions), the previous frames
restricted to a spatial radius. Defaults are those of Jabri et al.'s DAVIS command
(ajabri/videowalk README). Scores use eval.davis_metrics (the benchmark's conventions).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from eval import common, davis_metrics
from eval.common import IMAGENET_MEAN, IMAGENET_STD
from eval.seg_data import read_index_png, require_dir, require_files, voc_palette


# ---------------------------------------------------------------- dataset layout

def sequence_names(root, split='val', sequences=None):
  """Sequences from ImageSets/2017/<split>.txt, or the given list; checks the layout."""
  root = require_dir(Path(root), 'DAVIS root')
  for sub in ('JPEGImages/480p', 'Annotations/480p'):
    if not (root / sub).is_dir():
      raise FileNotFoundError(f'{root / sub} not found: expected the DAVIS-2017 layout '
                              'JPEGImages/480p/<seq>/%05d.jpg, Annotations/480p/<seq>/%05d.png, '
                              'ImageSets/2017/{train,val}.txt')
  if sequences:
    return list(sequences)
  listing = root / 'ImageSets' / '2017' / f'{split}.txt'
  if not listing.is_file():
    raise FileNotFoundError(f'{listing} not found (the sequence list of split {split!r})')
  names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
  if not names:
    raise ValueError(f'{listing} lists no sequences')
  return names


def sequence_files(root, seq, max_frames=None):
  """(frame jpgs, annotation pngs) of one sequence, one annotation per frame, sorted."""
  img_dir = Path(root) / 'JPEGImages' / '480p' / seq
  ann_dir = Path(root) / 'Annotations' / '480p' / seq
  require_dir(img_dir, f'frames of sequence {seq!r}')
  require_dir(ann_dir, f'annotations of sequence {seq!r}')
  frames = sorted(img_dir.glob('*.jpg'))[:max_frames]
  annotations = sorted(ann_dir.glob('*.png'))[:max_frames]
  if not frames:
    raise FileNotFoundError(f'no .jpg frames in {img_dir}')
  if [p.stem for p in frames] != [p.stem for p in annotations]:
    raise ValueError(f'{ann_dir} must hold one %05d.png per frame of {img_dir} '
                     f'({len(annotations)} annotations for {len(frames)} frames)')
  return frames, annotations


def read_label_maps(paths):
  """Object-id maps [T, H, W] of a sequence's palette PNGs, which must share one size."""
  maps = [read_index_png(p) for p in paths]
  for p, m in zip(paths, maps):
    if m.shape != maps[0].shape:
      raise ValueError(f'{p}: size {m.shape} differs from {paths[0]} {maps[0].shape}')
  return np.stack(maps)


def save_labels(labels, path):
  img = Image.fromarray(labels.astype(np.uint8), mode='P')
  img.putpalette(voc_palette())
  path.parent.mkdir(parents=True, exist_ok=True)
  img.save(path)


def save_overlay_gif(frames, labels, path, alpha=0.5):
  """Frames with the predicted objects tinted in their palette colours, as an animated GIF."""
  colours = np.array(voc_palette(), np.float32).reshape(256, 3)
  pictures = []
  for frame, lab in zip(frames, labels):
    tint = colours[lab]
    fg = (lab > 0)[..., None]
    mixed = np.where(fg, (1 - alpha) * frame + alpha * tint, frame)
    pictures.append(Image.fromarray(mixed.astype(np.uint8)))
  path.parent.mkdir(parents=True, exist_ok=True)
  pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=100, loop=0)


# ---------------------------------------------------------------- features

def layer3_extractor(weights, device):
  """ResNet-50 up to layer3 with layer3's strides set to 1 (stride 8, 1024-d), as Jabri et al."""
  net = common.build_resnet50(weights, device=device)
  for m in net.layer3.modules():
    if isinstance(m, torch.nn.Conv2d):
      m.stride = (1, 1)
  return torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                             net.layer1, net.layer2, net.layer3).eval()


def read_frames(paths, scale=1.0):
  """RGB frames as uint8 [T, H, W, 3], optionally resized by `scale` (bilinear)."""
  frames = []
  for p in paths:
    img = Image.open(p).convert('RGB')
    if scale != 1.0:
      img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
    frames.append(np.asarray(img))
  return np.stack(frames)


@torch.no_grad()
def extract_features(model, frames, device, batch_size=4):
  """L2-normalised features [T, h, w, C] (float32) of uint8 frames [T, H, W, 3]."""
  mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
  std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
  out = []
  for s in range(0, len(frames), batch_size):
    x = torch.from_numpy(frames[s:s + batch_size]).to(device).permute(0, 3, 1, 2).float() / 255
    x = (x - mean) / std
    f = model(x)  # float32, as Jabri et al.: top-10 picks are sensitive to near-ties
    out.append(F.normalize(f, dim=1).permute(0, 2, 3, 1))
  return torch.cat(out)


# ---------------------------------------------------------------- propagation

def one_hot_labels(labels, n_classes, size):
  """Label map [H, W] -> soft labels [h, w, n_classes] at the feature grid `size`.

  As Jabri et al.'s code/data/vos.py: the float one-hot mask is resized bilinearly (their
  cv2.resize, INTER_LINEAR: half-pixel centres, no antialiasing) and kept soft.
  """
  one_hot = F.one_hot(torch.as_tensor(labels, dtype=torch.long), n_classes).permute(2, 0, 1).float()
  soft = F.interpolate(one_hot[None], size=tuple(size), mode='bilinear', align_corners=False)
  return soft[0].permute(1, 2, 0)


@torch.no_grad()
def propagate(features, first_labels, temperature=0.05, topk=10, radius=12, context=20, chunk=1024):
  """Soft labels [T, h, w, N] of all frames from features [T, h, w, C] and frame 0's [h, w, N].

  For frame t the context is frame 0 plus frames t-context .. t-1 (indices below 0 repeat
  frame 0). Affinities key . query / temperature; cells of the recent frames farther than
  `radius` cells from the query are excluded; the top-k over all context cells are
  softmax-weighted and their (soft, previously predicted) labels summed.
  """
  T, h, w, C = features.shape
  n = h * w
  if first_labels.shape[:2] != (h, w):
    raise ValueError(f'labels {tuple(first_labels.shape)} do not match the feature grid {(h, w)}')
  if topk > n:
    raise ValueError(f'topk={topk} exceeds the {n} cells of a frame')
  device = features.device
  feats = features.reshape(T, n, C)
  labels = torch.zeros(T, n, first_labels.shape[-1], device=device)
  labels[0] = first_labels.reshape(n, -1).to(device)
  ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device),
                          indexing='ij')
  ys, xs = ys.flatten().float(), xs.flatten().float()
  far = (ys[:, None] - ys[None]) ** 2 + (xs[:, None] - xs[None]) ** 2 >= radius ** 2  # [n, n]
  for t in range(1, T):
    idx = torch.tensor([0] + [max(t - context + i, 0) for i in range(context)], device=device)
    keys = feats[idx].reshape(-1, C)
    key_labels = labels[idx].reshape(keys.shape[0], -1)
    for s in range(0, n, chunk):
      aff = (feats[t, s:s + chunk] @ keys.T).view(-1, context + 1, n)
      aff[:, 1:].masked_fill_(far[s:s + chunk, None, :], float('-inf'))
      weights, ids = (aff.flatten(1) / temperature).topk(topk, dim=1)
      weights = weights.softmax(dim=1)
      labels[t, s:s + chunk] = torch.einsum('qk,qkn->qn', weights, key_labels[ids])
  return labels.view(T, h, w, -1)


def to_label_maps(soft, size):
  """Soft labels [T, h, w, N] -> label maps uint8 [T, H, W]: bilinear upsampling, argmax."""
  maps = []
  for s in soft:
    up = F.interpolate(s.permute(2, 0, 1)[None], size=size, mode='bilinear', align_corners=False)
    maps.append(up[0].argmax(0).to(torch.uint8).cpu())
  return torch.stack(maps).numpy()


# ---------------------------------------------------------------- commands

def run_propagation(args):
  names = sequence_names(args.data, args.split, args.sequences)
  device = common.pick_device()
  model = layer3_extractor(args.weights, device)
  scores, n_frames, seconds = {}, 0, 0.0
  for seq in tqdm(names, desc='davis', file=sys.stderr):
    frame_paths, ann_paths = sequence_files(args.data, seq, args.max_frames)
    gt = read_label_maps(ann_paths)
    frames = read_frames(frame_paths, args.scale)
    start = time.perf_counter()
    feats = extract_features(model, frames, device)
    given = np.where(gt[0] == davis_metrics.VOID, 0, gt[0])
    first = one_hot_labels(given, int(given.max()) + 1, feats.shape[1:3])
    soft = propagate(feats, first, args.temperature, args.topk, args.radius, args.context)
    pred = to_label_maps(soft, gt.shape[1:])
    pred[0] = given  # the given first-frame mask, as semi-supervised results carry it
    if device.type == 'cuda':
      torch.cuda.synchronize()
    seconds += time.perf_counter() - start
    n_frames += len(frames)
    scores[seq] = davis_metrics.evaluate_sequence(gt, pred, seq)
    if args.save_dir:
      save_dir = Path(args.save_dir)
      for p, lab in zip(ann_paths, pred):
        save_labels(lab, save_dir / seq / p.name)
      native = frames if args.scale == 1 else read_frames(frame_paths)
      save_overlay_gif(native, pred, save_dir / 'overlays' / f'{seq}.gif')
  fps = n_frames / seconds
  print(f'label propagation: {n_frames} frames, {fps:.2f} frames/s on {device}', file=sys.stderr)
  settings = {'weights': str(args.weights), 'temperature': args.temperature, 'topk': args.topk,
              'radius': args.radius, 'context': args.context, 'scale': args.scale,
              'frames': n_frames, 'fps': fps, 'device': str(device)}
  return settings, scores


def score_results(args):
  """Scores PNG predictions <results_path>/<seq>/<frame>.png against the annotations."""
  results = require_dir(Path(args.results_path), 'results')
  scores = {}
  names = sequence_names(args.data, args.split, args.sequences)
  for seq in tqdm(names, desc='score', file=sys.stderr):
    _, ann_paths = sequence_files(args.data, seq, args.max_frames)
    pred_paths = [results / seq / p.name for p in ann_paths]
    require_files(pred_paths, f'predictions <results_path>/{seq}/%05d.png')
    scores[seq] = davis_metrics.evaluate_sequence(read_label_maps(ann_paths),
                                                  read_label_maps(pred_paths), str(results / seq))
  return {'results_path': str(results)}, scores


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('weights', nargs='?', help='.pth / .safetensors / Flax checkpoint dir or workdir')
  p.add_argument('--results_path', help='score the predictions in this folder, do not propagate')
  p.add_argument('--data', required=True,
                 help='DAVIS-2017 root (JPEGImages/, Annotations/, ImageSets/)')
  p.add_argument('--split', default='val')
  p.add_argument('--sequences', type=lambda s: [x for x in s.split(',') if x],
                 help='a,b,c (default: those of the split)')
  p.add_argument('--temperature', type=float, default=0.05,
                 help="affinity temperature (Jabri et al.'s DAVIS command; 0.07 is only their "
                      'argparse default)')
  p.add_argument('--topk', type=int, default=10)
  p.add_argument('--radius', type=float, default=12)
  p.add_argument('--context', type=int, default=20, help='previous frames in the context')
  p.add_argument('--scale', type=float, default=1.0,
                 help='resize frames (1 = native 480p, the protocol)')
  p.add_argument('--max_frames', type=int,
                 help='use only the first frames of each sequence (quick checks)')
  p.add_argument('--save_dir',
                 help='write palette PNGs <save_dir>/<seq>/%%05d.png and overlays/<seq>.gif')
  p.add_argument('--out', help='write the JSON results here')
  args = p.parse_args(argv)
  if (args.weights is None) == (args.results_path is None):
    p.error('give either WEIGHTS (propagate) or --results_path (score existing predictions)')
  if args.max_frames is not None and args.max_frames < 3:
    p.error('--max_frames must be at least 3 (the first and last frames are not scored)')
  return args


def main(argv=None):
  args = parse_args(argv)
  settings, scores = run_propagation(args) if args.weights else score_results(args)
  results = {'task': 'davis', 'split': args.split, **settings, **davis_metrics.summarize(scores)}
  common.report(results, args.out)
  return results


if __name__ == '__main__':
  from revisit_jax import cli  # one-line errors, exit status 2
  cli.run(main)
