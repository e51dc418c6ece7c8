"""The pretraining loop: resume, checkpoints, signals, logging, the kNN monitor.

The data position is a function of the step (epoch = step // steps_per_epoch, batch =
step % steps_per_epoch), so a checkpoint of the state is all a resume needs. Checkpoints
are orbax's (asynchronous, renamed into place when complete): every
train.checkpoint_every_steps steps, at each epoch end, at the end and on SIGTERM/SIGINT.
A checkpoint is written only after its step's loss and the state it holds were seen to be finite.

Whenever the process dies, running it again ends with the state an uninterrupted run ends
with: it resumes from the newest intact checkpoint (revisit_jax.checkpoint), the metrics log
drops the steps it will redo, and the files written (config.json here; knn_final.json and the
torchvision export by revisit_jax.main) are replaced atomically.
"""

import json
import shutil
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util
from jax.experimental import multihost_utils

from input_pipeline import sources
from revisit_jax import (checkpoint, compile_cache, config_check, files, logging_utils,
                         monitor, sharding, train_state, train_step)
from revisit_jax.device_batches import prefetch_to_device

# The config fields that define a run: a workdir holding another value of one of them is refused.
RUN_FIELDS = ('model', 'method', 'crops', 'optim', 'data.global_batch', 'data.source',
              'data.split')
CONFIG_FILE = 'config.json'


class RunError(ValueError):
  """A problem with the config, the data or the workdir: the command reports it in one line."""


class NonFiniteLoss(RunError):
  pass


def open_data(config):
  """The training source; a bad spec or path becomes a RunError naming config.data.source."""
  try:
    return sources.open_source(config.data.source, config.data.split,
                               config.data.data_dir or None)
  except (FileNotFoundError, ValueError) as e:
    raise RunError(f'config.data.source={config.data.source!r}: {e}') from None


def total_steps(config, steps_per_epoch: int) -> int:
  full = config.optim.epochs * steps_per_epoch
  return full if config.train.num_steps == -1 else config.train.num_steps


def validate(config, mesh, num_images: int) -> None:
  """Raise a ConfigError for any impossible combination, before anything is written or
  compiled; warn when BatchNorm groups differ from the paper's."""
  config_check.check(config, mesh.devices.size, jax.process_count(), num_images)
  note = config_check.bn_group_note(config, mesh.devices.size)
  if note:
    logging.warning(note)


def run_differences(saved: dict, config) -> list[str]:
  """'field: checkpoint X, now Y' for every run-defining field that differs."""
  before = traverse_util.flatten_dict(saved, sep='.')
  now = traverse_util.flatten_dict(json.loads(config.to_json()), sep='.')
  absent = '<absent>'
  out = []
  for key in sorted(set(before) | set(now)):
    if any(key == f or key.startswith(f + '.') for f in RUN_FIELDS):
      old, new = before.get(key, absent), now.get(key, absent)
      if old != new:
        out.append(f'{key}: checkpoint {old!r}, now {new!r}')
  return out


