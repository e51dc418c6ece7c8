"""What a run writes while it trains: a progress bar, TensorBoard events, metrics.jsonl.

Only process 0 writes; elsewhere the writer does nothing, so the loop calls it everywhere.
TensorBoard events come from clu's default metric writer (`tensorboard --logdir WORKDIR`).
"""

import json
import sys
from pathlib import Path

import jax
from tqdm import tqdm

from revisit_jax import files

METRICS_FILE = 'metrics.jsonl'


class MetricWriter:
  """Scalars to TensorBoard event files in WORKDIR and to WORKDIR/metrics.jsonl
  ({"step": s, name: value, ...} per line), on process 0 only.

  A run resumed at `step` first drops the lines of later steps (logged before a kill, redone
  now) and a line cut short by the kill, so each step appears once. TensorBoard keeps such
  steps twice and shows the newer values.
  """

  def __init__(self, workdir, step: int):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    keep_steps_up_to(Path(workdir) / METRICS_FILE, step)
    from clu import metric_writers  # imports TensorFlow, kept off the GPUs by revisit_jax.main
    self._events = metric_writers.create_default_writer(str(workdir))
    self._jsonl = open(Path(workdir) / METRICS_FILE, 'a')

  def write_scalars(self, step: int, scalars: dict):
    if not self._active:
      return
    values = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), **values}) + '\n')
    self._jsonl.flush()
    self._events.write_scalars(int(step), values)

  def close(self):
    if self._active:
      self._events.close()
      self._jsonl.close()


def keep_steps_up_to(path: Path, step: int) -> None:
  """Rewrites the metrics log `path` (atomically) without lines after `step` or cut short."""
  if not path.exists():
    return
  kept = []
  for line in path.read_text().splitlines(keepends=True):
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if line.endswith('\n') and record['step'] <= step:
      kept.append(line)
  files.write_text(path, ''.join(kept))


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
