"""Segment retrieval against the rules of MaskContrast's retrieval code, and the CLI end to end.

The reference (wvangansbeke/Unsupervised-Semantic-Segmentation, segmentation/) cannot be
imported (cv2, CUDA, its config system), so its rules are written out here: ResnetDilated's
conv edits, the prototype as a normalised sum, the bank's majority vote, SemsegMeter's IoU, and
cv2's resizes (tests/cv2_rules.py).
"""
import json
from functools import partial

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.cluster import MiniBatchKMeans
from sklearn.datasets import load_sample_image

import cv2_rules
from eval import retrieval, seg_data
from eval.common import IMAGENET_MEAN, IMAGENET_STD
from eval.metrics import confusion_matrix, iou_per_class
from fixtures_eval import (class_from_pixels, resnet50_pth, save_palette_png,  # noqa: F401
                           single_thread, write_voc12)

single_thread()


# ---------------------------------------------------------------- the reference's rules

def nostride_dilate(module, dilate):
  """ResnetDilated._nostride_dilate: strided convs lose their stride (a 3x3 one gets half the
  dilation), every other 3x3 conv gets the full dilation."""
  if isinstance(module, torch.nn.Conv2d):
    if module.stride == (2, 2):
      module.stride = (1, 1)
      if module.kernel_size == (3, 3):
        module.dilation = module.padding = (dilate // 2, dilate // 2)
    elif module.kernel_size == (3, 3):
      module.dilation = module.padding = (dilate, dilate)


def reference_dilated(weights):
  """ResnetDilated(resnet50, dilate_scale=8) as MaskContrast builds it, to layer4."""
  resnet = torchvision.models.resnet50()
  resnet.load_state_dict(torch.load(weights, weights_only=True))
  resnet.layer3.apply(partial(nostride_dilate, dilate=2))
  resnet.layer4.apply(partial(nostride_dilate, dilate=4))
  return torch.nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
                             resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4).eval()


def reference_bank_label(segment_classes):
  """retrieval_utils.build_memory_bank: None if every pixel is background/void, else the
  majority object class, ties to the larger id (max over (count, class))."""
  classes, counts = np.unique(segment_classes, return_counts=True)
  if set(classes.tolist()) <= {0, 255}:
    return None
  return max((n, c) for c, n in zip(classes.tolist(), counts.tolist()) if c not in (0, 255))[1]


def reference_meter(pred, gt, n=21):
  """SemsegMeter: per-class IoU over valid pixels, tp / max(tp + fp + fn, 1e-8)."""
  valid = gt != 255
  iou = []
  for c in range(n):
    tp = np.sum((gt == c) & (pred == c) & valid)
    fp = np.sum((gt != c) & (pred == c) & valid)
    fn = np.sum((gt == c) & (pred != c) & valid)
    iou.append(tp / max(tp + fp + fn, 1e-8))
  return np.array(iou)


def ignore_outside_subset(mask):
  """VOC12(ignore_classes=...) of the 7-class config: the other 13 classes become 255."""
  return np.where(np.isin(mask, [0, 255] + retrieval.SUBSET_IDS), mask, 255)


# ---------------------------------------------------------------- steps

def test_dilated_trunk_is_maskcontrasts_resnet_dilated(resnet50_pth):  # noqa: F811
  ours = retrieval.dilated_trunk(resnet50_pth, torch.device('cpu'))
  reference = reference_dilated(resnet50_pth)
  convs = lambda net: [(m.stride, m.dilation, m.padding) for m in net.modules()
                       if isinstance(m, torch.nn.Conv2d)]
  assert convs(ours) == convs(reference)
  with torch.no_grad():  # output stride 8: a 64 px image gives an 8 x 8 grid
    x = torch.randn(1, 3, 64, 64)
    np.testing.assert_allclose(ours(x).numpy(), reference(x).numpy(), rtol=1e-5, atol=1e-6)
    assert ours(x).shape == (1, 2048, 8, 8)


