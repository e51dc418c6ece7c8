"""What every evaluation shares: loading the ResNet-50 weights, devices, reporting.

Every evaluation accepts the same weights: a training workdir (Flax checkpoint), an
exported torchvision or moco `.pth`, or a `.safetensors` file. They all become a
torchvision ResNet-50, so the established PyTorch protocols run unchanged.
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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resnet50_state_dict(path) -> dict[str, torch.Tensor]:
  """torchvision resnet50 keys (no `fc.*`) from any supported weight source."""
  path = Path(path)
  if path.is_dir():
    from converters.export_torch import read_checkpoint
    weights = read_checkpoint(path)
  elif path.exists():
    weights = read_weights(path)
  else:
    raise FileNotFoundError(f'{path}: no such weights file or checkpoint folder')
  state = {k: torch.from_numpy(np.array(v)) for k, v in weights.backbone().items()}
  check_resnet50(state, path)
  return state


def check_resnet50(state: dict, source) -> None:
  """Refuses anything but a complete torchvision ResNet-50 backbone, naming the keys."""
  expected = {k: v.shape for k, v in torchvision.models.resnet50().state_dict().items()
              if not k.startswith('fc.')}
  missing = [k for k in expected if k not in state]
  unexpected = [k for k in state if k not in expected]
  misshaped = [(k, tuple(state[k].shape), tuple(s)) for k, s in expected.items()
               if k in state and tuple(state[k].shape) != tuple(s)]
  if missing or unexpected or misshaped:
    raise StateDictMismatch(f'{source} (not a ResNet-50?)', missing, unexpected, misshaped)


def pick_device() -> torch.device:
  return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def build_resnet50(path, device=None):
  """torchvision ResNet-50 with the given weights, `fc` removed, in eval mode."""
  model = torchvision.models.resnet50()
  model.fc = torch.nn.Identity()
  model.load_state_dict(resnet50_state_dict(path), strict=True)
  return model.to(device or pick_device()).eval()


def report(results: dict, out=None) -> None:
  """Prints one JSON line and, if asked, writes the same JSON to `out`."""
  line = json.dumps(results)
  print(line)
  if out:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + '\n')


def add_weights_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('weights', help='training workdir, or a torchvision / moco .pth, '
                                      'or a .safetensors file')
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


class TFDSImages(torch.utils.data.IterableDataset):
  """Images of a TFDS split, decoded by TF; labels were read in the same order beforehand."""

  def __init__(self, ds, transform):
    self.ds, self.transform = ds, transform

  def __iter__(self):
    for example in self.ds.as_numpy_iterator():
      yield self.transform(Image.fromarray(example['image']))


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
