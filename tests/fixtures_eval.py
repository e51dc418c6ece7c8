"""Tiny datasets in the real on-disk layouts, for the evaluation tests.

VOC2012 images are flat blocks aligned to 32-px cells, coloured by class (red = 10 * class),
so a test can read the class back from the pixels (see `class_from_pixels`).
"""
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from eval.common import IMAGENET_MEAN, IMAGENET_STD
from eval.seg_data import CITYSCAPES_LABEL_IDS, VOC_CLASSES, voc_palette

VOC07_CLASSES = VOC_CLASSES[1:]
CELL = 32


def single_thread():
  """One intra-op thread: on a shared 2-core CPU, torch's thread pool spin-waits and a ResNet-50
  step gets ~15x slower (measured 0.6 s vs 9 s for a 32-px batch of 2)."""
  torch.set_num_threads(1)


@pytest.fixture(scope='session')
def resnet50_pth(tmp_path_factory) -> Path:
  """A random torchvision ResNet-50 saved as a plain state_dict."""
  path = tmp_path_factory.mktemp('weights') / 'resnet50.pth'
  torch.manual_seed(0)
  torch.save(torchvision.models.resnet50().state_dict(), path)
  return path


def save_palette_png(array: np.ndarray, path: Path):
  image = Image.fromarray(array.astype(np.uint8))
  image.putpalette(voc_palette())  # Turns the 'L' image into a palette ('P') one.
  image.save(path)


def write_voc07(root: Path, n_trainval=9, n_test=6, size=64, seed=0):
  """VOCdevkit/VOC2007 with JPEGImages, Annotations and ImageSets/Main/<class>_<split>.txt.

  Returns (VOC2007 folder, {split: (N, 20) labels in {1, 0, -1}}). Every class has at least
  3 positives in trainval and 1 in test, and some difficult-only entries. The images are
  crops of the photos scikit-learn ships.
  """
  from sklearn.datasets import load_sample_image
  photos = [load_sample_image(name) for name in ('china.jpg', 'flower.jpg')]
  rng = np.random.default_rng(seed)
  voc = root / 'VOCdevkit' / 'VOC2007'
  for sub in ('JPEGImages', 'Annotations', 'ImageSets/Main'):
    (voc / sub).mkdir(parents=True, exist_ok=True)
  labels, next_id = {}, 0
  for split, n, min_pos in (('trainval', n_trainval, 3), ('test', n_test, 1)):
    y = np.where(rng.random((n, 20)) < 0.4, 1, -1)
    for k in range(20):  # Guarantee positives; plant a few difficult-only entries.
      y[rng.choice(n, min_pos, replace=False), k] = 1
      negatives = np.flatnonzero(y[:, k] == -1)
      if k % 3 == 0 and len(negatives):
        y[negatives[0], k] = 0
    ids = [f'{next_id + i:06d}' for i in range(n)]
    next_id += n
    for i, image_id in enumerate(ids):
      photo = photos[rng.integers(2)]
      top, left = (rng.integers(0, photo.shape[d] - size) for d in (0, 1))
      Image.fromarray(photo[top:top + size, left:left + size]).save(
          voc / 'JPEGImages' / f'{image_id}.jpg')
      objects = ''.join(
          f'<object><name>{VOC07_CLASSES[k]}</name><difficult>{int(y[i, k] == 0)}</difficult>'
          f'<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>{size}</xmax><ymax>{size}</ymax>'
          '</bndbox></object>' for k in np.flatnonzero(y[i] >= 0))
      (voc / 'Annotations' / f'{image_id}.xml').write_text(
          f'<annotation><filename>{image_id}.jpg</filename><size><width>{size}</width>'
          f'<height>{size}</height><depth>3</depth></size>{objects}</annotation>')
    (voc / 'ImageSets' / 'Main' / f'{split}.txt').write_text('\n'.join(ids) + '\n')
    for k, name in enumerate(VOC07_CLASSES):
      lines = [f'{image_id} {y[i, k]:2d}' for i, image_id in enumerate(ids)]
      (voc / 'ImageSets' / 'Main' / f'{name}_{split}.txt').write_text('\n'.join(lines) + '\n')
    labels[split] = y
  return voc, labels