def photo_grid(resnet50_pth, size=64):  # noqa: F811
  """Dilated layer4 features (2048, size/8, size/8) of a real photo."""
  image = cv2_rules.resize_cubic(load_sample_image('china.jpg'), (size, size))
  x = (np.clip(np.round(image), 0, 255) / 255 - IMAGENET_MEAN) / IMAGENET_STD
  with torch.no_grad():
    return reference_dilated(resnet50_pth)(
        torch.tensor(x, dtype=torch.float32).permute(2, 0, 1)[None])[0]


def test_segments_and_prototypes_follow_the_reference(resnet50_pth):  # noqa: F811
  grid = photo_grid(resnet50_pth)
  segments, prototypes = retrieval.segment(grid, 4, seed=3)
  cells = grid.reshape(2048, -1).T.numpy()
  want = MiniBatchKMeans(n_clusters=4, batch_size=1000, n_init=3,
                         random_state=3).fit_predict(cells)
  pairs = set(zip(want.tolist(), segments.ravel().tolist()))
  assert len(pairs) == len(set(want.tolist())) == len(prototypes)  # same partition
  # retrieval_utils: normalize(bmm(output, mask)) over the raw (unnormalised) cells.
  masks = torch.tensor(np.eye(len(prototypes))[segments.ravel()], dtype=torch.float32)
  reference = torch.nn.functional.normalize(grid.reshape(2048, -1) @ masks, dim=0).T
  np.testing.assert_allclose(prototypes, reference.numpy(), rtol=1e-5, atol=1e-7)


def test_more_clusters_than_cells_is_clamped():
  segments, prototypes = retrieval.segment(torch.randn(8, 2, 1), 5, seed=0)
  assert segments.shape == (2, 1) and len(prototypes) <= 2


def test_bank_labels_are_the_references_majority_vote():
  rng = np.random.default_rng(0)
  n = 40
  segments = rng.integers(0, n, (60, 80))
  mask = rng.choice([0, 0, 1, 5, 5, 12, 15, 255], size=(60, 80))
  mask[segments == 0] = 255          # all void: dropped
  mask[segments == 1] = 0            # all background: dropped
  tie = np.where(np.arange((segments == 2).sum()) % 2, 5, 12)
  tie[-1] = 255 if len(tie) % 2 else tie[-1]
  mask[segments == 2] = tie
  counts = retrieval.class_counts(segments, mask, n)
  assert counts[2, 5] == counts[2, 12] > 0  # a tie: the larger id wins
  for config, gt, classes in (('21 classes', mask, retrieval.OBJECT_IDS),
                              ('7 classes', ignore_outside_subset(mask), retrieval.SUBSET_IDS)):
    labels, valid = retrieval.bank_labels(counts, 'objects', classes)
    want = [reference_bank_label(gt[segments == s]) for s in range(n)]
    assert valid.tolist() == [w is not None for w in want], config
    assert labels[valid].tolist() == [w for w in want if w is not None], config


def test_bank_rule_all_keeps_background_segments():
  segments = np.array([[0, 0, 1, 1], [0, 2, 1, 1]])
  mask = np.array([[12, 255, 0, 0], [12, 255, 0, 5]])
  counts = retrieval.class_counts(segments, mask, 3)
  labels, valid = retrieval.bank_labels(counts, 'all')
  assert valid.tolist() == [True, True, False] and labels[:2].tolist() == [12, 0]
  labels, valid = retrieval.bank_labels(counts, 'objects')
  assert valid.tolist() == [True, True, False] and labels[:2].tolist() == [12, 5]
  with pytest.raises(ValueError, match='bank rule'):
    retrieval.bank_labels(counts, 'majority')


