"""Training checkpoints: orbax, under WORKDIR/checkpoints/<step>/{state,meta}.

orbax writes each step into a temporary folder and renames it when complete, so a
crash mid-save never leaves a half-written latest checkpoint. `meta` is JSON: the
resolved config, epoch and where the weights came from.
"""

import json
from pathlib import Path

import jax
import orbax.checkpoint as ocp


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
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                         enable_async_checkpointing=async_save, create=True)
  return _open(checkpoint_dir(path), options)


def save(mngr, step: int, state, meta: dict, force: bool = True):
  mngr.save(int(step), force=force,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    meta=ocp.args.JsonSave(meta)))


def latest_step(path) -> int | None:
  directory = checkpoint_dir(path)
  if not directory.is_dir():
    return None
  return _open(directory).latest_step()


def restore_meta(path, step: int | None = None) -> dict:
  mngr = _open(checkpoint_dir(path))
  step = mngr.latest_step() if step is None else step
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def on_one_device(mngr, step: int):
  """A restore template placing every saved array on this process's first device, so a
  checkpoint written by any number of devices or hosts reads back anywhere."""
  saved = mngr.item_metadata(step)['state']
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)


def restore(path, template=None, step: int | None = None):
  """(state, meta) of `step` (default: latest). Without a template the state comes back
  as nested dicts of arrays on one device, which is all the exporters need."""
  directory = checkpoint_dir(path)
  mngr = _open(directory)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'{path}: no checkpoint found in {directory}')
  if template is None:
    template = on_one_device(mngr, step)
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
  return restored.state, restored.meta
