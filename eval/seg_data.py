"""VOC 2012 and Cityscapes segmentation sets read from their real on-disk layouts.

Items are (image, mask): a uint8 tv_tensors.Image (3, H, W) and an int64 tv_tensors.Mask
(H, W) of class indices with 255 = ignore, so torchvision.transforms.v2 moves both together
(the mask always nearest). The training chains follow the original's (its fblib / vanilla
transforms on cv2).
"""
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from eval.common import normalize

IGNORE = 255

VOC_CLASSES = ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car',
               'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person',
               'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')
CITYSCAPES_CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
                      'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car',
                      'truck', 'bus', 'train', 'motorcycle', 'bicycle')
# trainId i is labelId CITYSCAPES_LABEL_IDS[i]; every other labelId is ignored.
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def cityscapes_train_ids(label_ids: np.ndarray) -> np.ndarray:
  """Maps a gtFine labelIds array to trainIds (0-18, 255 for everything else)."""
  table = np.full(256, IGNORE, np.uint8)
  table[list(CITYSCAPES_LABEL_IDS)] = np.arange(len(CITYSCAPES_LABEL_IDS))
  return table[label_ids]


def read_ids(path: Path) -> list[str]:
  """Image ids of a split list: "id" lines, or DeepLab-style "/JPEGImages/id.jpg /Seg.../id.png"."""
  if not path.is_file():
    raise FileNotFoundError(f'split list {path} not found')
  ids = [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]
  if not ids:
    raise ValueError(f'split list {path} is empty')
  return ids


def read_index_png(path) -> np.ndarray:
  """Class-index array of a palette ('P') or greyscale ('L') PNG; colour PNGs are refused."""
  with Image.open(path) as mask:
    if mask.mode not in ('P', 'L'):
      raise ValueError(f'{path}: mask mode {mask.mode!r}, expected a palette or greyscale PNG '
                       'holding class indices')
    return np.array(mask)


def require_dir(path: Path, what: str) -> Path:
  if not path.is_dir():
    raise FileNotFoundError(f'{what} folder {path} not found')
  return path


def require_files(paths, what: str):
  missing = [p for p in paths if not p.is_file()]
  if missing:
    raise FileNotFoundError(f'{len(missing)} {what} missing, first: {missing[0]}')


class SegmentationSet(torch.utils.data.Dataset):
  """(image path, mask path) pairs with an optional joint transform."""

  def __init__(self, images, masks, transform=None):
    self.images, self.masks, self.transform = list(images), list(masks), transform

  def __len__(self):
    return len(self.images)

  def load_mask(self, index) -> np.ndarray:
    return read_index_png(self.masks[index])

  def __getitem__(self, index):
    with Image.open(self.images[index]) as image:
      image = tv_tensors.Image(TF.pil_to_tensor(image.convert('RGB')))
    mask = tv_tensors.Mask(torch.from_numpy(self.load_mask(index).astype(np.int64)))
    if mask.shape != image.shape[1:]:
      raise ValueError(f'{self.masks[index]}: mask {tuple(mask.shape)} does not match image '
                       f'{self.images[index]} {tuple(image.shape[1:])}')
    if self.transform is not None:
      image, mask = self.transform(image, mask)
    return image, mask


class VOCSegmentation(SegmentationSet):
  """VOC 2012: split 'train_aug' reads SegmentationClassAug, 'train'/'val' SegmentationClass."""

  def __init__(self, root, split: str, transform=None):
    root = require_dir(Path(root), 'VOC2012')
    lists = root / 'ImageSets' / 'Segmentation'
    if split == 'train_aug':
      masks = root / 'SegmentationClassAug'
      ids = read_ids(lists / 'train_aug.txt')
    elif split in ('train', 'val'):
      masks = root / 'SegmentationClass'
      ids = read_ids(lists / f'{split}.txt')
    else:
      raise ValueError(f'VOC split {split!r}, expected train_aug, train or val')
    require_dir(masks, 'VOC2012 mask')
    images = [root / 'JPEGImages' / f'{i}.jpg' for i in ids]
    masks = [masks / f'{i}.png' for i in ids]
    require_files(images, f'VOC {split} images')
    require_files(masks, f'VOC {split} masks')
    super().__init__(images, masks, transform)
    self.ids = ids