def test_miou_is_semsegmeters():
  rng = np.random.default_rng(1)
  gt = rng.choice([0, 1, 7, 15, 255], size=(50, 70))
  pred = rng.choice([0, 1, 3, 15], size=(50, 70))  # 3 predicted but absent; most never occur
  confusion = confusion_matrix(pred, gt, 21)
  np.testing.assert_allclose(iou_per_class(confusion, absent=0.0),
                             reference_meter(pred, gt), rtol=1e-12)


# ---------------------------------------------------------------- the command

def write_voc12_photos(root, n_train=4, n_val=3, seed=0):
  """VOC2012 layout with crops of the scikit-learn photos; the ground truth follows the pixels
  (bright: one class, dark: another, the rest background, a few void pixels), so that even
  random-init features separate it in part and the scores are not all 0."""
  rng = np.random.default_rng(seed)
  voc = root / 'VOCdevkit' / 'VOC2012'
  for sub in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
    (voc / sub).mkdir(parents=True, exist_ok=True)
  photos = [(load_sample_image('china.jpg'), (1, 15)),  # aeroplane, person
            (load_sample_image('flower.jpg'), (7, 12))]  # car, dog (outside the subset)
  ids = {'train': [f'2007_{i:06d}' for i in range(n_train)],
         'val': [f'2008_{i:06d}' for i in range(n_val)]}
  for split, names in ids.items():
    for j, image_id in enumerate(names):
      photo, (bright, dark) = photos[j % 2]
      h, w = rng.integers(70, 110), rng.integers(90, 140)
      y, x = rng.integers(0, photo.shape[0] - h), rng.integers(0, photo.shape[1] - w)
      crop = photo[y:y + h, x:x + w]
      Image.fromarray(crop).save(voc / 'JPEGImages' / f'{image_id}.jpg')
      luma = crop.mean(-1)
      low, high = np.percentile(luma, [30, 70])
      mask = np.select([luma > high, luma < low], [bright, dark], 0).astype(np.uint8)
      mask[rng.random((h, w)) < 0.05] = 255
      save_palette_png(mask, voc / 'SegmentationClass' / f'{image_id}.png')
    (voc / 'ImageSets' / 'Segmentation' / f'{split}.txt').write_text('\n'.join(names) + '\n')
  return voc


def reference_retrieval(voc, weights, size, clusters, seed=0):
  """MaskContrast's retrieval path with per-image K-means segments, from the files: cv2 cubic
  image / nearest mask resize, dilated features, MiniBatchKMeans, normalised sums, the bank's
  majority vote, argmax correlation, SemsegMeter; the 7-class config as a second run.
  Returns {'all': IoU [21], 'subset': IoU [21]}."""
  net = reference_dilated(weights)

  def images(split):
    """[(segment masks at size x size, prototypes, ground truth at size x size)] per image."""
    out = []
    for image_id in (voc / 'ImageSets' / 'Segmentation' / f'{split}.txt').read_text().split():
      image = np.asarray(Image.open(voc / 'JPEGImages' / f'{image_id}.jpg').convert('RGB'))
      image = np.clip(np.round(cv2_rules.resize_cubic(image, (size, size))), 0, 255)
      gt = cv2_rules.resize_nearest(
          np.asarray(Image.open(voc / 'SegmentationClass' / f'{image_id}.png')), (size, size))
      x = torch.tensor((image / 255 - IMAGENET_MEAN) / IMAGENET_STD, dtype=torch.float32)
      with torch.no_grad():
        grid = net(x.permute(2, 0, 1)[None])[0]
      cells = grid.reshape(grid.shape[0], -1).T.numpy()
      assign = MiniBatchKMeans(n_clusters=clusters, batch_size=1000, n_init=3,
                               random_state=seed).fit_predict(cells)
      full = cv2_rules.resize_nearest(assign.reshape(grid.shape[1:]), (size, size))
      sums = [cells[assign == s].sum(0) for s in np.unique(assign)]
      out.append(([full == s for s in np.unique(assign)],
                  [v / max(np.linalg.norm(v), 1e-12) for v in sums], gt))
    return out

  train, val = images('train'), images('val')
  results = {}
  for config, gt_of in (('all', lambda gt: gt), ('subset', ignore_outside_subset)):
    bank = [(proto, reference_bank_label(gt_of(gt)[inside]))
            for insides, protos, gt in train for inside, proto in zip(insides, protos)]
    bank_protos = np.stack([proto for proto, label in bank if label is not None])
    bank_labels = [label for _, label in bank if label is not None]
    preds, gts = [], []
    for insides, protos, gt in val:
      pred = np.zeros(gt.shape, np.int64)
      for inside, proto in zip(insides, protos):
        pred[inside] = bank_labels[int(np.argmax(bank_protos @ proto))]
      preds.append(pred.ravel())
      gts.append(gt_of(gt).ravel())
    results[config] = reference_meter(np.concatenate(preds), np.concatenate(gts))
  return results


