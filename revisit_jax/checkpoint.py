"""Training checkpoints: orbax, under WORKDIR/checkpoints/<step>/{state,meta}.

orbax writes each step into a temporary folder and renames it when complete, so a process
killed mid-save leaves the previous steps and a temporary folder, which the next training
manager removes. Old steps leave the same way: orbax renames them into checkpoints/deleted/,
which is emptied before each save and at the end, so a kill mid-deletion leaves no half-deleted
step either. `meta` is JSON: the resolved config, epoch and where the weights came from.

A step folder that does not read back (a file missing or truncated, metadata unreadable) is
damaged: a resume reports it in one warning line, renames it <step>.damaged-<time> (nothing
is deleted) and goes on from the newest intact step.
"""

import asyncio
import contextlib
import json
import shutil
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from revisit_jax.cli import one_line


DRAIN_SECONDS = 60  # how long a failed restore waits for its other reads
DELETED = 'deleted'  # orbax renames the steps it no longer keeps into this sub-folder


class DamagedCheckpoint(ValueError):
  """A step folder that exists but does not read back."""


class NoIntactCheckpoint(ValueError):
  """Step folders exist, and none reads back."""


def checkpoint_dir(path) -> Path:
  """Accepts a workdir (holding checkpoints/) or the checkpoints folder itself."""
  path = Path(path).absolute()
  holds_steps = path.is_dir() and any(p.name.isdigit() for p in path.iterdir())
  return path if holds_steps and not (path / 'checkpoints').is_dir() else path / 'checkpoints'


def make_meta(config, step: int, epoch: int, **extra) -> dict:
  """The JSON beside each checkpoint: the resolved config and where in training it is."""
  return {'config': json.loads(config.to_json()), 'step': int(step), 'epoch': int(epoch), **extra}