def voc12_sample(rng, size, classes):
  """(image, mask): background plus two class blocks on the 32-px grid, 2-px void borders.

  The first block lies in the left half, the second in the right half, so neither hides the other.
  """
  image = np.zeros((size, size, 3), np.uint8)
  mask = np.zeros((size, size), np.uint8)
  cells, half = size // CELL, size // CELL // 2
  for side, c in enumerate(rng.choice(classes, 2, replace=False)):
    h, w = rng.integers(1, cells + 1), rng.integers(1, half + 1)
    y = rng.integers(0, cells - h + 1) * CELL
    x = (side * half + rng.integers(0, half - w + 1)) * CELL
    h, w = h * CELL, w * CELL
    image[y:y + h, x:x + w, 0] = 10 * c
    mask[y:y + h, x:x + w] = 255
    mask[y + 2:y + h - 2, x + 2:x + w - 2] = c
  return image, mask


def write_voc12(root: Path, n_train=4, n_val=3, n_aug=6, size=128, seed=0,
                classes=(1, 5, 8, 12, 15)):
  """VOCdevkit/VOC2012 with JPEGImages, SegmentationClass(Aug) palette PNGs and split lists.

  train_aug = the train images plus extra ones (never val), as in the real list.
  Every class in `classes` appears in train, so retrieval can find it.
  """
  rng = np.random.default_rng(seed)
  voc = root / 'VOCdevkit' / 'VOC2012'
  for sub in ('JPEGImages', 'SegmentationClass', 'SegmentationClassAug', 'ImageSets/Segmentation'):
    (voc / sub).mkdir(parents=True, exist_ok=True)
  ids = {'train': [f'2007_{i:06d}' for i in range(n_train)],
         'val': [f'2008_{i:06d}' for i in range(n_val)],
         'extra': [f'2009_{i:06d}' for i in range(n_aug - n_train)]}
  order = list(classes) * 2
  for split, names in ids.items():
    for j, image_id in enumerate(names):
      pick = order[2 * j:2 * j + 2] if split == 'train' and 2 * j + 1 < len(order) else classes
      image, mask = voc12_sample(rng, size, np.array(pick))
      Image.fromarray(image).save(voc / 'JPEGImages' / f'{image_id}.jpg', quality=100,
                                  subsampling=0)  # Lossless enough to read classes back.
      save_palette_png(mask, voc / 'SegmentationClassAug' / f'{image_id}.png')
      if split != 'extra':
        save_palette_png(mask, voc / 'SegmentationClass' / f'{image_id}.png')
  lists = voc / 'ImageSets' / 'Segmentation'
  (lists / 'train.txt').write_text('\n'.join(ids['train']) + '\n')
  (lists / 'val.txt').write_text('\n'.join(ids['val']) + '\n')
  (lists / 'trainval.txt').write_text('\n'.join(ids['train'] + ids['val']) + '\n')
  (lists / 'train_aug.txt').write_text('\n'.join(ids['train'] + ids['extra']) + '\n')
  return voc


def class_from_pixels(images: torch.Tensor) -> torch.Tensor:
  """Inverse of the VOC12 fixture colouring: ImageNet-normalised (B, 3, H, W) -> class ids."""
  red = (images[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
  return torch.round(red / 10).long().clamp(0, 20)


def write_cityscapes(root: Path, per_split=(4, 2), height=64, width=128, seed=0):
  """Cityscapes leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine *_gtFine_labelIds.png."""
  rng = np.random.default_rng(seed)
  label_ids = np.array(list(CITYSCAPES_LABEL_IDS) + [0, 1, 4])  # Some ids that map to 255.
  for split, n in zip(('train', 'val'), per_split):
    for i in range(n):
      city = ('aachen', 'bochum')[i % 2]
      stem = f'{city}_{i:06d}_000019'
      image_dir = root / 'leftImg8bit' / split / city
      gt_dir = root / 'gtFine' / split / city
      image_dir.mkdir(parents=True, exist_ok=True)
      gt_dir.mkdir(parents=True, exist_ok=True)
      blocks = rng.choice(label_ids, (height // 16, width // 16))
      labels = np.kron(blocks, np.ones((16, 16), np.int64)).astype(np.uint8)
      Image.fromarray(labels).save(gt_dir / f'{stem}_gtFine_labelIds.png')
      pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(image_dir / f'{stem}_leftImg8bit.png')
  return root
