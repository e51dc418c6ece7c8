"""Input throughput of the CPU stage: images/s of decoding, drawing crop boxes and batching
the decoded images on their canvas (the crops are cut on the accelerator; revisit_jax.benchmark
measures that side).

    python -m input_pipeline.benchmark [--source DIR] [--workers N] [--layout ours|moco]
                                       [--batch 256] [--seconds S] [--parts]

Prints one JSON line. Without --source it times copies of the two 427x640 JPEGs that
scikit-learn ships (china.jpg, flower.jpg). With --workers N, tf.data runs on a private pool
of N threads with one thread per op, so images/s per worker is images/s per core. --parts
adds the CPU milliseconds per image of decoding alone, with the boxes' uniforms drawn too,
and with the batching on the canvas and the boxes too (one thread).
"""

import argparse
import gc
import importlib
import json
import os
import shutil
import tempfile
import time

CONFIGS = {'ours': 'configs.ours_800ep', 'moco': 'configs.moco_800ep'}


def layout_config(name: str):
  """(crop groups, constrained, canvas) of the pretraining config `name`."""
  from input_pipeline.crops import layout_of

  config = importlib.import_module(CONFIGS[name]).get_config()
  return layout_of(config), config.crops.constrained, config.data.canvas_size


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
  """Images per wall second and per CPU second of this process (after a warm-up batch).

  Per CPU second is the per-core rate even when other jobs share the cores.
  """
  from input_pipeline import pipeline, sources

  layout, constrained, canvas = layout_config(layout_name)
  it = pipeline.TrainIterator(
    sources.folder_source(source_dir),
    layout=layout,
    constrained=constrained,
    canvas=canvas,
    batch_size=batch,
    seed=0,
    process_index=0,
    process_count=1,
    workers=workers,
  )
  next(it)  # traces the graph and fills the buffers
  images, start, cpu_start = 0, time.perf_counter(), time.process_time()
  while time.perf_counter() - start < seconds:
    next(it)
    images += batch
  wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  del it
  gc.collect()  # stops tf.data's background reading before the caller removes the files
  return images / wall, images / cpu


def time_parts(path: str, layout_name: str, batches: int = 10, batch: int = 32) -> dict:
  """CPU ms per image on one tf.data thread, cumulative: decoding; then drawing the box
  uniforms too; then batching on the canvas with the batch's boxes too. (Differences of
  these timings can come out negative on a shared machine, so none are reported.)"""
  from input_pipeline import crops, pipeline, sources

  tf = sources.import_tf()
  layout, constrained, canvas = layout_config(layout_name)
  data = tf.io.read_file(path)

  def place(i):
    image = crops.fit_canvas(sources.decode_file_bytes(data), canvas)
    seed = tf.stack([tf.constant(0, tf.int64), i])
    return {'image': image, 'size': tf.shape(image)[:2],
            'uniforms': crops.draw_uniforms(seed, layout, constrained)}

  def boxes(b):
    return {'image': b['image'], 'boxes': crops.all_boxes(
        b['uniforms'], b['size'][:, 0], b['size'][:, 1], layout, constrained)}

  padded = {'image': [canvas, canvas, 3], 'size': [2],
            'uniforms': [crops.uniforms_needed(layout, constrained)]}
  stages = {  # a corner only costs no batching
    'decode_ms': lambda ds: ds.map(lambda i: sources.decode_file_bytes(data)[:1, :1]).batch(batch),
    'with_uniforms_ms': lambda ds: ds.map(lambda i: (lambda p: (p['image'][:1, :1], p['uniforms']))(
        place(i))).batch(batch),
    'with_batching_ms': lambda ds: ds.map(place).padded_batch(batch, padded_shapes=padded).map(boxes),
  }
  out = {}
  for name, build in stages.items():
    ds = build(tf.data.Dataset.range((batches + 1) * batch))
    it = iter(ds.with_options(pipeline.tf_options(1)))
    next(it)  # warm-up
    start = time.process_time()
    for _ in it:
      pass
    out[name] = round((time.process_time() - start) / (batches * batch) * 1e3, 3)
  return out


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
    '--parts', action='store_true', help='also time decode, boxes and batching per image'
  )
  args = parser.parse_args(argv)

  with tempfile.TemporaryDirectory() as tmp:
    source = args.source or sample_jpeg_folder(tmp)
    rate, cpu_rate = time_cpu_stage(
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
  }
  print(json.dumps(result))


if __name__ == '__main__':
  from revisit_jax import cli  # one-line errors, exit status 2
  cli.run(main)
