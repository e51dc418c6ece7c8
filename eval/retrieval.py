"""Segment retrieval on VOC 2012: MaskContrast's retrieval code with per-image K-means segments.

  python -m eval.retrieval WEIGHTS --data VOCdevkit/VOC2012 [--clusters 5] [--bank_rule objects]

The paper ran the retrieval code of wvangansbeke/Unsupervised-Semantic-Segmentation with its
weights and K clusters. This follows that repository at commit dfd5fa0a (2022-06-13;
segmentation/retrieval.py, utils/retrieval_utils.py, utils/common_config.py, utils/utils.py),
with K-means segments of each image in place of its saliency masks:
- images resized to 512 x 512 (cv2 cubic), ground truth to 512 x 512 (nearest), scored there;
- features: the dilated ResNet-50 (its ResnetDilated, output stride 8): layer4, 64 x 64 x 2048;
- each image's raw grid cells are clustered into K segments by MiniBatchKMeans with the settings
  of that repository's kmeans_utils.py (batch 1000, 3 initialisations, fixed seed); a segment's
  prototype is the L2-normalised sum of its raw cells (retrieval_utils.py's prototype with a hard
  mask); the segment map is nearest-upsampled to 512 x 512;
- memory bank: VOC12 train segments, labelled by `--bank_rule`:
  objects (default, retrieval_utils.py's rule): a segment whose pixels are all background or
  void is dropped, the others take the majority object class, ties to the larger class id;
  all: background is a class like the others (majority over the 21, ties to the larger id),
  only segments without a labelled pixel are dropped;
- queries: VOC12 val segments, each painted with the label of its cosine-nearest prototype;
- mIoU as its SemsegMeter: per-class IoU over all val pixels (255 ignored), 0 for a class absent
  from both prediction and ground truth, averaged over the 21 classes; the 7-class subset
  (aeroplane, bottle, bus, car, cat, cow, person) is its second config: the other 13 classes
  become 255 in the train and val ground truth, and the mean is over the 7 (no background).
Not public: how the paper clustered each image (its code was never released; the maintainers
describe the dilated backbone and clustering the grid before the average pooling in issues
#7, #14 and #19) and which bank rule it used. With the objects rule no query is ever labelled
background (the reference's saliency masks left the rest of the image background);
`--bank_rule all` is the alternative.
"""
import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, ImageDraw
from sklearn.cluster import MiniBatchKMeans
from tqdm import tqdm

from eval import common
from eval import seg_data
from eval.metrics import confusion_matrix, iou_per_class
from eval.segmentation import resnet_trunk

CLASSES = seg_data.VOC_CLASSES
SUBSET = ('aeroplane', 'bottle', 'bus', 'car', 'cat', 'cow', 'person')
SUBSET_IDS = [CLASSES.index(c) for c in SUBSET]
OBJECT_IDS = list(range(1, len(CLASSES)))
BANK_RULES = ('objects', 'all')


def dilated_trunk(weights, device) -> torch.nn.Module:
  """ResNet-50 to layer4 at output stride 8, as MaskContrast's ResnetDilated(dilate_scale=8):
  layer3 and layer4 at stride 1, their 3x3 convs dilated 2 and 4 except each layer's first
  (the formerly strided one), dilated 1 and 2. torchvision's replace_stride_with_dilation builds
  exactly these convs."""
  resnet = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
  resnet.fc = torch.nn.Identity()
  resnet.load_state_dict(common.resnet50_state_dict(weights), strict=True)
  return resnet_trunk(resnet).to(device).eval()


def segment(grid: torch.Tensor, clusters: int, seed: int):
  """K-means segments of one (C, h, w) feature grid.

  The raw cells are clustered by MiniBatchKMeans with MaskContrast's kmeans_utils.py settings.
  Returns the (h, w) segment index map (0..n-1, n <= clusters) and the (n, C) float32
  prototypes: L2-normalised sums of each segment's raw cells.
  """
  c, h, w = grid.shape
  cells = grid.float().reshape(c, h * w).T.cpu().numpy()
  kmeans = MiniBatchKMeans(n_clusters=min(clusters, h * w), batch_size=1000, n_init=3,
                           random_state=seed)
  _, assign = np.unique(kmeans.fit_predict(cells), return_inverse=True)  # ids 0..n-1
  sums = np.zeros((assign.max() + 1, c), np.float64)
  np.add.at(sums, assign, cells)
  prototypes = sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(1e-12)
  return assign.reshape(h, w), prototypes.astype(np.float32)


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


def bank_labels(counts: np.ndarray, rule: str = 'objects', classes=OBJECT_IDS):
  """(labels, valid) of segments from their (n, 21) class counts, by a bank rule.

  Only `classes` count (object ids; the 7-class subset leaves the other 13 out, as its
  ground truth marks them void); rule 'all' counts background too. A segment without a counted
  pixel is not valid; the label is the most frequent counted class, ties to the larger id
  (retrieval_utils.py's max over (count, class))."""
  if rule not in BANK_RULES:
    raise ValueError(f'bank rule {rule!r}, expected one of {BANK_RULES}')
  keep = np.zeros(counts.shape[1], bool)
  keep[list(classes)] = True
  keep[0] |= rule == 'all'
  counts = counts * keep
  return counts.shape[1] - 1 - counts[:, ::-1].argmax(1), counts.sum(1) > 0


def subset_mask(mask: np.ndarray) -> np.ndarray:
  """Ground truth with every class outside background + SUBSET set to 255."""
  keep = np.zeros(256, bool)
  keep[[0] + SUBSET_IDS] = True
  keep[seg_data.IGNORE] = True
  return np.where(keep[mask], mask, seg_data.IGNORE)


