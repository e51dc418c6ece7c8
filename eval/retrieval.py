"""Segment retrieval on VOC 2012 (the MaskContrast protocol, adapted to K-means segments).

  python -m eval.retrieval WEIGHTS --data VOCdevkit/VOC2012 [--clusters 5] --out results.json

Per image, the L2-normalised layer4 feature grid (2048-d) is clustered into K segments
(scikit-learn KMeans, fixed seed); a segment's descriptor is the L2-normalised mean of its
cells. The cluster map is nearest-upsampled to the ground truth's resolution.
- Memory bank: VOC12 train segments, labelled with the majority ground-truth class of their
  pixels (255 ignored; segments with no labelled pixel are left out).
- Queries: VOC12 val segments; each takes the label of its cosine nearest neighbour in the bank,
  painted over the segment's pixels; mIoU over the 21 classes.
- 7-class subset (aeroplane, bottle, bus, car, cat, cow, person), as MaskContrast evaluates it:
  the other 13 classes become 255 (ignored) in the train and val ground truth alike, the bank is
  relabelled from that ground truth, and the reported mIoU averages the IoU of the 7 classes
  (background is still a label, but is not averaged).
Unlike MaskContrast (one salient object per image), every pixel lies in some segment here, so
background-majority segments are kept in the bank.
"""
import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from sklearn.cluster import KMeans
from tqdm import tqdm

from eval import common
from eval import seg_data
from eval.metrics import confusion_matrix, iou_per_class
from eval.segmentation import resnet_trunk

CLASSES = seg_data.VOC_CLASSES
SUBSET = ('aeroplane', 'bottle', 'bus', 'car', 'cat', 'cow', 'person')
SUBSET_IDS = [CLASSES.index(c) for c in SUBSET]


def segment(grid: torch.Tensor, clusters: int, seed: int):
  """K-means segments of one (C, h, w) feature grid.

  Returns the (h, w) segment index map (0..n-1, n <= clusters) and the (n, C) float32
  L2-normalised segment descriptors.
  """
  c, h, w = grid.shape
  cells = F.normalize(grid.float().reshape(c, h * w).T, dim=1).cpu().numpy()
  k = min(clusters, h * w)
  assign = KMeans(n_clusters=k, random_state=seed, n_init='auto').fit_predict(cells)
  _, assign = np.unique(assign, return_inverse=True)  # Consecutive ids if a cluster is empty.
  n = assign.max() + 1
  sums = np.zeros((n, c), np.float64)
  np.add.at(sums, assign, cells)
  descriptors = sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(1e-12)
  return assign.reshape(h, w), descriptors.astype(np.float32)


def upsample(segments: np.ndarray, size) -> np.ndarray:
  """Nearest-neighbour upsampling of a segment map to `size` (H, W)."""
  t = torch.from_numpy(segments)[None, None].float()
  return F.interpolate(t, size=tuple(size), mode='nearest')[0, 0].long().numpy()


def class_counts(segments: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
  """(n, 21) pixel counts of each ground-truth class per segment; 255 pixels are not counted."""
  mask = mask.astype(np.int64)
  valid = mask != seg_data.IGNORE
  if (mask[valid] >= len(CLASSES)).any():
    raise ValueError(f'mask values {np.unique(mask[valid & (mask >= len(CLASSES))])} are not VOC '
                     'classes (0-20) or 255')
  flat = segments[valid] * len(CLASSES) + mask[valid]
  return np.bincount(flat, minlength=n * len(CLASSES)).reshape(n, len(CLASSES))


def majority(counts: np.ndarray, classes=None):
  """(labels, valid): majority class per segment among `classes` (default all)."""
  if classes is not None:
    keep = np.zeros(counts.shape[1], bool)
    keep[list(classes)] = True
    counts = counts * keep
  return counts.argmax(1), counts.sum(1) > 0


def subset_mask(mask: np.ndarray) -> np.ndarray:
  """Ground truth with every class outside background + SUBSET set to 255."""
  keep = np.zeros(256, bool)
  keep[[0] + SUBSET_IDS] = True
  keep[seg_data.IGNORE] = True
  return np.where(keep[mask], mask, seg_data.IGNORE)


@torch.no_grad()
def image_segments(trunk, dataset, args, device, desc):
  """Yields (index, segment map at the mask's resolution, small segment map, descriptors, mask)."""
  loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=args.workers)
  for i, (image, mask) in enumerate(tqdm(loader, desc=desc)):
    grid = trunk(image.to(device))[0]  # float32: clusters and 1-NN picks feel rounding
    small, descriptors = segment(grid, args.clusters, args.seed)
    mask = mask[0].numpy()
    yield i, upsample(small, mask.shape), small, descriptors, mask


def nearest(queries: np.ndarray, bank: np.ndarray, k: int = 1) -> np.ndarray:
  """Indices of the k most cosine-similar bank rows (both sides L2-normalised)."""
  return np.argsort(-(queries @ bank.T), axis=1, kind='stable')[:, :k]


def render(dataset, index, small, segment_id, tile, caption):
  """Tile of image `index` with one segment kept bright and the rest darkened."""
  with Image.open(dataset.images[index]) as image:
    image = np.asarray(image.convert('RGB').resize((tile, tile), Image.BILINEAR), np.float32)
  inside = upsample(small, (tile, tile)) == segment_id
  image = np.where(inside[..., None], image, image * 0.25).astype(np.uint8)
  picture = Image.fromarray(image)
  ImageDraw.Draw(picture).text((3, 2), caption, fill=(255, 255, 0))
  return picture