class Cityscapes(SegmentationSet):
  """Cityscapes fine annotations, labelIds mapped to the 19 trainIds."""

  def __init__(self, root, split: str, transform=None):
    root = require_dir(Path(root), 'Cityscapes')
    image_dir = require_dir(root / 'leftImg8bit' / split, 'Cityscapes image')
    images = sorted(image_dir.glob('*/*_leftImg8bit.png'))
    if not images:
      raise FileNotFoundError(f'no <city>/*_leftImg8bit.png under {image_dir}')
    masks = [root / 'gtFine' / split / p.parent.name /
             p.name.replace('_leftImg8bit.png', '_gtFine_labelIds.png') for p in images]
    require_files(masks, f'Cityscapes {split} gtFine labelIds')
    super().__init__(images, masks, transform)

  def load_mask(self, index) -> np.ndarray:
    return cityscapes_train_ids(read_index_png(self.masks[index]))


# The original's cv2.INTER_CUBIC for images, which does not antialias when shrinking (masks
# are always resized nearest, as its cv2.INTER_NEAREST).
BICUBIC = v2.InterpolationMode.BICUBIC


def resize_cubic(image: torch.Tensor, size) -> tv_tensors.Image:
  """cv2.resize(image, INTER_CUBIC) of a uint8 image: bicubic (A = -0.75, half-pixel centres,
  edge pixels repeated, no antialiasing) computed in float, then rounded and saturated to uint8.
  torch's own uint8 bicubic kernel is not that rule (up to 13 grey levels off on real photos),
  hence the detour through float32."""
  out = TF.resize(image.to(torch.float32), list(size), interpolation=BICUBIC, antialias=False)
  return tv_tensors.Image(out.clamp_(0, 255).round_().to(torch.uint8))


def voc_train_transform(size: int):
  """The original's chain: flip, rotation +-5 deg and scale 0.75-1.25 about the centre, then
  resize to size x size. The border the affine uncovers is 0 in the image and in the mask
  (background), as the original's cv2.warpAffine leaves it; torchvision's affine on tensors
  has no bicubic, so that step is bilinear (the original's: bicubic)."""
  return v2.Compose([
      v2.RandomHorizontalFlip(),
      v2.RandomAffine(degrees=5, scale=(0.75, 1.25),
                      interpolation=v2.InterpolationMode.BILINEAR, fill=0),
      lambda image, mask: resize_pair(image, mask, (size, size)),
      normalize(),
  ])


def resize_image_only(size: int):
  """Resizes the image to size x size and leaves the mask at the original resolution."""
  norm = normalize()
  return lambda image, mask: (norm(resize_cubic(image, (size, size))), mask)


def resize_both(size: int):
  """Image (cubic) and mask (nearest) to size x size: MaskContrast's validation transform."""
  norm = normalize()

  def transform(image, mask):
    image, mask = resize_pair(image, mask, (size, size))
    return norm(image), mask
  return transform


def resize_pair(image, mask, size):
  """(image cubic, mask nearest) at size (height, width), as cv2 resizes them."""
  return resize_cubic(image, size), TF.resize(mask, list(size))


class RandomScale:
  """Resizes image and mask by a factor drawn uniformly from a discrete list (sizes
  truncated, as the original's int(side * scale))."""

  def __init__(self, scales):
    self.scales = tuple(scales)

  def __call__(self, image, mask):
    scale = self.scales[int(torch.randint(len(self.scales), ()))]
    return resize_pair(image, mask, [int(image.shape[-2] * scale), int(image.shape[-1] * scale)])


class CoverCrop:
  """The original's random crop: an image with a side below the crop is first enlarged until
  its short side is crop + 1 (never padded), then a uniformly placed crop is cut."""

  def __init__(self, size: int):
    self.size = size
    self.crop = v2.RandomCrop(size)

  def __call__(self, image, mask):
    h, w = image.shape[-2:]
    if min(h, w) < self.size:
      scale = self.size / min(h, w)
      image, mask = resize_pair(image, mask, [int(scale * h + 1), int(scale * w + 1)])
    return self.crop(image, mask)


CITYSCAPES_SCALES = tuple(0.5 + 0.25 * i for i in range(7))


def cityscapes_train_transform(crop: int, scales=CITYSCAPES_SCALES):
  """Random scale from {0.5, ..., 2.0}, random crop (small images enlarged), flip."""
  return v2.Compose([
      RandomScale(scales),
      CoverCrop(crop),
      v2.RandomHorizontalFlip(),
      normalize(),
  ])


def full_resolution():
  norm = normalize()
  return lambda image, mask: (norm(image), mask)


def voc_palette() -> list[int]:
  """The PASCAL VOC colour map (DAVIS uses it too) (bit-interleaved), 256 RGB entries, flat."""
  palette = []
  for i in range(256):
    r = g = b = 0
    c = i
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    palette += [r, g, b]
  return palette
