"""Import PyTorch weights as a training checkpoint that training resumes from.

  python -m converters.import_torch moco_ours_800ep.pth.tar --out runs/imported
  python -m converters.import_torch resnet50.pth --out runs/from_tv --config configs/ours_800ep.py
  python -m converters.import_torch moco_v2_800ep.pth.tar --out runs/mocov2 --config configs/moco_800ep.py

SRC is an original MoCo / "Revisiting" training checkpoint (both encoders, both
queues, pointer, epoch and the SGD momentum buffers are taken), a `{'state_dict': ...}`
file or a plain torchvision ResNet state_dict (its backbone becomes both encoders;
head and queues start fresh, `fc` is dropped). The checkpoint is written in the
format training writes (WORKDIR/checkpoints/<step>), so
`python -m revisit_jax.main --config ... --workdir OUT` continues from it.
Prints a one-line JSON summary.
"""

import json

import jax
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from converters.mapping import torch_to_flax
from converters.torch_files import TorchWeights, parameter_keys, read_weights
from revisit_jax import checkpoint, cli, config_check
from revisit_jax.sharding import make_mesh
from revisit_jax.train_state import create_train_state

COCO_STEPS_PER_EPOCH = 118_287 // 256  # the original's data: COCO train2017 at batch 256


def momentum_buffers(weights: TorchWeights, template_params):
  """The SGD momentum of encoder_q from the original optimizer state, or None."""
  state = (weights.optimizer or {}).get('state')
  if not state:
    return None
  keys = parameter_keys(weights.encoder_q)
  buffers = {key: np.asarray(state[i]['momentum_buffer']) for i, key in enumerate(keys)
             if i in state and 'momentum_buffer' in state[i]}
  if len(buffers) != len(keys):
    raise ValueError(f'{weights.path}: optimizer state holds momentum for {len(buffers)} of '
                     f'{len(keys)} encoder_q parameters')
  return torch_to_flax(buffers, template_params, {}, source=f'{weights.path} (optimizer)')[0]


def encoder(part: dict, template_params, template_stats, source):
  return torch_to_flax(part, template_params, template_stats, source=source)


def import_weights(src, out, config, steps_per_epoch: int) -> dict:
  config_check.check(config, jax.device_count(), jax.process_count())
  weights = read_weights(src)
  fresh = create_train_state(config, make_mesh(), jax.random.key(config.train.seed))
  params, stats = jax.device_get((fresh.params, fresh.batch_stats))

  if weights.layout == 'moco':
    q_params, q_stats = encoder(weights.encoder_q, params, stats, f'{src} (encoder_q)')
    k_params, k_stats = (encoder(weights.encoder_k, params, stats, f'{src} (encoder_k)')
                         if weights.encoder_k else (q_params, q_stats))
  else:
    backbone = encoder(weights.backbone(), params['backbone'], stats['backbone'], src)
    q_params = k_params = {**params, 'backbone': backbone[0]}
    q_stats = k_stats = {**stats, 'backbone': backbone[1]}

  updates = dict(params=q_params, batch_stats=q_stats, key_params=k_params,
                 key_batch_stats=k_stats, step=np.int32(weights.epoch * steps_per_epoch))
  updates.update(queues(weights, fresh, config))
  momentum = momentum_buffers(weights, params) if weights.layout == 'moco' else None
  opt_state = fresh.opt_state
  if momentum is not None:
    opt_state = optax.tree_utils.tree_set(opt_state, trace=momentum)
  opt_state = optax.tree_utils.tree_set(opt_state, count=updates['step'])
  state = jax.tree.map(
      lambda new, old: old if new is old else jax.device_put(np.asarray(new, old.dtype),
                                                             old.sharding),
      fresh.replace(opt_state=opt_state, **updates), fresh)

  mngr = checkpoint.manager(out, async_save=False)
  checkpoint.save(mngr, int(state.step), state,
                  checkpoint.make_meta(config, state.step, weights.epoch, source=str(src)))
  checkpoint.close(mngr)
  return {'tensors': len(weights.encoder_q) + len(weights.encoder_k or {}) + len(weights.queues),
          'source_format': weights.layout, 'epoch': weights.epoch, 'step': int(state.step),
          'momentum_imported': momentum is not None, 'out': str(checkpoint.checkpoint_dir(out))}


def queues(weights: TorchWeights, fresh, config) -> dict:
  """Queue contents and pointer from the file, checked against the config's K and dims."""
  found = weights.queues
  with_knn = fresh.queue_h is not None
  if 'queue_backbone' in found and not with_knn:
    raise ValueError(f"{weights.path} holds a backbone queue (an 'ours' checkpoint) but "
                     f"config.method.kind={config.method.kind!r} has none; use an 'ours' config")
  result = {}
  for name, field in (('queue', 'queue'), ('queue_backbone', 'queue_h')):
    if name in found:
      target = getattr(fresh, field)
      value = found[name].T
      if value.shape != target.shape:
        raise ValueError(f'{weights.path}: {name} has {value.shape[0]} x {value.shape[1]} '
                         f'entries, config.method.queue_size and the model give '
                         f'{target.shape[0]} x {target.shape[1]}')
      result[field] = value
  if 'queue_ptr' in found:
    result['queue_ptr'] = np.int32(np.asarray(found['queue_ptr']).reshape(-1)[0])
  return result


def main(argv):
  if len(argv) != 2:
    raise app.UsageError('usage: python -m converters.import_torch SRC --out WORKDIR '
                         '[--config configs/ours_800ep.py]')
  FLAGS = flags.FLAGS
  print(json.dumps(import_weights(argv[1], FLAGS.out, FLAGS.config, FLAGS.steps_per_epoch)))


def define_flags():
  config_flags.DEFINE_config_file('config', 'configs/ours_800ep.py', 'config of the run to continue')
  flags.DEFINE_string('out', None, 'training workdir to write the checkpoint into', required=True)
  flags.DEFINE_integer('steps_per_epoch', COCO_STEPS_PER_EPOCH,
                       'steps per epoch of the run the checkpoint came from (step = epoch x this)')


if __name__ == '__main__':
  define_flags()
  cli.run_absl(main)
