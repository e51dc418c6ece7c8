"""Sharded equals unsharded; the EMA and the queue wrap-around.

The multi-device part runs tests/sharded_step_child.py in a subprocess with 8 virtual
CPU devices (the flag must be set before jax is imported).
"""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs.base import get_base_config
from revisit_jax import method, queues
from revisit_jax.sharding import AXIS, make_mesh
from revisit_jax.train_state import create_train_state
from revisit_jax.train_step import check_batch, make_train_step
from step_batches import canvas_size, tiled_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUTS = ('1x8', '2x4', '8x1', '1x2', '2x1')  # devices x BN groups per device
BATCH = 16


@pytest.fixture(scope='module')
def sharded(tmp_path_factory):
  out = tmp_path_factory.mktemp('sharded') / 'results.npz'
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
             XLA_FLAGS='--xla_force_host_platform_device_count=8')
  run = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'sharded_step_child.py'),
                        str(out), *LAYOUTS], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=900)
  assert run.returncode == 0, run.stderr[-4000:]
  return dict(np.load(out))


def fields(results, layout, prefix):
  return {k[len(layout) + 1:]: v for k, v in results.items()
          if k.startswith(f'{layout}/{prefix}')}


def written_rows(queue, initial):
  """Rows the step replaced (the step's keys), and where."""
  changed = np.flatnonzero(np.any(queue != initial, axis=1))
  return changed, queue[changed]


def same_rows(a, b, atol):
  """a and b hold the same rows, in any order."""
  distance = np.abs(a[:, None, :] - b[None, :, :]).max(-1)
  return distance.min(1).max() < atol and len(set(distance.argmin(1))) == len(a)


@pytest.mark.parametrize('reference, other', [
    ('1x8', '2x4'), ('1x8', '8x1'), ('1x2', '2x1')])