def retrieval_figure(path, train_set, val_set, bank, queries, rows, topk, tile, seed):
  """PNG grid: each row a val query segment, then its top-k train segments (cosine)."""
  candidates = [q for q in queries if q['label'] != 0] or queries
  rng = np.random.default_rng(seed)
  picked = rng.choice(len(candidates), size=min(rows, len(candidates)), replace=False)
  canvas = Image.new('RGB', ((topk + 1) * tile, len(picked) * tile))
  for r, q in enumerate(candidates[i] for i in picked):
    canvas.paste(render(val_set, q['image'], q['small'], q['segment'], tile,
                        f"query: {CLASSES[q['label']]}"), (0, r * tile))
    hits = nearest(q['descriptor'][None], bank['descriptors'], topk)[0]
    for c, b in enumerate(hits):
      canvas.paste(render(train_set, bank['image'][b], bank['small'][bank['image'][b]],
                          bank['segment'][b], tile, CLASSES[bank['label'][b]]),
                   ((c + 1) * tile, r * tile))
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  canvas.save(path)


def build_bank(trunk, train_set, args, device) -> dict:
  """Train segments: descriptors, majority labels (all classes / subset), where they came from."""
  parts = {k: [] for k in ('descriptors', 'counts', 'image', 'segment')}
  small_maps = []
  for i, full, small, descriptors, mask in image_segments(trunk, train_set, args, device, 'bank'):
    parts['descriptors'].append(descriptors)
    parts['counts'].append(class_counts(full, mask, len(descriptors)))
    parts['image'] += [i] * len(descriptors)
    parts['segment'] += list(range(len(descriptors)))
    small_maps.append(small)
  bank = {k: np.concatenate(v) if k in ('descriptors', 'counts') else np.array(v)
          for k, v in parts.items()}
  bank['small'] = small_maps
  return bank


def select(bank: dict, classes=None) -> dict:
  """The bank restricted to segments that have a label among `classes`."""
  labels, valid = majority(bank['counts'], classes)
  if not valid.any():
    raise ValueError('no train segment covers a labelled pixel; check the VOC2012 masks')
  out = {k: bank[k][valid] for k in ('descriptors', 'image', 'segment')}
  out['label'] = labels[valid]
  out['small'] = bank['small']
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.add_weights_args(parser)
  parser.add_argument('--data', required=True, help='VOCdevkit/VOC2012 folder')
  parser.add_argument('--clusters', type=int, default=5, help='K-means segments per image')
  parser.add_argument('--size', type=int, default=448,
                      help='images are resized to size x size (layer4 grid: size / 32)')
  parser.add_argument('--seed', type=int, default=0, help='K-means and figure seed')
  parser.add_argument('--workers', type=int, default=4)
  parser.add_argument('--figure', default=None,
                      help='PNG of query segments and retrievals (default: beside --out)')
  parser.add_argument('--figure_rows', type=int, default=8)
  parser.add_argument('--figure_topk', type=int, default=5)
  parser.add_argument('--figure_tile', type=int, default=160)
  args = parser.parse_args(argv)

  transform = seg_data.resize_image_only(args.size)
  train_set = seg_data.VOCSegmentation(args.data, 'train', transform)
  val_set = seg_data.VOCSegmentation(args.data, 'val', transform)
  device = common.pick_device()
  trunk = resnet_trunk(common.build_resnet50(args.weights, device=device)).eval()

  bank = build_bank(trunk, train_set, args, device)
  bank_all, bank_subset = select(bank), select(bank, [0] + SUBSET_IDS)
  n = len(CLASSES)
  conf_all, conf_subset = np.zeros((n, n), np.int64), np.zeros((n, n), np.int64)
  queries = []
  for i, full, small, descriptors, mask in image_segments(trunk, val_set, args, device, 'query'):
    label_all = bank_all['label'][nearest(descriptors, bank_all['descriptors'])[:, 0]]
    label_subset = bank_subset['label'][nearest(descriptors, bank_subset['descriptors'])[:, 0]]
    conf_all += confusion_matrix(label_all[full], mask, n)
    conf_subset += confusion_matrix(label_subset[full], subset_mask(mask), n)
    gt_labels, _ = majority(class_counts(full, mask, len(descriptors)))
    queries += [{'image': i, 'segment': s, 'small': small, 'descriptor': descriptors[s],
                 'label': int(gt_labels[s])} for s in range(len(descriptors))]

  iou_all, iou_subset = iou_per_class(conf_all) * 100, iou_per_class(conf_subset)[SUBSET_IDS] * 100
  figure = args.figure or (str(Path(args.out).with_name(Path(args.out).stem + '_retrievals.png'))
                           if args.out else None)
  if figure:
    retrieval_figure(figure, train_set, val_set, bank_all, queries, args.figure_rows,
                     args.figure_topk, args.figure_tile, args.seed)
  as_dict = lambda names, values: {c: None if np.isnan(v) else float(v)
                                   for c, v in zip(names, values)}
  common.report({'task': 'segment_retrieval', 'weights': str(args.weights),
                 'clusters': args.clusters, 'size': args.size,
                 'miou': float(np.nanmean(iou_all)), 'iou': as_dict(CLASSES, iou_all),
                 'miou_subset': float(np.nanmean(iou_subset)),
                 'iou_subset': as_dict(SUBSET, iou_subset),
                 'bank_segments': len(bank_all['label']), 'query_segments': len(queries),
                 'figure': figure}, args.out)


if __name__ == '__main__':
  from revisit_jax import cli  # one-line errors, exit status 2
  cli.run(main)
