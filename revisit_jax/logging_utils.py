"""What a run writes while it trains: a progress bar, TensorBoard events, metrics.jsonl.

Only process 0 writes; elsewhere the writer does nothing, so the loop calls it everywhere.
clu's metric writers would do, but importing them needs the `tensorboard` package (as does
tf.summary.scalar); TensorFlow's core summary op with the scalars plugin's metadata writes
the same event files without it.
"""

import json
import sys
from pathlib import Path

import jax
from tqdm import tqdm

METRICS_FILE = 'metrics.jsonl'


class MetricWriter:
  """Scalars to WORKDIR/metrics.jsonl ({"step": s, name: value, ...} per line) and to
  TensorBoard event files in WORKDIR, on process 0 only."""

  def __init__(self, workdir):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    from input_pipeline.sources import import_tf  # TensorFlow lives there, kept off the GPUs
    self._tf = import_tf()
    from tensorflow.core.framework import summary_pb2
    self._metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name='scalars'))
    self._events = self._tf.summary.create_file_writer(str(workdir))
    self._jsonl = open(Path(workdir) / METRICS_FILE, 'a')

  def write_scalars(self, step: int, scalars: dict):
    if not self._active:
      return
    values = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), **values}) + '\n')
    self._jsonl.flush()
    tf = self._tf
    with self._events.as_default():
      for name, value in values.items():
        tf.summary.write(name, tf.constant(value, tf.float32), step=int(step),
                         metadata=self._metadata)

  def close(self):
    if self._active:
      self._events.close()
      self._jsonl.close()


def progress_bar(total: int, initial: int):
  """A tqdm bar over steps (its ETA counts from this launch); silent off process 0."""
  interactive = sys.stderr.isatty()
  return tqdm(total=total, initial=initial, unit='step', dynamic_ncols=True,
              mininterval=1 if interactive else 30, disable=jax.process_index() != 0)


def postfix(metrics: dict, epoch: float, images_per_s: float, devices: int) -> dict:
  """The numbers shown after the bar: epoch, losses, InfoNCE top-1, lr, throughput."""
  shown = {'epoch': f'{epoch:.2f}', 'loss': f"{metrics['loss']:.4f}"}
  if 'knn' in metrics:
    shown['knn'] = f"{metrics['knn']:.4f}"
  shown.update({'top1': f"{metrics['acc1']:.3f}", 'lr': f"{metrics['lr']:.4g}",
                'img/s': f'{images_per_s:.0f}', 'img/s/dev': f'{images_per_s / devices:.0f}'})
  return shown
