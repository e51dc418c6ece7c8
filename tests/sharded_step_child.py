"""Child of test_sharded_step.py: one training step of a tiny 'ours' model on several meshes.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 set before jax is imported.
Usage: python tests/sharded_step_child.py OUT.npz DEVICESxGROUPS ...
Writes the initial queues and, per mesh, the metrics, the gradient (the momentum buffer
after one step with weight decay 0), the queues, the BN statistics and the queue pointer
after the step. 64 px large and 32 px small crops keep >= 8 values in every BN group even
at layer4 (fewer make BN's backward numerically chaotic).
"""

import sys

import jax
import numpy as np
import optax

from configs.base import get_base_config
from revisit_jax.sharding import batch_sharding, make_mesh
from revisit_jax.train_state import create_train_state, state_shardings
from revisit_jax.train_step import make_train_step
from step_batches import canvas_size, tiled_batch


def tiny_config(bn_groups):
  c = get_base_config()
  c.model.arch, c.model.width, c.model.head_hidden_dim, c.model.dtype = 'resnet18', 8, 32, 'float32'
  c.crops.large_size, c.crops.small_size = 64, 32
  c.data.canvas_size = canvas_size(64, 32, c.crops.num_small)
  c.method.queue_size, c.method.knn_topk = 64, 4
  c.data.global_batch, c.data.bn_groups = 16, bn_groups
  c.optim.weight_decay = 0.0
  return c


def flat(prefix, tree):
  return {prefix + jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def main(out, layouts):
  rng = np.random.default_rng(0)
  batch = tiled_batch(rng.integers(0, 256, (16, 2, 64, 64, 3), np.uint8),
                      rng.integers(0, 256, (16, 4, 32, 32, 3), np.uint8))
  one = make_mesh(jax.devices()[:1])
  host_state = jax.device_get(create_train_state(tiny_config(1), one, jax.random.key(0)))
  results = {'initial/queue': host_state.queue, 'initial/queue_h': host_state.queue_h}
  for layout in layouts:
    devices, groups = map(int, layout.split('x'))
    config, mesh = tiny_config(groups), make_mesh(jax.devices()[:devices])
    # A fresh key each time: the state is donated, and key arrays do not come back as numpy.
    state = host_state.replace(rng=jax.random.key(1))
    state = jax.device_put(state, state_shardings(state, mesh))
    step = make_train_step(config, mesh, steps_per_epoch=1, augment=False)
    state, metrics = step(state, jax.device_put(batch, batch_sharding(mesh)))
    state = jax.device_get(state)
    results.update(flat(f'{layout}/metrics', metrics))
    results.update(flat(f'{layout}/grad', optax.tree_utils.tree_get(state.opt_state, 'trace')))
    results.update(flat(f'{layout}/batch_stats', state.batch_stats))
    results.update(flat(f'{layout}/key_batch_stats', state.key_batch_stats))
    results[f'{layout}/queue'] = state.queue
    results[f'{layout}/queue_h'] = state.queue_h
    results[f'{layout}/queue_ptr'] = state.queue_ptr
  np.savez(out, **results)


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2:])