def _open(directory, options=None):
  """A manager that knows its items' handlers, so it reads metadata without a template."""
  handlers = {'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def manager(path, max_to_keep: int | None = None, async_save: bool = True):
  """A manager that writes; it first removes what interrupted saves and deletions left."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                         enable_async_checkpointing=async_save, create=True,
                                         cleanup_tmp_directories=True, todelete_subdir=DELETED)
  directory = checkpoint_dir(path)
  _empty_deleted(directory)
  return _open(directory, options)


def _empty_deleted(directory: Path) -> None:
  if jax.process_index() == 0:  # the process that renamed them
    shutil.rmtree(directory / DELETED, ignore_errors=True)


def save(mngr, step: int, state, meta: dict, force: bool = True):
  mngr.wait_until_finished()  # the previous save's deletions are done (save waits anyway)
  _empty_deleted(Path(mngr.directory))
  mngr.save(int(step), force=force,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    meta=ocp.args.JsonSave(meta)))


def close(mngr) -> None:
  """Waits for the last save, then removes the steps it replaced."""
  mngr.close()
  _empty_deleted(Path(mngr.directory))


def steps(path) -> list[int]:
  """The complete (renamed into place) steps, oldest first."""
  directory = checkpoint_dir(path)
  return sorted(_open(directory).all_steps()) if directory.is_dir() else []


def latest_step(path) -> int | None:
  found = steps(path)
  return found[-1] if found else None


def newest_meta(path) -> dict | None:
  """The meta of the newest step whose meta reads back (None if none does): which run the
  folder holds, known before anything is built."""
  directory = checkpoint_dir(path)
  mngr = _open(directory)
  for step in reversed(steps(directory)):
    try:
      return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception:  # noqa: BLE001  a damaged step: restore_newest_intact reports it
      continue
  return None


def on_one_device(mngr, step: int):
  """A restore template placing every saved array on this process's first device, so a
  checkpoint written by any number of devices or hosts reads back anywhere."""
  saved = mngr.item_metadata(step)['state']
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)


def restore(path, template=None, step: int | None = None):
  """(state, meta) of `step` (default: latest). Without a template the state comes back
  as nested dicts of arrays on one device, which is all the exporters need.

  A step that does not read back raises DamagedCheckpoint naming its folder; errors of the
  devices (out of memory) are raised as they are.
  """
  directory = checkpoint_dir(path)
  found = steps(directory)
  step = (found[-1] if found else None) if step is None else step
  if step is None:
    raise FileNotFoundError(f'{path}: no checkpoint found in {directory}')
  if step not in found:
    raise FileNotFoundError(f'{path}: no step {step} in {directory} (steps: {found})')
  mngr = _open(directory)
  try:
    if template is None:
      template = on_one_device(mngr, step)
    with _draining_loops():
      restored = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
  except jax.errors.JaxRuntimeError:
    raise
  except Exception as e:  # orbax and tensorstore raise many types for bad bytes, even Exception
    reason = one_line(e.__cause__ or e)[:300]
    raise DamagedCheckpoint(f'checkpoint {directory / str(step)} is damaged '
                            f'({type(e).__name__}: {reason})') from e
  return restored.state, restored.meta


class _DrainingLoop(asyncio.SelectorEventLoop):
  """An event loop that lets its pending tasks finish before it closes.

  orbax runs a restore in a fresh loop and closes it as soon as one read fails, leaving the
  other reads in flight; when tensorstore completes them, their callbacks meet a closed loop
  and print hundreds of 'Event loop is closed' tracebacks from its threads. Waiting for them
  (their errors collected, not raised) leaves nothing to call back.
  """

  def close(self):
    pending = asyncio.all_tasks(self)
    if pending and not self.is_running() and not self.is_closed():
      self.run_until_complete(asyncio.wait(pending, timeout=DRAIN_SECONDS))
      for task in pending:
        if task.done() and not task.cancelled():
          task.exception()  # retrieved: asyncio does not log it as never retrieved
    super().close()


class _DrainingPolicy(type(asyncio.get_event_loop_policy())):
  _loop_factory = _DrainingLoop


@contextlib.contextmanager
def _draining_loops():
  """New event loops (orbax makes one per restore) drain before they close."""
  policy = asyncio.get_event_loop_policy()
  asyncio.set_event_loop_policy(_DrainingPolicy())
  try:
    yield
  finally:
    asyncio.set_event_loop_policy(policy)


def _everywhere(ok: bool) -> bool:
  """Whether `ok` holds on every process (all of them take the same branch after)."""
  if jax.process_count() == 1:
    return ok
  return bool(multihost_utils.process_allgather(np.int32(ok)).all())


def move_aside(directory: Path, step: int) -> Path:
  """Renames a step folder out of orbax's sight (process 0; every process waits)."""
  aside = directory / f'{step}.damaged-{time.strftime("%Y%m%dT%H%M%S")}'
  if jax.process_index() == 0:
    (directory / str(step)).rename(aside)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'move_aside_{step}')
  return aside


def restore_newest_intact(path, template):
  """(state, meta) of the newest step that reads back; None when there is no step.

  Each newer, damaged step is reported in one warning line and moved aside, so the run goes
  on from the intact one and its later saves of those steps do not collide. If no step reads
  back, NoIntactCheckpoint (nothing is moved).
  """
  directory = checkpoint_dir(path)
  damaged = []
  for step in reversed(steps(directory)):
    try:
      restored, error = restore(directory, template, step), None
    except DamagedCheckpoint as e:
      restored, error = None, e
    if _everywhere(error is None):
      for bad, reason in damaged:
        aside = move_aside(directory, bad)
        logging.warning('%s; moved to %s, resuming from step %d', reason, aside.name, step)
      return restored
    damaged.append((step, error or f'checkpoint {directory / str(step)} is damaged on '
                                    'another process'))
  if damaged:
    raise NoIntactCheckpoint(f'{directory} holds no intact checkpoint: steps '
                             f'{", ".join(str(s) for s, _ in damaged)} are damaged '
                             f'(newest: {damaged[0][1]})')
  return None
