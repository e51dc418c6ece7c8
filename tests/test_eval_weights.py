"""Every evaluation reads a training checkpoint and the exported files alike."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from configs.base import get_base_config
from converters.export_torch import export, write
from converters.import_torch import import_weights
from converters.mapping import flax_to_torch
from eval.common import build_resnet, build_resnet50
from revisit_jax.models import resnet


@pytest.fixture(scope='module')
def resnet50_run(tmp_path_factory):
  """(torchvision ResNet-50 without fc, folder): tv.pth, a training run imported from it, and
  that run's torchvision and moco exports."""
  folder = tmp_path_factory.mktemp('r50')
  torch.manual_seed(0)
  reference = torchvision.models.resnet50()
  for m in reference.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.running_mean.uniform_(-0.3, 0.3)
  torch.save(reference.state_dict(), folder / 'tv.pth')
  config = get_base_config()
  config.method.queue_size, config.model.dtype = 256, 'float32'
  import_weights(folder / 'tv.pth', folder / 'run', config, steps_per_epoch=1)
  export(folder / 'run', folder / 'moco.pth', 'moco')
  export(folder / 'run', folder / 'exported.pth', 'torchvision')
  reference.fc = torch.nn.Identity()
  return reference.eval(), folder


def test_checkpoint_and_exports_give_the_same_features(resnet50_run):
  reference, folder = resnet50_run
  x = torch.randn(2, 3, 64, 64)
  with torch.no_grad():
    expected = reference(x)
    for weights in ('run', 'moco.pth', 'tv.pth', 'exported.pth'):
      assert torch.equal(build_resnet50(folder / weights, device='cpu')(x), expected), weights
      assert torch.equal(build_resnet(folder / weights, device='cpu')(x), expected), weights


def test_torchvision_export_loads_into_timm_with_the_same_features(resnet50_run):
  timm = pytest.importorskip('timm')
  reference, folder = resnet50_run
  model = timm.create_model('resnet50', pretrained=False)
  loaded = model.load_state_dict(torch.load(folder / 'exported.pth', weights_only=True),
                                 strict=False)
  assert set(loaded.missing_keys) == {'fc.weight', 'fc.bias'} and not loaded.unexpected_keys
  model.reset_classifier(0)  # the pooled features
  x = torch.randn(2, 3, 64, 64)
  with torch.no_grad():
    torch.testing.assert_close(model.eval()(x), reference(x), rtol=1e-5, atol=1e-5)


def random_variables(model, x, seed=0):
  """Flax variables of `model` drawn in NumPy (JAX's eager initialisers are slow on 2 CPUs):
  He-normal kernels and BN statistics and affines away from 0 / 1, so that eval mode uses them."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)

  def draw(path, leaf):
    name, noise = path[-1].key, rng.normal(size=leaf.shape)
    if name == 'kernel':
      return (noise * np.sqrt(2 / np.prod(leaf.shape[:-1]))).astype(leaf.dtype)
    if name in ('scale', 'var'):
      return (1 + 0.2 * np.abs(noise)).astype(leaf.dtype)
    return (0.1 * noise).astype(leaf.dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else (
        np.zeros(leaf.shape, leaf.dtype))

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize('arch, width, stem', [('resnet18', 16, 'imagenet'),
                                               ('resnet50', 8, 'cifar')])
def test_narrow_resnets_give_the_flax_models_features(arch, width, stem, tmp_path):
  """build_resnet rebuilds the tiny networks of the demo and the tests from their weights."""
  model = resnet(arch, width=width, stem=stem)
  x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
  variables = random_variables(model, jnp.asarray(x))
  expected = np.asarray(model.apply(variables, jnp.asarray(x), train=False))
  write(flax_to_torch(variables['params'], variables['batch_stats']), tmp_path / 'narrow.pth')
  net = build_resnet(tmp_path / 'narrow.pth', device='cpu')
  assert net.num_features == expected.shape[1]
  with torch.no_grad():
    got = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_not_a_resnet_is_refused(tmp_path):
  state = torchvision.models.resnet18().state_dict()
  torch.save({k: v for k, v in state.items() if not k.startswith('layer4.')}, tmp_path / 'w.pth')
  with pytest.raises(ValueError, match=r'w\.pth: not a torchvision-layout ResNet'):
    build_resnet(tmp_path / 'w.pth', device='cpu')
  del state['layer1.0.bn2.running_mean']
  torch.save(state, tmp_path / 'w.pth')
  with pytest.raises(ValueError, match=r'missing keys \(1\): layer1\.0\.bn2\.running_mean'):
    build_resnet(tmp_path / 'w.pth', device='cpu')
