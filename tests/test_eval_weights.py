"""Every evaluation reads a training checkpoint and the exported files alike."""

import torch
import torchvision

from configs.base import get_base_config
from converters.export_torch import export
from converters.import_torch import import_weights
from eval.common import build_resnet50


def test_checkpoint_and_exports_give_the_same_features(tmp_path):
  torch.manual_seed(0)
  reference = torchvision.models.resnet50()
  for m in reference.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.running_mean.uniform_(-0.3, 0.3)
  torch.save(reference.state_dict(), tmp_path / 'tv.pth')
  config = get_base_config()
  config.method.queue_size, config.model.dtype = 256, 'float32'
  import_weights(tmp_path / 'tv.pth', tmp_path / 'run', config, steps_per_epoch=1)
  export(tmp_path / 'run', tmp_path / 'moco.pth', 'moco')

  x = torch.randn(2, 3, 64, 64)
  reference.fc = torch.nn.Identity()
  with torch.no_grad():
    expected = reference.eval()(x)
    for weights in (tmp_path / 'run', tmp_path / 'moco.pth', tmp_path / 'tv.pth'):
      assert torch.equal(build_resnet50(weights, device='cpu')(x), expected), weights