def test_cli_equals_the_reference_path_on_photos(tmp_path, resnet50_pth, capsys):  # noqa: F811
  voc = write_voc12_photos(tmp_path)
  out = tmp_path / 'res' / 'retrieval.json'
  retrieval.main([str(resnet50_pth), '--data', str(voc), '--size', '64', '--clusters', '3',
                  '--workers', '0', '--figure_rows', '2', '--figure_topk', '3',
                  '--figure_tile', '48', '--out', str(out)])
  result = json.loads(out.read_text())
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
  assert result['bank_rule'] == 'objects' and result['size'] == 64
  want = reference_retrieval(voc, resnet50_pth, 64, 3)
  np.testing.assert_allclose(list(result['iou'].values()), 100 * want['all'], atol=1e-9)
  assert result['miou'] == pytest.approx(100 * want['all'].mean(), abs=1e-9)
  subset = 100 * want['subset'][retrieval.SUBSET_IDS]
  np.testing.assert_allclose(list(result['iou_subset'].values()), subset, atol=1e-9)
  assert result['miou_subset'] == pytest.approx(subset.mean(), abs=1e-9)
  assert result['iou']['background'] == 0  # the objects rule never predicts background
  with Image.open(result['figure']) as figure:
    assert figure.size[0] == 4 * 48


class ClassOneHot(torch.nn.Module):
  """A 'perfect' trunk for the VOC12 fixture: one-hot of the class read from the pixels, at
  output stride 8."""

  def forward(self, x):
    classes = class_from_pixels(x)[:, 4::8, 4::8]
    return torch.nn.functional.one_hot(classes, 2048).permute(0, 3, 1, 2).float()


def test_perfect_features_with_background_kept_score_100(tmp_path, resnet50_pth,  # noqa: F811
                                                         monkeypatch):
  data = write_voc12(tmp_path, n_train=4, n_val=3)
  monkeypatch.setattr(retrieval, 'dilated_trunk', lambda weights, device: ClassOneHot())
  out = tmp_path / 'r.json'
  retrieval.main([str(resnet50_pth), '--data', str(data), '--size', '128', '--clusters', '3',
                  '--bank_rule', 'all', '--workers', '0', '--out', str(out)])
  result = json.loads(out.read_text())
  assert result['bank_rule'] == 'all'
  present = {seg_data.VOC_CLASSES[c] for c in range(21)
             if any((np.asarray(Image.open(p)) == c).any()
                    for p in (data / 'SegmentationClass').glob('2008_*.png'))}
  assert len(present) >= 4
  for c, iou in result['iou'].items():  # absent classes count 0, as SemsegMeter
    assert iou == pytest.approx(100 if c in present else 0)
  assert result['miou'] == pytest.approx(100 * len(present) / 21)


def test_missing_dataset_names_the_path(tmp_path, resnet50_pth):  # noqa: F811
  with pytest.raises(FileNotFoundError, match='no_voc_here'):
    retrieval.main([str(resnet50_pth), '--data', str(tmp_path / 'no_voc_here')])
