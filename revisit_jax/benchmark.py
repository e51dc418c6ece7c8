"""Throughput of the full training step on synthetic uint8 crops (augmentation included).

  python -m revisit_jax.benchmark --config configs/ours_800ep.py
  python -m revisit_jax.benchmark --config configs/moco_800ep.py --config.data.bn_groups=1
  python -m revisit_jax.benchmark --config configs/ours_800ep.py --augment_share

Runs on whatever devices JAX sees, with no TensorFlow and no dataset, and prints one JSON
line: images/s (global and per device), ms per step, compile seconds, peak device memory.
--augment_share also times the same step fed crops that skip the on-device augmentation,
and reports the fraction of the step the augmentation takes.
"""

import json
import time

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from revisit_jax.sharding import batch_sharding, make_mesh
from revisit_jax.train_state import create_train_state
from revisit_jax.train_step import make_train_step


def synthetic_batch(config, mesh, seed=0):
  """Random uint8 crops shaped like the input pipeline's, placed on the mesh."""
  rng = np.random.default_rng(seed)
  b, c = config.data.global_batch, config.crops
  shapes = {'large': (b, 2, c.large_size, c.large_size, 3)}
  if c.num_small:
    shapes['small'] = (b, c.num_small, c.small_size, c.small_size, 3)
  batch = {k: rng.integers(0, 256, s, dtype=np.uint8) for k, s in shapes.items()}
  batch['image_id'] = np.arange(b, dtype=np.int32)
  return jax.device_put(batch, batch_sharding(mesh))


def peak_memory_bytes(devices) -> int | None:
  stats = [d.memory_stats() or {} for d in devices]
  peaks = [s.get('peak_bytes_in_use') for s in stats]
  return max(peaks) if all(p is not None for p in peaks) else None


def benchmark(config, steps: int, warmup: int, augment: bool = True) -> dict:
  mesh = make_mesh()
  step_fn = make_train_step(config, mesh, steps_per_epoch=1000, augment=augment)
  state = create_train_state(config, mesh, jax.random.key(0))
  batch = synthetic_batch(config, mesh)

  start = time.perf_counter()
  state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)

  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  seconds = time.perf_counter() - start

  n = mesh.devices.size
  images_per_s = steps * config.data.global_batch / seconds
  peak = peak_memory_bytes(mesh.devices.flat)
  return {
      'method': config.method.kind, 'arch': config.model.arch, 'dtype': config.model.dtype,
      'global_batch': config.data.global_batch, 'bn_groups': config.data.bn_groups,
      'devices': n, 'device_kind': mesh.devices.flat[0].device_kind,
      'img_per_s': round(images_per_s, 1), 'img_per_s_per_device': round(images_per_s / n, 1),
      'step_ms': round(1000 * seconds / steps, 2), 'compile_s': round(compile_s, 1),
      'peak_memory_gb': None if peak is None else round(peak / 2**30, 2),
      'loss': float(metrics['loss']), 'steps': steps,
  }


def main(argv):
  del argv
  config, steps, warmup = flags.FLAGS.config, flags.FLAGS.steps, flags.FLAGS.warmup
  result = benchmark(config, steps, warmup)
  if flags.FLAGS.augment_share:
    plain_ms = benchmark(config, steps, warmup, augment=False)['step_ms']
    result.update(step_ms_without_augment=plain_ms,
                  augment_share=round(1 - plain_ms / result['step_ms'], 3))
  print(json.dumps(result))


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', 'configs/ours_800ep.py', 'the run to benchmark')
  flags.DEFINE_integer('steps', 20, 'timed steps')
  flags.DEFINE_integer('warmup', 3, 'untimed steps after the compiling one')
  flags.DEFINE_bool('augment_share', False, 'also time the step without on-device augmentation')
  from revisit_jax import cli  # one-line errors, exit status 2
  cli.run_absl(main)
