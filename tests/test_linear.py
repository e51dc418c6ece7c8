"""eval.linear: moco's main_lincls.py protocol on frozen weights, and its fast mode."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import demo
from converters.mapping import flax_to_torch
from eval import common
from eval import linear
from fixtures_eval import single_thread
from revisit_jax import method
from revisit_jax.models import feature_dim
from test_knn import write_folder


@pytest.fixture(scope='module')
def random_demo_weights(tmp_path_factory):
  """The demo's network (its shapes from Flax) at a random initialisation, as torchvision's
  ResNet and revisit_jax.models.resnet draw it (conv: He normal, fan-out; BN: 1, 0)."""
  model = method.build_encoder(demo.get_config())
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  state = {k: torch.from_numpy(v) for k, v in
           flax_to_torch(zeros['params'], zeros['batch_stats']).items() if not k.startswith('fc.')}
  net = common.resnet_like(state, 'the demo network')
  torch.manual_seed(0)
  for m in net.modules():
    if isinstance(m, torch.nn.Conv2d):
      torch.nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
    elif isinstance(m, torch.nn.BatchNorm2d):
      torch.nn.init.ones_(m.weight)
      torch.nn.init.zeros_(m.bias)
  path = tmp_path_factory.mktemp('random') / 'random.pth'
  torch.save(net.state_dict(), path)
  return path


def run(weights, workdir, *flags, data='demo'):
  single_thread()
  out = workdir.parent / f'{workdir.name}.json'
  linear.main([str(weights), '--data', data, '--workdir', str(workdir), '--workers', '0',
               '--out', str(out), *flags])
  return json.loads(out.read_text())


def test_learned_demo_weights_beat_random_initialisation_in_both_modes(
    demo_run, random_demo_weights, tmp_path):
  learned = demo_run[0] / 'resnet18_torchvision.pth'
  results = {}
  for name, weights in (('learned', learned), ('random', random_demo_weights)):
    results[name, 'fast'] = run(weights, tmp_path / f'{name}_fast', '--fast', '--epochs', '8',
                                '--schedule', '5', '7')
    results[name, 'full'] = run(weights, tmp_path / f'{name}_full', '--epochs', '2',
                                '--schedule', '1')
  print({k: round(v['top1'], 1) for k, v in results.items()})
  for mode in ('fast', 'full'):
    # percentage points (measured on the 25-epoch demo: fast 58.1 vs 31.4, full 37.5 vs 15.8)
    assert results['learned', mode]['top1'] > results['random', mode]['top1'] + 20
  fast, full = results['learned', 'fast'], results['learned', 'full']
  assert fast['mode'] == 'fast' and 'not the protocol' in fast['protocol']
  assert full['mode'] == 'full' and 'main_lincls.py' in full['protocol']
  assert (full['num_train'], full['num_test'], full['classes'], full['feature_dim']) == (
      1440, 360, 8, feature_dim('resnet18', demo.get_config().model.width))
  assert [h['lr'] for h in fast['history']] == pytest.approx([30] * 5 + [3] * 2 + [0.3])


def test_backbone_stays_frozen_and_in_eval_mode(random_demo_weights, tmp_path, monkeypatch):
  """moco's sanity_check: nothing but the linear layer changes, BN statistics included."""
  built = []
  build = common.build_resnet
  monkeypatch.setattr(common, 'build_resnet', lambda *a, **k: built.append(build(*a, **k))
                      or built[-1])
  run(random_demo_weights, tmp_path / 'full', '--epochs', '1')
  before = torch.load(random_demo_weights, weights_only=True)
  after = built[0].state_dict()
  assert not built[0].training and before.keys() == after.keys()
  for key, value in before.items():
    assert torch.equal(after[key].cpu(), value), key


def test_head_is_initialised_as_main_lincls():
  torch.manual_seed(0)
  head = linear.linear_head(2048, 1000)
  assert head.weight.std().item() == pytest.approx(0.01, rel=0.01)
  assert abs(head.weight.mean().item()) < 1e-4 and not head.bias.any()


