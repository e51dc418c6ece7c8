"""import_torch / export_torch against files laid out like the original project's."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from configs.base import get_base_config
from converters.export_torch import detectron2_checkpoint, export, moco_state_dict
from converters.export_torch import main as export_main
from converters.import_torch import import_weights
from converters.mapping import torch_order
from converters.torch_files import TorchWeights
from revisit_jax import checkpoint

REPO = Path(__file__).resolve().parents[1]
K = 64


def small_config(kind='ours'):
  """ResNet-18 at torchvision width (so exports load into torchvision), a short queue."""
  c = get_base_config()
  c.model.arch, c.model.head_hidden_dim, c.model.dtype = 'resnet18', 512, 'float32'
  c.method.kind, c.method.queue_size = kind, K
  if kind == 'moco':
    c.method.knn_weight = 0.0  # MoCo has no kNN loss: config_check refuses a weight for it
  c.data.global_batch, c.data.bn_groups = 16, 1
  c.crops.large_size, c.crops.small_size = 32, 16
  return c


def moco_encoder(seed):
  torch.manual_seed(seed)
  model = torchvision.models.resnet18()
  model.fc = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU(),
                                 torch.nn.Linear(512, 128))
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.running_mean.uniform_(-1, 1)
      m.num_batches_tracked.fill_(seed + 10)
  return model


def original_checkpoint(path, with_backbone_queue=True, epoch=5):
  """What the original main_moco.py saved: torch.save of epoch / arch / state_dict / optimizer."""
  encoder_q, encoder_k = moco_encoder(0), moco_encoder(1)
  state = {f'module.encoder_q.{k}': v for k, v in encoder_q.state_dict().items()}
  state.update({f'module.encoder_k.{k}': v for k, v in encoder_k.state_dict().items()})
  state['module.queue'] = torch.nn.functional.normalize(torch.randn(128, K), dim=0)
  if with_backbone_queue:
    state['module.queue_backbone'] = torch.nn.functional.normalize(torch.randn(512, K), dim=0)
  state['module.queue_ptr'] = torch.tensor([48])
  params = list(encoder_q.parameters()) + list(encoder_k.parameters())
  optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
  for p in encoder_k.parameters():
    p.requires_grad = False
  for p in encoder_q.parameters():
    p.grad = torch.randn_like(p)
  optimizer.step()
  torch.save({'epoch': epoch, 'arch': 'resnet18', 'state_dict': state,
              'optimizer': optimizer.state_dict()}, path)
  return encoder_q


def test_torch_order_is_torchvision_parameter_order():
  for arch in ('resnet18', 'resnet50'):
    keys = [k for k, _ in getattr(torchvision.models, arch)().named_parameters()]
    assert sorted(keys, key=torch_order) == keys
  head = list(moco_encoder(0).state_dict())
  assert sorted(head, key=torch_order) == head


def test_original_checkpoint_survives_import_and_moco_export(tmp_path):
  original_checkpoint(tmp_path / 'orig.pth.tar')
  summary = import_weights(tmp_path / 'orig.pth.tar', tmp_path / 'run', small_config(), 100)
  assert summary['source_format'] == 'moco' and summary['step'] == 500
  assert summary['momentum_imported']
  before = torch.load(tmp_path / 'orig.pth.tar', weights_only=True)
  # The original's queues are columns [dim, K]; the imported ones hold key i in row i.
  state, _ = checkpoint.restore(tmp_path / 'run')
  np.testing.assert_array_equal(state['queue'], before['state_dict']['module.queue'].numpy().T)
  np.testing.assert_array_equal(state['queue_h'],
                                before['state_dict']['module.queue_backbone'].numpy().T)
  assert int(np.asarray(state['queue_ptr']).ravel()[0]) == 48
  export(tmp_path / 'run', tmp_path / 'back.pth', 'moco')

  after = torch.load(tmp_path / 'back.pth', weights_only=True)
  assert (after['epoch'], after['arch']) == (before['epoch'], before['arch'])
  assert after['state_dict'].keys() == before['state_dict'].keys()
  for key, value in before['state_dict'].items():
    assert after['state_dict'][key].dtype == value.dtype, key
    assert torch.equal(after['state_dict'][key], value), key
  momentum_before, momentum_after = before['optimizer']['state'], after['optimizer']['state']
  assert momentum_after.keys() == momentum_before.keys()
  for i in momentum_before:
    assert torch.equal(momentum_after[i]['momentum_buffer'], momentum_before[i]['momentum_buffer'])
  assert after['optimizer']['param_groups'][0]['params'] == \
      before['optimizer']['param_groups'][0]['params']


def test_torchvision_export_loads_into_torchvision_and_gives_the_same_features(tmp_path):
  encoder_q = original_checkpoint(tmp_path / 'orig.pth.tar')
  import_weights(tmp_path / 'orig.pth.tar', tmp_path / 'run', small_config(), 100)
  export(tmp_path / 'run', tmp_path / 'tv.pth', 'torchvision')
  model = torchvision.models.resnet18()
  result = model.load_state_dict(torch.load(tmp_path / 'tv.pth', weights_only=True), strict=False)
  assert sorted(result.missing_keys) == ['fc.bias', 'fc.weight'] and not result.unexpected_keys
  model.fc = encoder_q.fc = torch.nn.Identity()
  x = torch.randn(2, 3, 64, 64)
  with torch.no_grad():
    assert torch.equal(model.eval()(x), encoder_q.eval()(x))


def test_plain_torchvision_file_round_trips_through_a_checkpoint(tmp_path):
  state = torchvision.models.resnet18().state_dict()
  torch.save(state, tmp_path / 'tv.pth')
  summary = import_weights(tmp_path / 'tv.pth', tmp_path / 'run', small_config(), 100)
  assert summary['source_format'] == 'torchvision' and summary['step'] == 0
  export(tmp_path / 'run', tmp_path / 'back.safetensors', 'torchvision')
  from safetensors.torch import load_file
  back = load_file(str(tmp_path / 'back.safetensors'))
  assert back.keys() == {k for k in state if not k.startswith('fc.')}
  assert all(torch.equal(back[k], state[k]) for k in back)


def test_queue_size_mismatch_names_the_config_field(tmp_path):
  original_checkpoint(tmp_path / 'orig.pth.tar')
  config = small_config()
  config.method.queue_size = 2 * K
  with pytest.raises(ValueError, match='queue_size'):
    import_weights(tmp_path / 'orig.pth.tar', tmp_path / 'run', config, 100)


def test_ours_checkpoint_into_a_moco_config_is_refused(tmp_path):
  original_checkpoint(tmp_path / 'orig.pth.tar')
  with pytest.raises(ValueError, match="use an 'ours' config"):
    import_weights(tmp_path / 'orig.pth.tar', tmp_path / 'run', small_config('moco'), 100)


def test_resnet50_file_into_a_resnet18_config_lists_the_keys(tmp_path):
  torch.save(torchvision.models.resnet50().state_dict(), tmp_path / 'r50.pth')
  with pytest.raises(ValueError, match=r'mis-shaped: .*layer1\.0\.conv1\.weight'):
    import_weights(tmp_path / 'r50.pth', tmp_path / 'run', small_config(), 100)


def test_command_lines_print_json_summaries(tmp_path):
  original_checkpoint(tmp_path / 'orig.pth.tar', with_backbone_queue=False, epoch=2)
  config_file = tmp_path / 'cfg.py'
  config_file.write_text(
      'from tests.test_converters import small_config\n'
      "def get_config():\n  return small_config('moco')\n")
  env = {**os.environ, 'PYTHONPATH': str(REPO), 'JAX_PLATFORMS': 'cpu'}
  run = lambda *args: json.loads(subprocess.run(
      [sys.executable, '-m', *args], cwd=REPO, env=env, check=True, capture_output=True,
      text=True).stdout.strip().splitlines()[-1])
  imported = run('converters.import_torch', str(tmp_path / 'orig.pth.tar'), '--out',
                 str(tmp_path / 'run'), f'--config={config_file}', '--steps_per_epoch=10')
  assert (imported['epoch'], imported['step']) == (2, 20)
  exported = run('converters.export_torch', str(tmp_path / 'run'), '--out',
                 str(tmp_path / 'out.pth'), '--format', 'moco')
  assert exported['format'] == 'moco' and exported['epoch'] == 2
  state = torch.load(tmp_path / 'out.pth', weights_only=True)['state_dict']
  assert 'module.queue_backbone' not in state
  assert np.array_equal(state['module.queue_ptr'].numpy(), [48])


def detectron2_rule(key):
  """moco's detection/convert-pretrain-to-detectron2.py, rewritten here: its string replacements
  on a `module.encoder_q.` key of a moco checkpoint."""
  key = key.replace('module.encoder_q.', '')
  if 'layer' not in key:
    key = 'stem.' + key
  for t in (1, 2, 3, 4):
    key = key.replace(f'layer{t}', f'res{t + 1}')
  for t in (1, 2, 3):
    key = key.replace(f'bn{t}', f'conv{t}.norm')
  return key.replace('downsample.0', 'shortcut').replace('downsample.1', 'shortcut.norm')


def test_detectron2_layout_is_mocos_conversion_on_a_full_resnet50():
  encoder = torchvision.models.resnet50()
  encoder.fc = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU(),
                                   torch.nn.Linear(2048, 128))
  weights = TorchWeights(path='r50', layout='moco',
                         encoder_q={k: v.numpy() for k, v in encoder.state_dict().items()})
  moco = {k: v for k, v in moco_state_dict(weights).items() if k.startswith('module.encoder_q.')}
  got = detectron2_checkpoint(weights)
  assert got.keys() == {'model', '__author__', 'matching_heuristics'}
  assert got['matching_heuristics'] is True
  assert list(got['model']) == [detectron2_rule(k) for k in moco]  # same names, same order
  for key, value in moco.items():
    assert np.array_equal(got['model'][detectron2_rule(key)], value)
  # Names detectron2's ResNet-50 registers (stem, res2..res5, conv<i>.norm, shortcut.norm).
  assert {'stem.conv1.weight', 'stem.conv1.norm.running_var', 'res2.0.shortcut.weight',
          'res2.0.shortcut.norm.bias', 'res3.3.conv2.norm.weight', 'res5.2.conv3.weight',
          'stem.fc.0.weight'} <= got['model'].keys()


def test_detectron2_command_on_the_demo_run(demo_run, tmp_path, capsys):
  workdir = demo_run[0]
  export_main([str(workdir), '--format', 'detectron2', '--out', str(tmp_path / 'd2.pkl')])
  summary = json.loads(capsys.readouterr().out)
  with open(tmp_path / 'd2.pkl', 'rb') as f:
    got = pickle.load(f)
  export(workdir, tmp_path / 'moco.pth', 'moco')  # what moco's script would be given
  moco = torch.load(tmp_path / 'moco.pth', weights_only=True)['state_dict']
  expected = {detectron2_rule(k): v.numpy() for k, v in moco.items()
              if k.startswith('module.encoder_q.')}
  assert summary['tensors'] == len(expected) and got['model'].keys() == expected.keys()
  for key, value in expected.items():
    assert isinstance(got['model'][key], np.ndarray) and np.array_equal(got['model'][key], value)
  with pytest.raises(ValueError, match=r'd2\.pth: detectron2 reads its weights from a \.pkl'):
    export(workdir, tmp_path / 'd2.pth', 'detectron2')
