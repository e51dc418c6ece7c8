"""Input throughput: CPU-stage images/s (decode + crops) and on-device augmentation time per batch.

    python -m input_pipeline.benchmark [--source DIR] [--workers N] [--layout ours|moco]
                                       [--batch 256] [--seconds S] [--parts]

Prints one JSON line. Without --source it times copies of the two 427x640 JPEGs that
scikit-learn ships (china.jpg, flower.jpg). With --workers N, tf.data runs on a private pool
of N threads with one thread per op, so images/s per worker is images/s per core. --parts
adds the CPU milliseconds per image of decoding, crop boxes and resizing (one thread).
"""

import argparse
import gc
import importlib
import json
import os
import shutil
import statistics
import tempfile
import time

CONFIGS = {'ours': 'configs.ours_800ep', 'moco': 'configs.moco_800ep'}


def layout_config(name: str):
  """(crop groups, constrained, AutoAugment crop ids) of the pretraining config `name`."""
  from input_pipeline.crops import layout_of

  config = importlib.import_module(CONFIGS[name]).get_config()
  return layout_of(config), config.crops.constrained, tuple(config.crops.autoaugment_crops)


def sample_jpeg_folder(root: str, copies: int = 128) -> str:
  """``copies`` copies of each JPEG scikit-learn ships, in a new folder under ``root``."""
  from sklearn.datasets import load_sample_images

  folder = os.path.join(root, 'sample_jpegs')
  os.makedirs(folder)
  for path in load_sample_images().filenames:
    name = os.path.splitext(os.path.basename(path))[0]
    for k in range(copies):
      shutil.copyfile(path, os.path.join(folder, f'{name}_{k:04d}.jpg'))
  return folder


def time_cpu_stage(
  source_dir: str, layout_name: str, batch: int, workers: int | None, seconds: float
):
  """Images per wall second and per CPU second of this process (after a warm-up batch), last batch.

  Per CPU second is the per-core rate even when other jobs share the cores.
  """
  from input_pipeline import pipeline, sources

  layout, constrained, _ = layout_config(layout_name)
  it = pipeline.TrainIterator(
    sources.folder_source(source_dir),
    layout=layout,
    constrained=constrained,
    batch_size=batch,
    seed=0,
    process_index=0,
    process_count=1,
    workers=workers,
  )
  last = next(it)  # traces the graph and fills the buffers
  images, start, cpu_start = 0, time.perf_counter(), time.process_time()
  while time.perf_counter() - start < seconds:
    last = next(it)
    images += batch
  wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  del it
  gc.collect()  # stops tf.data's background reading before the caller removes the files
  return images / wall, images / cpu, last


def time_parts(path: str, layout_name: str, batches: int = 10, batch: int = 32) -> dict:
  """CPU ms per image of decoding, crop boxes and resizing one image file, on one tf.data thread."""
  from input_pipeline import crops, pipeline, sources

  tf = sources.import_tf()
  layout, constrained, _ = layout_config(layout_name)
  data = tf.io.read_file(path)

  def decode(i):
    return sources.decode_file_bytes(data), tf.stack([tf.constant(0, tf.int64), i])

  def boxes(i):
    image, seed = decode(i)
    return crops.crop_boxes(seed, tf.shape(image)[0], tf.shape(image)[1], layout, constrained)

  stages = {
    'decode': lambda i: decode(i)[0][:1, :1],  # a corner only: no time spent returning it
    'boxes': boxes,
    'resize': lambda i: crops.multi_crop(*decode(i), layout, constrained),
  }
  out, previous = {}, 0.0
  for name, fn in stages.items():
    ds = tf.data.Dataset.range((batches + 1) * batch).map(fn).batch(batch)
    it = iter(ds.with_options(pipeline.tf_options(1)))
    next(it)  # warm-up
    start = time.process_time()
    for _ in it:
      pass
    total = (time.process_time() - start) / (batches * batch) * 1e3
    out[f'{name}_ms'], previous = round(total - previous, 3), total
  return out


def time_augment(batch: dict, layout_name: str, repeats: int = 5):
  """Median milliseconds of jitted ``augment_crops`` over every crop group of ``batch``."""
  import jax

  from revisit_jax.augment import augment_crops

  layout, _, autoaugment = layout_config(layout_name)
  groups, first = [], 0
  for name, count, _, _ in layout:
    groups.append((name, tuple(range(first, first + count))))
    first += count

  @jax.jit
  def augment(key, crops, image_ids):
    return [augment_crops(key, crops[name], image_ids, ids, autoaugment) for name, ids in groups]

  crops = {name: jax.device_put(batch[name]) for name, _ in groups}
  image_ids = jax.device_put(batch['image_id'])
  key = jax.random.key(0)
  jax.block_until_ready(augment(key, crops, image_ids))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(augment(key, crops, image_ids))
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times), str(jax.devices()[0].device_kind)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    '--source', help="folder of images (default: copies of scikit-learn's sample JPEGs)"
  )
  parser.add_argument(
    '--workers', type=int, default=None, help='tf.data threads (default: tf.data decides)'
  )
  parser.add_argument('--layout', choices=sorted(CONFIGS), default='ours')
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--seconds', type=float, default=20.0)
  parser.add_argument(
    '--parts', action='store_true', help='also time decode, boxes and resize per image'
  )
  parser.add_argument(
    '--no-augment', action='store_true', help='skip the on-device augmentation timing'
  )
  args = parser.parse_args(argv)

  with tempfile.TemporaryDirectory() as tmp:
    source = args.source or sample_jpeg_folder(tmp)
    rate, cpu_rate, batch = time_cpu_stage(
      source, args.layout, args.batch, args.workers, args.seconds
    )
    parts = None
    if args.parts:
      from input_pipeline import sources

      parts = time_parts(sources.folder_source(source).describe(0), args.layout)
  result = {
    'layout': args.layout,
    'batch': args.batch,
    'workers': args.workers,
    'source': args.source or 'sklearn sample JPEGs 427x640',
    'cpu_images_per_s': round(rate, 1),
    'cpu_images_per_s_per_core': round(rate / args.workers, 1) if args.workers else None,
    'cpu_images_per_cpu_s': round(cpu_rate, 1),
    'cpu_ms_per_image_parts': parts,
    'cpu_count': os.cpu_count(),
    'load_average_1min': round(os.getloadavg()[0], 2),
    'augment_ms_per_batch': None,
    'augment_device': None,
    'augment_note': None,
  }
  if args.no_augment:
    result['augment_note'] = 'skipped (--no-augment)'
  else:
    try:
      ms, kind = time_augment(batch, args.layout)
      result.update(augment_ms_per_batch=round(ms, 2), augment_device=kind)
    except ImportError as e:
      result['augment_note'] = f'revisit_jax.augment unavailable: {e}'
  print(json.dumps(result))


if __name__ == '__main__':
  from revisit_jax import cli  # one-line errors, exit status 2
  cli.run(main)