def test_top_k_is_mocos_accuracy():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(50, 6)).astype(np.float32)
  labels = rng.integers(0, 7, 50)
  head = torch.nn.Linear(6, 7)
  got = linear.top_k(head, features, labels, 'cpu', batch_size=16)  # 4 batches
  logits = head(torch.from_numpy(features)).detach().numpy()
  ranked = np.argsort(-logits, axis=1)  # main_lincls.py's accuracy(): hits among the k best
  for k in (1, 5):
    assert got[f'top{k}'] == pytest.approx(100 * np.mean([y in r[:k] for y, r in
                                                          zip(labels, ranked)]))


def test_resumes_where_it_stopped_and_refuses_other_settings(
    random_demo_weights, tmp_path, monkeypatch):
  flags = ('--fast', '--epochs', '4', '--schedule', '2', '--lr', '1')
  straight = run(random_demo_weights, tmp_path / 'straight', *flags)

  calls = []
  top_k = linear.top_k

  def stop_in_epoch_3(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt  # after 2 epochs were checkpointed
    return top_k(*args, **kwargs)

  monkeypatch.setattr(linear, 'top_k', stop_in_epoch_3)
  with pytest.raises(KeyboardInterrupt):
    run(random_demo_weights, tmp_path / 'resumed', *flags)
  monkeypatch.setattr(linear, 'top_k', top_k)
  assert torch.load(tmp_path / 'resumed' / 'checkpoint.pt', weights_only=True)['epoch'] == 2
  resumed = run(random_demo_weights, tmp_path / 'resumed', *flags)
  assert resumed['history'] == straight['history']  # the same order, batches and updates
  again = run(random_demo_weights, tmp_path / 'resumed', *flags)  # done: reports only
  assert again['history'] == resumed['history']

  with pytest.raises(ValueError, match=r"resumed holds an evaluation with other settings "
                                       r"\(epochs: 4 there, 5 now"):
    run(random_demo_weights, tmp_path / 'resumed', '--fast', '--epochs', '5', '--schedule', '2',
        '--lr', '1')


def test_image_folder_and_tfds(random_demo_weights, tmp_path):
  write_folder(tmp_path / 'data', {'train': 5, 'val': 2})
  out = run(random_demo_weights, tmp_path / 'folder', '--epochs', '1', '--batch_size', '4',
            data=str(tmp_path / 'data'))
  assert (out['test_split'], out['num_train'], out['num_test']) == ('val', 15, 6)
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    out = run(random_demo_weights, tmp_path / 'tfds', '--epochs', '1', '--batch_size', '4',
              '--size', '16', data='tfds:mnist')
  assert (out['test_split'], out['num_train'], out['classes']) == ('test', 8, 10)


def test_tfds_shuffle_keeps_each_label_with_its_image():
  tf = pytest.importorskip('tensorflow')
  from input_pipeline.tfds_eval import shuffled_with_labels
  ids = np.arange(50)
  images = tf.data.Dataset.from_tensor_slices(  # image i is filled with i, its label is i % 7
      {'image': np.repeat(ids, 4 * 4 * 3).reshape(50, 4, 4, 3).astype(np.uint8)})
  pairs = list(shuffled_with_labels(images, ids % 7, seed=3, buffer_size=16).as_numpy_iterator())
  order = [int(p['image'][0, 0, 0]) for p in pairs]
  assert sorted(order) == list(ids) and order != list(ids)
  assert [int(p['label']) for p in pairs] == [i % 7 for i in order]


def test_bad_arguments(random_demo_weights, tmp_path):
  with pytest.raises(SystemExit):
    run(random_demo_weights, tmp_path / 'w', '--epochs', '0')
  with pytest.raises(FileNotFoundError, match='nowhere'):
    run(random_demo_weights, tmp_path / 'w', data=str(tmp_path / 'nowhere'))
  with pytest.raises(FileNotFoundError, match='missing.pth'):
    run(tmp_path / 'missing.pth', tmp_path / 'w2')