@torch.no_grad()
def image_segments(trunk, dataset, args, device, desc):
  """Yields (index, segment map at the mask's resolution, small segment map, prototypes, mask)."""
  loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=args.workers)
  for i, (image, mask) in enumerate(tqdm(loader, desc=desc)):
    grid = trunk(image.to(device))[0]  # float32: clusters and 1-NN picks feel rounding
    small, prototypes = segment(grid, args.clusters, args.seed)
    mask = mask[0].numpy()
    yield i, upsample(small, mask.shape), small, prototypes, mask


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
    hits = nearest(q['prototype'][None], bank['prototypes'], topk)[0]
    for c, b in enumerate(hits):
      canvas.paste(render(train_set, bank['image'][b], bank['small'][bank['image'][b]],
                          bank['segment'][b], tile, CLASSES[bank['label'][b]]),
                   ((c + 1) * tile, r * tile))
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  canvas.save(path)


def build_bank(trunk, train_set, args, device) -> dict:
  """Train segments: prototypes, class counts, where they came from."""
  parts = {k: [] for k in ('prototypes', 'counts', 'image', 'segment')}
  small_maps = []
  for i, full, small, prototypes, mask in image_segments(trunk, train_set, args, device, 'bank'):
    parts['prototypes'].append(prototypes)
    parts['counts'].append(class_counts(full, mask, len(prototypes)))
    parts['image'] += [i] * len(prototypes)
    parts['segment'] += list(range(len(prototypes)))
    small_maps.append(small)
  bank = {k: np.concatenate(v) if k in ('prototypes', 'counts') else np.array(v)
          for k, v in parts.items()}
  bank['small'] = small_maps
  return bank


def select(bank: dict, rule: str, classes=OBJECT_IDS) -> dict:
  """The labelled bank: segments kept and labelled by `rule` over `classes` (bank_labels)."""
  labels, valid = bank_labels(bank['counts'], rule, classes)
  if not valid.any():
    raise ValueError(f'no train segment has a pixel of classes {list(classes)} (bank rule '
                     f'{rule!r}); check the VOC2012 masks')
  out = {k: bank[k][valid] for k in ('prototypes', 'image', 'segment')}
  out['label'] = labels[valid]
  out['small'] = bank['small']
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.add_weights_args(parser)
  parser.add_argument('--data', required=True, help='VOCdevkit/VOC2012 folder')
  parser.add_argument('--clusters', type=int, default=5, help='K-means segments per image')
  parser.add_argument('--size', type=int, default=512,
                      help='images and ground truth are resized to size x size and scored there '
                           '(dilated layer4 grid: size / 8)')
  parser.add_argument('--bank_rule', choices=BANK_RULES, default='objects',
                      help="objects: the reference's (background/void segments dropped, "
                           'majority object class); all: background kept as a class')
  parser.add_argument('--seed', type=int, default=0, help='K-means and figure seed')
  parser.add_argument('--workers', type=int, default=4)
  parser.add_argument('--figure', default=None,
                      help='PNG of query segments and retrievals (default: beside --out)')
  parser.add_argument('--figure_rows', type=int, default=8)
  parser.add_argument('--figure_topk', type=int, default=5)
  parser.add_argument('--figure_tile', type=int, default=160)
  args = parser.parse_args(argv)

  transform = seg_data.resize_both(args.size)
  train_set = seg_data.VOCSegmentation(args.data, 'train', transform)
  val_set = seg_data.VOCSegmentation(args.data, 'val', transform)
  device = common.pick_device()
  trunk = dilated_trunk(args.weights, device)

  bank = build_bank(trunk, train_set, args, device)
  bank_all = select(bank, args.bank_rule)
  bank_subset = select(bank, args.bank_rule, SUBSET_IDS)
  n = len(CLASSES)
  conf_all, conf_subset = np.zeros((n, n), np.int64), np.zeros((n, n), np.int64)
  queries = []
  for i, full, small, prototypes, mask in image_segments(trunk, val_set, args, device, 'query'):
    label_all = bank_all['label'][nearest(prototypes, bank_all['prototypes'])[:, 0]]
    label_subset = bank_subset['label'][nearest(prototypes, bank_subset['prototypes'])[:, 0]]
    conf_all += confusion_matrix(label_all[full], mask, n)
    conf_subset += confusion_matrix(label_subset[full], subset_mask(mask), n)
    truth, _ = bank_labels(class_counts(full, mask, len(prototypes)), 'all')
    queries += [{'image': i, 'segment': s, 'small': small, 'prototype': prototypes[s],
                 'label': int(truth[s])} for s in range(len(prototypes))]

  # SemsegMeter: a class absent from prediction and ground truth has IoU 0 and is averaged.
  iou_all = iou_per_class(conf_all, absent=0.0) * 100
  iou_subset = iou_per_class(conf_subset, absent=0.0)[SUBSET_IDS] * 100
  figure = args.figure or (str(Path(args.out).with_name(Path(args.out).stem + '_retrievals.png'))
                           if args.out else None)
  if figure:
    retrieval_figure(figure, train_set, val_set, bank_all, queries, args.figure_rows,
                     args.figure_topk, args.figure_tile, args.seed)
  common.report({'task': 'segment_retrieval', 'weights': str(args.weights),
                 'clusters': args.clusters, 'size': args.size, 'bank_rule': args.bank_rule,
                 'miou': float(iou_all.mean()), 'iou': dict(zip(CLASSES, iou_all.tolist())),
                 'miou_subset': float(iou_subset.mean()),
                 'iou_subset': dict(zip(SUBSET, iou_subset.tolist())),
                 'bank_segments': len(bank_all['label']), 'query_segments': len(queries),
                 'figure': figure}, args.out)


if __name__ == '__main__':
  from revisit_jax import cli  # one-line errors, exit status 2
  cli.run(main)