def test_sharded_step_equals_unsharded(sharded, reference, other):
  for name, want in fields(sharded, reference, 'metrics').items():
    np.testing.assert_allclose(sharded[f'{other}/{name}'], want, rtol=1e-5, err_msg=name)
  for prefix, rtol in (('grad', 1e-4), ('batch_stats', 1e-5), ('key_batch_stats', 1e-5)):
    for name, want in fields(sharded, reference, prefix).items():
      got = sharded[f'{other}/{name}']
      scale = np.abs(want).max()
      assert np.abs(got - want).max() <= rtol * scale, f'{name}: {np.abs(got - want).max()}'
  for queue in ('queue', 'queue_h'):
    initial = sharded[f'initial/{queue}']
    _, want = written_rows(sharded[f'{reference}/{queue}'], initial)
    where, got = written_rows(sharded[f'{other}/{queue}'], initial)
    assert len(want) == len(got) == BATCH
    assert same_rows(got, want, atol=1e-5), queue
    # Each device wrote its own keys at the start of its own K/n rows.
    devices = int(other.split('x')[0])
    rows = len(initial) // devices
    np.testing.assert_array_equal(
        where, [d * rows + j for d in range(devices) for j in range(BATCH // devices)])
    assert sharded[f'{other}/queue_ptr'] == BATCH // devices


def test_ema_is_exact():
  rng = np.random.default_rng(0)
  key = {'a': rng.normal(size=(3, 4)).astype(np.float32), 'b': rng.normal(size=5).astype(np.float32)}
  query = {'a': rng.normal(size=(3, 4)).astype(np.float32), 'b': rng.normal(size=5).astype(np.float32)}
  got = jax.device_get(jax.jit(method.ema, static_argnums=2)(key, query, 0.995))
  for name in key:
    want = 0.995 * key[name].astype(np.float64) + 0.005 * query[name].astype(np.float64)
    np.testing.assert_allclose(got[name], want, rtol=2e-7, atol=1e-9)


def test_queue_wraps_after_k_over_b_steps():
  size, batch, dim = 12, 4, 3
  mesh = make_mesh(jax.devices()[:1])
  enqueue = jax.jit(jax.shard_map(queues.enqueue, mesh=mesh, in_specs=(P(AXIS), P(AXIS), P()),
                                  out_specs=(P(AXIS), P())))
  queue = queues.init_queue(jax.random.key(0), size, dim)
  np.testing.assert_allclose(np.linalg.norm(queue, axis=1), 1.0, rtol=1e-6)
  pointer, written = jnp.zeros((), jnp.int32), []
  for step in range(size // batch):
    keys = (step + np.arange(batch)[:, None] / 10 + np.zeros(dim)).astype(np.float32)
    written.append(keys)
    queue, pointer = enqueue(queue, keys, pointer)
    assert int(pointer) == (step + 1) * batch % size
  np.testing.assert_array_equal(queue, np.concatenate(written))
  queue, pointer = enqueue(queue, np.full((batch, dim), -1, np.float32), pointer)
  np.testing.assert_array_equal(queue[:batch], -1)  # the oldest rows go first
  np.testing.assert_array_equal(queue[batch:], np.concatenate(written[1:]))


def small_config():
  c = get_base_config()
  c.model.arch, c.model.width = 'resnet18', 8
  c.crops.large_size, c.crops.small_size = 32, 16
  c.data.canvas_size = canvas_size(32, 16, c.crops.num_small)
  c.method.queue_size, c.method.knn_topk = 64, 4
  c.data.global_batch, c.data.bn_groups = 16, 2
  return c


@pytest.mark.parametrize('field, value, message', [
    ('method.queue_size', 72, 'config.method.queue_size=72 is not a multiple of '
     'config.data.global_batch=16'),
    ('data.bn_groups', 3, 'config.data.global_batch=16 is not divisible by 1 devices x '
     'config.data.bn_groups=3'),
    ('method.kind', 'simclr', "config.method.kind='simclr'"),
    ('crops.autoaugment_crops', (0, 7), 'crops [7] do not exist'),
    ('crops.num_small', 0, "config.crops.num_small=0 with config.method.kind='ours'"),
    ('method.knn_topk', 65, 'config.method.knn_topk=65 exceeds the 64 queue rows'),
])
def test_config_errors_come_before_compiling(field, value, message):
  c = small_config()
  group, name = field.split('.')
  c[group][name] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    make_train_step(c, make_mesh(jax.devices()[:1]), steps_per_epoch=1)


def test_batch_shapes_are_checked():
  c = small_config()
  batch = {'image': np.zeros((16, 128, 128, 3), np.uint8),
           'boxes': np.zeros((16, 5, 4), np.int32),
           'image_id': np.zeros(16, np.int32)}
  with pytest.raises(ValueError, match=re.escape("batch['boxes'] has shape (16, 5, 4)")):
    check_batch(c, batch)
  del batch['boxes']
  with pytest.raises(ValueError, match='batch keys'):
    check_batch(c, batch)


def test_shuffled_keys_come_back_in_image_order():
  """With one BN group the shuffle must be invisible: keys equal a plain forward pass."""
  c = small_config()
  c.data.bn_groups, c.model.dtype = 1, 'float32'
  model = method.build_encoder(c)
  rng = np.random.default_rng(0)
  crops = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
  ids = rng.permutation(100)[:8].astype(np.int32)
  variables = model.init(jax.random.key(0), crops[:1], train=False)
  # Augmentation stand-in that depends on the image id: ids must travel with their crops.
  prepare = lambda x, i: x + i[:, None, None, None] / 100

  def keys(params, stats, crops, ids, permutation):
    return method.shuffled_keys(model, params, stats, crops, ids, permutation, prepare)[:2]

  f = jax.jit(jax.shard_map(keys, mesh=make_mesh(jax.devices()[:1]),
                            in_specs=(P(), P(), P(AXIS), P(AXIS), P()), out_specs=P(AXIS)))
  k, h = f(variables['params'], variables['batch_stats'], crops, ids, rng.permutation(8))
  want_k, want_h, _ = method.encode(model, variables['params'], variables['batch_stats'],
                                    prepare(crops, ids))
  np.testing.assert_allclose(k, want_k, atol=1e-5)
  np.testing.assert_allclose(h, want_h, atol=1e-5)


def test_knn_loss_is_off_during_warmup_epochs_and_on_after():
  c = small_config()
  c.method.knn_warmup_epochs, c.model.dtype = 2, 'float32'
  mesh = make_mesh(jax.devices()[:1])
  train_step = make_train_step(c, mesh, steps_per_epoch=3, augment=False)
  rng = np.random.default_rng(0)
  batch = tiled_batch(rng.integers(0, 256, (16, 2, 32, 32, 3), np.uint8),
                      rng.integers(0, 256, (16, 4, 16, 16, 3), np.uint8))
  for step, weight in ((5, 0.0), (6, c.method.knn_weight)):  # epoch 1: warm-up; epoch 2: on
    state = create_train_state(c, mesh, jax.random.key(0))  # a new one: the step donates it
    m = train_step(state.replace(step=jnp.int32(step)), batch)[1]
    assert float(m['knn']) > 0
    np.testing.assert_allclose(m['loss'], m['infonce'] + weight * m['knn'], rtol=1e-6)