class StopSignal:
  """SIGTERM / SIGINT ask the loop to save and stop; a second SIGINT interrupts at once.

  All processes must stop at the same step, so with several the flags are gathered, a
  collective that waits for the devices: only every `every` steps, to keep the hosts ahead.
  """

  def __init__(self, every: int):
    self.every = every
    self._requested = False
    self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame):
    if self._requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    logging.warning('received %s: saving a checkpoint and stopping', signal.Signals(signum).name)
    self._requested = True

  def requested(self, step: int) -> bool:
    """Whether any process got a signal, as seen at `step`."""
    if jax.process_count() == 1:
      return self._requested
    if step % self.every:
      return False
    return bool(multihost_utils.process_allgather(np.int32(self._requested)).any())

  def restore(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def check_same_run(workdir: Path, config) -> None:
  """Refuses a workdir whose checkpoints belong to another run, before anything is built."""
  meta = checkpoint.newest_meta(workdir)
  differences = run_differences(meta['config'], config) if meta else []
  if differences:
    raise RunError(f'{workdir} holds a checkpoint (step {meta["step"]}) of another run; the '
                   f'fields that differ: {"; ".join(differences)}. Use a new --workdir, the '
                   "checkpoint's config, or --fresh to move the old run aside.")


def start_afresh(workdir: Path) -> None:
  """--fresh: everything in `workdir` moves into workdir/previous-<time>/ (process 0)."""
  if jax.process_index() == 0 and workdir.is_dir():
    entries = [p for p in workdir.iterdir() if not p.name.startswith('previous-')]
    if entries:
      target = workdir / f'previous-{time.strftime("%Y%m%dT%H%M%S")}'
      target.mkdir()
      for p in entries:
        shutil.move(p, target / p.name)
      print(f'--fresh: moved the previous contents of {workdir} to {target}', flush=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('fresh')


def restore(workdir: Path, state):
  """(state, its checkpoint step): the newest intact checkpoint's, or (`state`, None)."""
  try:
    restored = checkpoint.restore_newest_intact(workdir, state)
  except checkpoint.NoIntactCheckpoint as e:
    raise RunError(f'{e}. --fresh moves what the workdir holds aside and starts from step 0.'
                   ) from None
  if restored is None:
    return state, None
  state, meta = restored
  if jax.process_index() == 0:
    print(f'Resuming from step {meta["step"]} in {workdir}', flush=True)
  return state, meta['step']


def as_device_batches(iterator, mesh):
  """Per-process numpy batches -> global arrays (image ids as int32, JAX's default int)."""
  batches = ({**b, 'image_id': b['image_id'].astype(np.int32)} for b in iterator)
  return prefetch_to_device(batches, mesh)


@jax.jit
def all_finite(tree):
  """Whether every floating-point value in `tree` is finite (one reduction on the devices)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                            if jnp.issubdtype(x.dtype, jnp.inexact)]))


class Metrics:
  """Per-step metrics fetched one step late (so the host stays a step ahead), checked for
  non-finite values, and averaged over each logging window."""

  def __init__(self, steps_per_epoch: int):
    self.steps_per_epoch = steps_per_epoch
    self.pending = None
    self.window = []
    self.checkpointed = None

  def add(self, step: int, metrics):
    self.settle()
    self.pending = (step, metrics)

  def settle(self):
    if self.pending is None:
      return
    step, metrics = self.pending
    self.pending = None
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not np.isfinite(values['loss']):
      epoch = (step - 1) // self.steps_per_epoch
      shown = ', '.join(f'{k}={v:.4g}' for k, v in values.items())
      raise self.diverged(f'non-finite loss at step {step} (epoch {epoch}): {shown}')
    self.window.append(values)

  def diverged(self, what: str) -> NonFiniteLoss:
    kept = (f'the last checkpoint (step {self.checkpointed}) is intact'
            if self.checkpointed is not None else 'no checkpoint was written')
    return NonFiniteLoss(f'{what}. Stopped without saving; {kept}. A lower '
                         'config.optim.base_lr may help.')

  def mean(self) -> dict:
    self.settle()
    mean = {k: float(np.mean([w[k] for w in self.window])) for k in self.window[0]}
    self.window = []
    return mean


def open_monitor(config):
  """(bank, test) labelled sources of the kNN monitor, or None when it is off."""
  m = config.monitor
  if not (m.every_epochs or m.final_vs_random):
    return None
  try:
    return tuple(monitor.open_split(m.source, split, config.data.data_dir)
                 for split in (m.train_split, m.test_split))
  except (FileNotFoundError, ValueError) as e:
    raise RunError(f'config.monitor.source={m.source!r}: {e}') from None


class Chrono:
  """The run's clock, as big_vision's chrono: the start-up (to the end of the first, compiling
  step, with the seconds spent tracing, lowering and compiling), then images/s over each
  logging window, the kNN monitor's time left out."""

  def __init__(self, images_per_step: int):
    self.images_per_step = images_per_step
    self.start, self.compiled_before = time.perf_counter(), compile_cache.seconds()
    self.startup = self.first_step_start = self.mark = None

  def loop_starts(self):
    self.first_step_start = time.perf_counter()

  def first_step_done(self, step: int):
    now = time.perf_counter()
    spent = {'seconds': now - self.start, 'first_step_s': now - self.first_step_start,
             **{k: v - self.compiled_before[k] for k, v in compile_cache.seconds().items()}}
    self.startup = {k: round(v, 2) for k, v in spent.items()}
    self.restart_window(step)

  def restart_window(self, step: int):
    self.mark = (time.perf_counter(), step)

  def images_per_s(self, step: int) -> float:
    """Since the window began; the next one begins now."""
    (began, first), now = self.mark, time.perf_counter()
    self.restart_window(step)
    return (step - first) * self.images_per_step / (now - began) if now > began else 0.0


def due(step: int, every: int, last: int | None = None) -> bool:
  """Whether periodic work runs after `step`: every `every` steps (0: never) and at `last`."""
  return step == last or bool(every) and step % every == 0


class Loop:
  """The steps and their periodic work: logging, the kNN monitor, checkpoints, signals."""

  def __init__(self, config, workdir: Path, mesh, steps_per_epoch: int, last: int, step: int,
               checkpointed, splits, chrono: Chrono):
    self.config, self.workdir, self.splits, self.chrono = config, workdir, splits, chrono
    self.steps_per_epoch, self.last, self.devices = steps_per_epoch, last, mesh.devices.size
    self.mngr = checkpoint.manager(workdir, config.train.keep_checkpoints, async_save=True)
    self.writer = logging_utils.MetricWriter(workdir, step)
    self.bar = logging_utils.progress_bar(last, step)
    self.stop = StopSignal(every=config.train.log_every_steps)
    self.metrics = Metrics(steps_per_epoch)
    self.metrics.checkpointed = checkpointed

  def run(self, state, step: int, step_fn, batches):
    """Steps until the last or a signal: (state, step, whether a signal stopped it)."""
    t, stopped = self.config.train, False
    self.chrono.loop_starts()
    try:
      while step < self.last and not stopped:
        state, step_metrics = step_fn(state, next(batches))
        step += 1
        self.metrics.add(step, step_metrics)
        self.bar.update(1)
        if self.chrono.startup is None:
          self.metrics.settle()  # the first step has compiled and run
          self.chrono.first_step_done(step)
        epoch, batch = divmod(step, self.steps_per_epoch)
        if due(step, t.log_every_steps, self.last):
          self.log(step)
        if batch == 0 and due(epoch, self.config.monitor.every_epochs):
          self.monitor(step, epoch, state)
        stopped = self.stop.requested(step)
        if due(step, t.checkpoint_every_steps, self.last) or batch == 0 or stopped:
          self.save(step, state)
      if stopped:
        self.bar.write(f'stopped by signal at step {step}: checkpoint saved in {self.workdir}')
    finally:
      self.stop.restore()
      self.bar.close()
      checkpoint.close(self.mngr)
      self.writer.close()
    return state, step, stopped

  def log(self, step: int):
    mean, rate = self.metrics.mean(), self.chrono.images_per_s(step)
    mean.update(epoch=step / self.steps_per_epoch, images_per_s=rate,
                images_per_s_per_device=rate / self.devices)
    self.writer.write_scalars(step, mean)
    self.bar.set_postfix(logging_utils.postfix(mean, step / self.steps_per_epoch, rate,
                                               self.devices), refresh=False)

  def monitor(self, step: int, epoch: int, state):
    top1 = monitor.knn_top1(self.config, state.params, state.batch_stats, self.splits)
    self.writer.write_scalars(step, {'monitor/knn_top1': top1})
    m = self.config.monitor
    self.bar.write(f'step {step} epoch {epoch}: kNN top-1 {top1:.2f} % on {m.source}/'
                   f'{m.test_split}')
    self.metrics.settle()
    self.chrono.restart_window(step)  # the monitor is not training throughput

  def save(self, step: int, state):
    """A checkpoint, once the state is seen to be finite."""
    self.metrics.settle()
    epoch, batch = divmod(step, self.steps_per_epoch)
    if not all_finite(state):  # a finite loss can still be followed by an overflowing update
      raise self.metrics.diverged(f'non-finite weights or statistics after step {step} '
                                  f'(epoch {(step - 1) // self.steps_per_epoch})')
    checkpoint.save(self.mngr, step, state, checkpoint.make_meta(
        self.config, step, epoch, batch=batch, steps_per_epoch=self.steps_per_epoch))
    self.metrics.checkpointed = step


def device_batches(config, source, mesh, batch_size: int, start: tuple[int, int]):
  """The training batches from (epoch, batch) `start` on, as global arrays; `batch_size` is
  this process's share of a batch."""
  from input_pipeline import crops, pipeline  # TensorFlow at import
  iterator = pipeline.create_train_iterator(
      source, layout=crops.layout_of(config), constrained=config.crops.constrained,
      canvas=config.data.canvas_size, batch_size=batch_size, seed=config.data.seed, start=start,
      workers=config.data.workers or None)
  return as_device_batches(iterator, mesh)


def train(config: ml_collections.ConfigDict, workdir, fresh: bool = False) -> tuple:
  """Train (or resume) in `workdir`; returns (summary, final state). The summary: final step,
  stopped, and the start-up (seconds to the end of the first step, in that step, and spent
  tracing, lowering and compiling). `fresh` moves what `workdir` holds aside and starts from
  step 0."""
  chrono = Chrono(config.data.global_batch)
  workdir = Path(workdir).absolute()
  mesh = sharding.make_mesh()
  source = open_data(config)
  validate(config, mesh, len(source))
  compile_cache.enable(config.train.compilation_cache)
  if fresh:
    start_afresh(workdir)
  check_same_run(workdir, config)
  sources.import_tf()  # once the config is known to be good, and kept off the accelerators
  splits = open_monitor(config)

  from input_pipeline import pipeline
  processes = jax.process_count()
  batch_size = config.data.global_batch // processes
  steps_per_epoch = pipeline.steps_per_epoch(len(source), batch_size, processes)
  last = total_steps(config, steps_per_epoch)
  if jax.process_index() == 0:
    files.write_text(workdir / CONFIG_FILE, config.to_json_best_effort(indent=2) + '\n')

  state = train_state.create_train_state(config, mesh, jax.random.PRNGKey(config.train.seed))
  state, latest = restore(workdir, state)
  step = int(state.step)
  batches = device_batches(config, source, mesh, batch_size, divmod(step, steps_per_epoch))
  step_fn = train_step.make_train_step(config, mesh, steps_per_epoch)
  loop = Loop(config, workdir, mesh, steps_per_epoch, last, step, latest, splits, chrono)
  state, step, stopped = loop.run(state, step, step_fn, batches)
  summary = {'step': step, 'epoch': step / steps_per_epoch, 'stopped': stopped,
             'workdir': str(workdir), 'startup': chrono.startup}
  return summary, state
