"""Exact round trips between Flax variables and PyTorch files, and refusal of bad files."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from converters.mapping import StateDictMismatch, flax_to_torch, torch_to_flax
from converters.torch_files import read_weights
from eval.common import build_resnet50, resnet50_state_dict
from revisit_jax.models import resnet


def template(arch):
  shapes = jax.eval_shape(resnet(arch).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  return shapes['params'], shapes['batch_stats']


def numpy_state(model):
  return {k: v.numpy() for k, v in model.state_dict().items() if not k.startswith('fc.')}


def test_torch_to_flax_to_torch_is_exact():
  torch.manual_seed(0)
  model = torchvision.models.resnet50()
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.running_var.uniform_(0.5, 2.0)
      m.num_batches_tracked.fill_(123)
  state = numpy_state(model)
  back = flax_to_torch(*torch_to_flax(state, *template('resnet50')))
  assert back.keys() == state.keys()
  for key, value in state.items():
    assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key


def test_flax_to_torch_file_to_flax_is_exact(tmp_path):
  variables = resnet('resnet18').init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
  path = tmp_path / 'r18.pth'
  torch.save({k: torch.from_numpy(np.array(v))
              for k, v in flax_to_torch(variables['params'], variables['batch_stats']).items()},
             path)
  weights = read_weights(path)
  assert weights.layout == 'torchvision'
  params, stats = torch_to_flax(weights.backbone(), *template('resnet18'))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
               (variables['params'], variables['batch_stats']), (params, stats))


def test_exported_torch_file_loads_into_torchvision_with_only_fc_missing(tmp_path):
  variables = resnet('resnet50').init(jax.random.key(2), jnp.zeros((1, 32, 32, 3)))
  state = {k: torch.from_numpy(np.array(v))
           for k, v in flax_to_torch(variables['params'], variables['batch_stats']).items()}
  result = torchvision.models.resnet50().load_state_dict(state, strict=False)
  assert sorted(result.missing_keys) == ['fc.bias', 'fc.weight']
  assert result.unexpected_keys == []


@pytest.mark.parametrize('wrapper', ['plain', 'state_dict', 'module'])
def test_eval_loader_reads_every_torchvision_wrapping(tmp_path, wrapper):
  model = torchvision.models.resnet50()
  state = {k: v for k, v in model.state_dict().items()}
  obj = {'plain': state, 'state_dict': {'state_dict': state, 'epoch': 3},
         'module': {f'module.{k}': v for k, v in state.items()}}[wrapper]
  torch.save(obj, tmp_path / 'w.pth')
  loaded = resnet50_state_dict(tmp_path / 'w.pth')
  assert loaded.keys() == {k for k in state if not k.startswith('fc.')}
  assert all(torch.equal(loaded[k], state[k]) for k in loaded)


def test_safetensors_file_gives_the_same_features_as_pth(tmp_path):
  from safetensors.torch import save_file
  model = torchvision.models.resnet50().eval()
  state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith('fc.')}
  torch.save(state, tmp_path / 'w.pth')
  save_file(state, str(tmp_path / 'w.safetensors'))
  x = torch.randn(1, 3, 64, 64)
  with torch.no_grad():
    a = build_resnet50(tmp_path / 'w.pth', device='cpu')(x)
    b = build_resnet50(tmp_path / 'w.safetensors', device='cpu')(x)
  assert torch.equal(a, b)


def test_not_a_checkpoint_is_refused(tmp_path):
  path = tmp_path / 'noise.pth'
  path.write_bytes(np.random.RandomState(0).bytes(1000))
  with pytest.raises(ValueError, match='noise.pth: not a PyTorch checkpoint'):
    read_weights(path)


class Payload:
  """An arbitrary object: weights_only loading must refuse to unpickle it."""


def test_arbitrary_pickled_objects_are_never_unpickled(tmp_path):
  path = tmp_path / 'evil.pth'
  torch.save({'state_dict': {'conv1.weight': torch.zeros(1)}, 'payload': Payload()}, path)
  with pytest.raises(ValueError, match='weights_only'):
    read_weights(path)


def test_unknown_layout_is_refused_with_its_keys(tmp_path):
  torch.save({'encoder.layer.weight': torch.zeros(2)}, tmp_path / 'odd.pth')
  with pytest.raises(ValueError, match=r'unknown layout.*encoder\.layer\.weight'):
    read_weights(tmp_path / 'odd.pth')


def test_missing_unexpected_and_misshaped_keys_are_listed():
  state = numpy_state(torchvision.models.resnet50())
  del state['layer2.1.conv1.weight']
  state['layer9.weight'] = np.zeros(3, np.float32)
  state['bn1.weight'] = np.zeros(65, np.float32)
  with pytest.raises(StateDictMismatch) as error:
    torch_to_flax(state, *template('resnet50'))
  message = str(error.value)
  assert 'layer2.1.conv1.weight' in message and 'layer9.weight' in message
  assert 'bn1.weight (65,)' in message


def test_resnet18_file_into_resnet50_is_refused(tmp_path):
  torch.save(torchvision.models.resnet18().state_dict(), tmp_path / 'r18.pth')
  with pytest.raises(StateDictMismatch, match='not a ResNet-50'):
    resnet50_state_dict(tmp_path / 'r18.pth')
  with pytest.raises(StateDictMismatch, match='missing keys'):
    torch_to_flax(read_weights(tmp_path / 'r18.pth').backbone(), *template('resnet50'))


def test_missing_file_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match='nothing.pth'):
    resnet50_state_dict(tmp_path / 'nothing.pth')
