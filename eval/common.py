"""What every evaluation shares: loading the ResNet-50 weights, devices, reporting.

Every evaluation accepts the same weights: a training workdir (Flax checkpoint), an
exported torchvision or moco `.pth`, or a `.safetensors` file. They all become a
torchvision ResNet-50, so the established PyTorch protocols run unchanged. The evaluations
on pooled features alone (kNN, linear probe, embedding map) also take the narrower or
shallower torchvision-layout ResNets the demo and the tests train (`build_resnet`).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2
from tqdm import tqdm

from converters.mapping import StateDictMismatch
from converters.torch_files import read_weights
from revisit_jax.imagenet import MEAN as IMAGENET_MEAN, STD as IMAGENET_STD


def resnet50_state_dict(path) -> dict[str, torch.Tensor]:
  """torchvision resnet50 keys (no `fc.*`) from any supported weight source."""
  state = backbone_state_dict(path)
  check_resnet50(state, path)
  return state


def backbone_state_dict(path) -> dict[str, torch.Tensor]:
  """torchvision ResNet keys (no `fc.*`) from any supported weight source, any depth or width."""
  path = Path(path)
  if path.is_dir():
    from converters.export_torch import read_checkpoint
    weights = read_checkpoint(path)
  elif path.exists():
    weights = read_weights(path)
  else:
    raise FileNotFoundError(f'{path}: no such weights file or checkpoint folder')
  return {k: torch.from_numpy(np.array(v)) for k, v in weights.backbone().items()}


def check_resnet50(state: dict, source) -> None:
  """Refuses anything but a complete torchvision ResNet-50 backbone, naming the keys."""
  check_fits(state, torchvision.models.resnet50(), f'{source} (not a ResNet-50?)')


def check_fits(state: dict, model: torch.nn.Module, source) -> None:
  """Refuses tensors that are not exactly `model`'s (its `fc.*` aside), naming the keys."""
  expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith('fc.')}
  missing = [k for k in expected if k not in state]
  unexpected = [k for k in state if k not in expected]
  misshaped = [(k, tuple(state[k].shape), tuple(s)) for k, s in expected.items()
               if k in state and tuple(state[k].shape) != tuple(s)]
  if missing or unexpected or misshaped:
    raise StateDictMismatch(source, missing, unexpected, misshaped)


def resnet_like(state: dict, source) -> torch.nn.Module:
  """An untrained torchvision ResNet shaped as `state` says, `fc` removed.

  Block type, blocks per stage, base width (conv1's channels) and stem (7x7 stride 2 with
  max-pool, or the 3x3 stride-1 'cifar' one without) are read from the tensors, as
  revisit_jax.models.resnet builds them; `num_features` is the pooled feature's size.
  torchvision has no base-width argument, so a narrow one gets its stages rebuilt by
  torchvision's own `_make_layer`.
  """
  stages = [len({k.split('.')[1] for k in state if k.startswith(f'layer{i}.')})
            for i in (1, 2, 3, 4)]
  if 'conv1.weight' not in state or not all(stages):
    raise ValueError(f'{source}: not a torchvision-layout ResNet (conv1.weight and layer1-4 '
                     f'expected; first keys: {sorted(state)[:6]})')
  block = (torchvision.models.resnet.Bottleneck if 'layer1.0.conv3.weight' in state
           else torchvision.models.resnet.BasicBlock)
  width, _, kernel, _ = state['conv1.weight'].shape
  model = torchvision.models.resnet.ResNet(block, stages)
  if width != 64:
    model.inplanes, model.bn1 = width, torch.nn.BatchNorm2d(width)
    for i, blocks in enumerate(stages):
      setattr(model, f'layer{i + 1}',
              model._make_layer(block, width * 2 ** i, blocks, stride=1 if i == 0 else 2))
  if kernel == 3:  # the 'cifar' stem
    model.conv1 = torch.nn.Conv2d(3, width, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
  elif width != 64:
    model.conv1 = torch.nn.Conv2d(3, width, 7, 2, 3, bias=False)
  model.fc = torch.nn.Identity()
  model.num_features = 8 * width * block.expansion
  check_fits(state, model, source)
  return model


def pick_device() -> torch.device:
  return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def build_resnet50(path, device=None):
  """torchvision ResNet-50 with the given weights, `fc` removed, in eval mode."""
  model = torchvision.models.resnet50()
  model.fc = torch.nn.Identity()
  model.load_state_dict(resnet50_state_dict(path), strict=True)
  return model.to(device or pick_device()).eval()


def build_resnet(path, device=None):
  """The torchvision ResNet the weights describe (any depth, width, stem), `fc` removed, in
  eval mode; `num_features` is its pooled feature's size."""
  state = backbone_state_dict(path)
  model = resnet_like(state, path)
  model.load_state_dict(state, strict=True)
  return model.to(device or pick_device()).eval()


def report(results: dict, out=None) -> None:
  """Prints one JSON line and, if asked, writes the same JSON to `out`."""
  line = json.dumps(results)
  print(line)
  if out:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + '\n')


def add_weights_args(parser: argparse.ArgumentParser, json_out: bool = True) -> None:
  parser.add_argument('weights', help='training workdir, or a torchvision / moco .pth, '
                                      'or a .safetensors file')
  if json_out:
    parser.add_argument('--out', default=None, help='write the JSON results to this file')


class ImageFiles(torch.utils.data.Dataset):
  """Image files, decoded by PIL as RGB and transformed."""

  def __init__(self, paths, transform):
    self.paths, self.transform = paths, transform

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, i):
    with Image.open(self.paths[i]) as image:
      return self.transform(image.convert('RGB'))


class ArrayImages(torch.utils.data.Dataset):
  """Images held as uint8 [N, H, W, 3] (the demo set), transformed."""

  def __init__(self, images, transform):
    self.images, self.transform = images, transform

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return self.transform(Image.fromarray(self.images[i]))


class WithLabels(torch.utils.data.Dataset):
  """(image, label) pairs of an image dataset and its labels."""

  def __init__(self, images, labels):
    self.images, self.labels = images, labels

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return self.images[i], int(self.labels[i])


class TFDSImages(torch.utils.data.IterableDataset):
  """Images of a TFDS split, decoded by TF; labels were read in the same order beforehand,
  or come with the images (a shuffled split) as (image, label) pairs."""

  def __init__(self, ds, transform):
    self.ds, self.transform = ds, transform

  def __iter__(self):
    for example in self.ds.as_numpy_iterator():
      image = self.transform(Image.fromarray(example['image']))
      yield (image, int(example['label'])) if 'label' in example else image


def normalize():
  """uint8 image tensor -> float, ImageNet mean / std."""
  return v2.Compose([v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def feature_transform(resize: int, crop: int):
  return v2.Compose([v2.Resize(resize), v2.CenterCrop(crop), v2.ToImage(), normalize()])


@torch.no_grad()
def pooled_features(model, loader, device, total=None, l2_normalize=True) -> np.ndarray:
  """(N, 2048) float32 global-average-pooled features, L2-normalised unless told not to."""
  out = []
  for images in tqdm(loader, total=total, desc='features', unit='batch'):
    features = model(images.to(device, non_blocking=True)).float()
    out.append((torch.nn.functional.normalize(features, dim=1) if l2_normalize else features).cpu())
  return torch.cat(out).numpy()
