"""Export a training checkpoint as PyTorch weights.

  python -m converters.export_torch runs/ours --out ours.pth                 # torchvision
  python -m converters.export_torch runs/ours --out ours_moco.pth --format moco
  python -m converters.export_torch runs/ours --out ours.safetensors
  python -m converters.export_torch runs/ours --out ours_d2.pkl --format detectron2

'torchvision' loads into `torchvision.models.resnet50()` (and timm's `resnet50`) with only
`fc.weight` and `fc.bias` missing; 'moco' is the original project's checkpoint layout (SPEC.md
section 5), which its evaluation code and Jabri et al.'s `moco50` loader accept; 'detectron2'
is what moco's detection/convert-pretrain-to-detectron2.py makes of that layout, for
detectron2's `MODEL.WEIGHTS`. Prints a one-line JSON summary.
"""

import argparse
import json
import pickle
import re
from pathlib import Path

import numpy as np

from converters.mapping import flax_to_torch, torch_order
from converters.torch_files import TorchWeights, parameter_keys
from revisit_jax import cli, files
from revisit_jax.train_state import cosine_lr


def read_checkpoint(path, step: int | None = None) -> TorchWeights:
  """A training checkpoint (workdir or checkpoints folder) as torchvision-keyed arrays."""
  from revisit_jax import checkpoint
  state, meta = checkpoint.restore(path, step=step)
  queues = {'queue': np.asarray(state['queue'], np.float32).T,
            'queue_ptr': np.asarray(state['queue_ptr'], np.int64).reshape(1)}
  if state.get('queue_h') is not None:
    queues['queue_backbone'] = np.asarray(state['queue_h'], np.float32).T
  config = meta.get('config', {})
  weights = TorchWeights(
      path=str(path), layout='moco',
      encoder_q=flax_to_torch(state['params'], state['batch_stats']),
      encoder_k=flax_to_torch(state['key_params'], state['key_batch_stats']),
      queues=queues, epoch=int(meta.get('epoch', 0)),
      arch=config.get('model', {}).get('arch', meta.get('arch')))
  weights.optimizer = sgd_state(find_field(state['opt_state'], 'trace'), weights, config)
  return weights


def export_trained(workdir: Path, config, state) -> str:
  """The query encoder of a run's final state as torchvision weights beside checkpoints/
  (safetensors without torch); called by revisit_jax.main after training.

  Taken from the parameters in memory, which every process holds whole, and written by
  process 0 once every process has finished: the same on one host or many.
  """
  import jax
  from jax.experimental import multihost_utils

  from revisit_jax.monitor import local_copy
  try:
    import torch  # noqa: F401  (the .pth writer needs it)
    suffix = 'pth'
  except ImportError:
    suffix = 'safetensors'
  out = Path(workdir) / f'{config.model.arch}_torchvision.{suffix}'
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('export')
  if jax.process_index() == 0:
    params, stats = jax.device_get(local_copy((state.params, state.batch_stats)))
    weights = TorchWeights(path=str(workdir), layout='moco',
                           encoder_q=flax_to_torch(params, stats))
    write(weights.backbone(), out)
  return str(out)


def find_field(tree, name):
  """The first value stored under `name` in a nested dict / list (the optax state)."""
  if isinstance(tree, dict):
    if name in tree:
      return tree[name]
    tree = list(tree.values())
  if isinstance(tree, (list, tuple)):
    for item in tree:
      found = find_field(item, name)
      if found is not None:
        return found
  return None


def sgd_state(trace, weights: TorchWeights, config: dict) -> dict | None:
  """torch.optim.SGD's state_dict over MoCo's parameters (encoder_q, then encoder_k)."""
  if trace is None:
    return None
  momentum = flax_to_torch(trace, {})
  keys = sorted(momentum, key=torch_order)
  optim = config.get('optim', {})
  lr = cosine_lr(optim.get('base_lr', 0.0), optim.get('epochs', 1))(weights.epoch)
  group = {'lr': float(lr),
           'momentum': optim.get('momentum', 0.9), 'dampening': 0,
           'weight_decay': optim.get('weight_decay', 0.0), 'nesterov': False,
           'maximize': False, 'foreach': None, 'differentiable': False, 'fused': None,
           'params': list(range(len(keys) + len(parameter_keys(weights.encoder_k))))}
  return {'state': {i: {'momentum_buffer': momentum[k]} for i, k in enumerate(keys)},
          'param_groups': [group]}


