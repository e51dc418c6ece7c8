"""Throughput of the full training step on synthetic images (crops cut and augmented inside).

  python -m revisit_jax.benchmark --config configs/ours_800ep.py
  python -m revisit_jax.benchmark --config configs/moco_800ep.py --config.data.bn_groups=1
  python -m revisit_jax.benchmark --config configs/ours_800ep.py --augment_share
  python -m revisit_jax.benchmark --config configs/ours_800ep.py --cost

Runs on whatever devices JAX sees, with no TensorFlow and no dataset, and prints one JSON
line: images/s (global and per device), ms per step, compile seconds, peak device memory.
--augment_share also times the same step without the photometric augmentation (crops cut,
only normalised) and reports the fraction of the step the augmentation takes.
--cost compiles instead of running: XLA's cost analysis (FLOPs, bytes accessed) of the whole
step and of its input side (cutting, resizing and augmenting every crop), the bytes a batch
brings to the devices, and what the input side would take of a 5,000 images/s step on an
H200 if it ran at the memory bandwidth and FP32 peak given in the output.
"""

import json
import time

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from revisit_jax.sharding import batch_sharding, make_mesh
from revisit_jax.train_state import create_train_state
from revisit_jax.config_check import num_crops
from revisit_jax.train_step import input_side, make_train_step

H200 = {'name': 'H200', 'hbm_bytes_per_s': 4.8e12, 'fp32_flops_per_s': 67e12}
TARGET_IMAGES_PER_S = 5000


def synthetic_boxes(config, rng, height, width):
  """int32 [B, crops, 4] boxes of random-resized-crop sizes inside a height x width image."""
  c, b = config.crops, config.data.global_batch
  scales = [c.large_scale] * 2 + [c.small_scale] * c.num_small
  area = np.stack([rng.uniform(lo, hi, b) for lo, hi in scales], 1) * height * width
  ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), area.shape))
  h = np.clip(np.round(np.sqrt(area / ratio)), 1, height)
  w = np.clip(np.round(np.sqrt(area * ratio)), 1, width)
  top = np.floor(rng.random(area.shape) * (height - h + 1))
  left = np.floor(rng.random(area.shape) * (width - w + 1))
  return np.stack([top, left, h, w], -1).astype(np.int32)


def synthetic_batch(config, mesh, seed=0):
  """Random images (COCO's usual 480 x 640 on the canvas) and boxes, placed on the mesh."""
  rng = np.random.default_rng(seed)
  b, canvas = config.data.global_batch, config.data.canvas_size
  height, width = min(canvas, 480), canvas
  image = np.zeros((b, canvas, canvas, 3), np.uint8)
  image[:, :height, :width] = rng.integers(0, 256, (b, height, width, 3), dtype=np.uint8)
  batch = {'image': image, 'boxes': synthetic_boxes(config, rng, height, width),
           'image_id': np.arange(b, dtype=np.int32)}
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


def compiled_cost(fn, *args) -> dict:
  """XLA's cost analysis of `fn` compiled for these arguments: GFLOP and GB accessed."""
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  return {'gflop': round(analysis['flops'] / 1e9, 2),
          'gb_accessed': round(analysis['bytes accessed'] / 1e9, 3)}


def cost(config) -> dict:
  """XLA's cost analysis of one step and of its input side, per global batch."""
  mesh = make_mesh()
  state = create_train_state(config, mesh, jax.random.key(0))
  batch = synthetic_batch(config, mesh)
  step = compiled_cost(make_train_step(config, mesh, steps_per_epoch=1000), state, batch)
  inputs = compiled_cost(lambda key, b: input_side(config, key, b), jax.random.key(0), batch)
  step_s = config.data.global_batch / TARGET_IMAGES_PER_S
  input_s = max(inputs['gb_accessed'] * 1e9 / H200['hbm_bytes_per_s'],
                inputs['gflop'] * 1e9 / H200['fp32_flops_per_s'])
  return {
      'method': config.method.kind, 'arch': config.model.arch,
      'global_batch': config.data.global_batch, 'crops_per_image': num_crops(config),
      'canvas': config.data.canvas_size, 'compiled_for': jax.devices()[0].device_kind,
      'devices': mesh.devices.size, 'step': step, 'input_side': inputs,
      'host_to_device_mb': round(sum(x.nbytes for x in jax.tree.leaves(batch)) / 1e6, 1),
      'assumed_device': H200, 'target_img_per_s': TARGET_IMAGES_PER_S,
      'input_side_ms_estimate': round(1000 * input_s, 3),
      'input_side_share_estimate': round(input_s / step_s, 4),
  }


def main(argv):
  del argv
  config, steps, warmup = flags.FLAGS.config, flags.FLAGS.steps, flags.FLAGS.warmup
  if flags.FLAGS.cost:
    print(json.dumps(cost(config)))
    return
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
  flags.DEFINE_bool('cost', False, "print XLA's cost analysis instead of timing")
  from revisit_jax import cli  # one-line errors, exit status 2
  cli.run_absl(main)