def moco_state_dict(weights: TorchWeights) -> dict[str, np.ndarray]:
  """The original's keys, in its order: encoder_q, encoder_k, then the queues."""
  state = {f'module.encoder_q.{k}': weights.encoder_q[k]
           for k in sorted(weights.encoder_q, key=torch_order)}
  state.update({f'module.encoder_k.{k}': weights.encoder_k[k]
                for k in sorted(weights.encoder_k or {}, key=torch_order)})
  state.update({f'module.{k}': v for k, v in weights.queues.items()})
  return state


def detectron2_key(key: str) -> str:
  """moco's renaming: `layer<i>` is `res<i+1>`, everything else sits under `stem.`, BN `bn<j>`
  is `conv<j>.norm` and `downsample.0` / `.1` is `shortcut` / `shortcut.norm`."""
  if key.startswith('layer'):
    key = re.sub(r'^layer(\d)', lambda m: f'res{int(m[1]) + 1}', key)
  else:
    key = 'stem.' + key
  key = re.sub(r'(^|\.)bn(\d)\.', r'\1conv\2.norm.', key)
  return key.replace('downsample.0.', 'shortcut.').replace('downsample.1.', 'shortcut.norm.')


def detectron2_checkpoint(weights: TorchWeights) -> dict:
  """What moco's conversion script pickles: the query encoder renamed (its MLP head too, as
  `stem.fc.*`, which detectron2 leaves unused), as NumPy arrays, for name matching."""
  state = {detectron2_key(k): np.asarray(weights.encoder_q[k])
           for k in sorted(weights.encoder_q, key=torch_order)}
  return {'model': state, '__author__': 'revisit-jax', 'matching_heuristics': True}


def write_pickle(obj, out: Path):
  with files.replaced_atomically(out) as tmp, open(tmp, 'wb') as f:
    pickle.dump(obj, f)


def to_torch(tree):
  import torch
  if isinstance(tree, dict):
    return {k: to_torch(v) for k, v in tree.items()}
  if isinstance(tree, np.ndarray):
    return torch.from_numpy(np.array(tree, order='C'))
  return tree


def write(state: dict[str, np.ndarray], out: Path, extra: dict | None = None):
  """Writes atomically (a killed write leaves the previous file). `extra` (epoch, arch,
  optimizer) wraps the tensors as {'state_dict': ..., **extra}, the original's layout."""
  with files.replaced_atomically(out) as tmp:
    if out.suffix == '.safetensors':
      from safetensors.numpy import save_file
      save_file({k: np.array(v, order='C') for k, v in state.items()}, str(tmp),
                metadata={k: str(v) for k, v in (extra or {}).items()})
    else:
      import torch
      tensors = to_torch(state)
      torch.save({**to_torch(extra), 'state_dict': tensors} if extra else tensors, tmp)


FORMATS = ('torchvision', 'moco', 'detectron2')


def export(path, out, fmt: str = 'torchvision', step: int | None = None) -> dict:
  out = Path(out)
  if fmt not in FORMATS:
    raise ValueError(f'unknown format {fmt!r}; use one of {", ".join(FORMATS)}')
  if fmt == 'detectron2' and out.suffix != '.pkl':
    raise ValueError(f'{out}: detectron2 reads its weights from a .pkl file (a .pth would be '
                     'loaded as a torch checkpoint, without name matching)')
  weights = read_checkpoint(path, step)
  if fmt == 'detectron2':
    checkpoint = detectron2_checkpoint(weights)
    write_pickle(checkpoint, out)
    tensors = len(checkpoint['model'])
  else:
    if fmt == 'torchvision':
      state, extra = weights.backbone(), None
    else:
      state = moco_state_dict(weights)
      extra = {'epoch': weights.epoch, 'arch': weights.arch}
      if weights.optimizer and out.suffix != '.safetensors':
        extra['optimizer'] = weights.optimizer
    write(state, out, extra)
    tensors = len(state)
  return {'tensors': tensors, 'format': fmt, 'source': str(path), 'epoch': weights.epoch,
          'out': str(out)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('checkpoint', help='training workdir or its checkpoints/ folder')
  parser.add_argument('--out', required=True,
                      help='.pth or .safetensors file to write (detectron2: a .pkl file)')
  parser.add_argument('--format', default='torchvision', choices=FORMATS)
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
  args = parser.parse_args(argv)
  print(json.dumps(export(args.checkpoint, args.out, args.format, args.step)))


if __name__ == '__main__':
  cli.run(main)
