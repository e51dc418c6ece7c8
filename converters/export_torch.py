"""Export a training checkpoint as PyTorch weights.

  python -m converters.export_torch runs/ours --out ours.pth                 # torchvision
  python -m converters.export_torch runs/ours --out ours_moco.pth --format moco
  python -m converters.export_torch runs/ours --out ours.safetensors

'torchvision' loads into `torchvision.models.resnet50()` with only `fc.weight` and
`fc.bias` missing; 'moco' is the original project's checkpoint layout (SPEC.md
section 5), which its evaluation code and Jabri et al.'s `moco50` loader accept.
Prints a one-line JSON summary.
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np

from converters.mapping import flax_to_torch
from converters.torch_files import TorchWeights


def read_checkpoint(path, step: int | None = None) -> TorchWeights:
  """A training checkpoint (workdir or checkpoints folder) as torchvision-keyed arrays."""
  from revisit_jax import checkpoint
  state, meta = checkpoint.restore(path, step=step)
  queues = {'queue': np.asarray(state['queue'], np.float32).T,
            'queue_ptr': np.asarray(state['queue_ptr'], np.int64).reshape(1)}
  if state.get('queue_h') is not None:
    queues['queue_backbone'] = np.asarray(state['queue_h'], np.float32).T
  config = meta.get('config', {})
  return TorchWeights(
      path=str(path), layout='moco',
      encoder_q=flax_to_torch(state['params'], state['batch_stats']),
      encoder_k=flax_to_torch(state['key_params'], state['key_batch_stats']),
      queues=queues, epoch=int(meta.get('epoch', 0)),
      arch=config.get('model', {}).get('arch', meta.get('arch')))


def moco_state_dict(weights: TorchWeights) -> dict[str, np.ndarray]:
  state = {f'module.encoder_q.{k}': v for k, v in weights.encoder_q.items()}
  state.update({f'module.encoder_k.{k}': v for k, v in (weights.encoder_k or {}).items()})
  state.update({f'module.{k}': v for k, v in weights.queues.items()})
  return state


def write(state: dict[str, np.ndarray], out: Path, extra: dict | None = None):
  """Writes atomically: a temporary file renamed into place."""
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(out.name + '.tmp')
  if out.suffix == '.safetensors':
    from safetensors.numpy import save_file
    save_file({k: np.array(v) for k, v in state.items()}, str(tmp),
              metadata={k: str(v) for k, v in (extra or {}).items()})
  else:
    import torch
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    torch.save({**extra, 'state_dict': tensors} if extra else tensors, tmp)
  os.replace(tmp, out)


def export(path, out, fmt: str = 'torchvision', step: int | None = None) -> dict:
  weights = read_checkpoint(path, step)
  out = Path(out)
  if fmt == 'torchvision':
    state, extra = weights.backbone(), None
  elif fmt == 'moco':
    state = moco_state_dict(weights)
    extra = {'epoch': weights.epoch, 'arch': weights.arch}
  else:
    raise ValueError(f'unknown format {fmt!r}; use torchvision or moco')
  write(state, out, extra)
  return {'tensors': len(state), 'format': fmt, 'source': str(path), 'epoch': weights.epoch,
          'out': str(out)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('checkpoint', help='training workdir or its checkpoints/ folder')
  parser.add_argument('--out', required=True, help='.pth or .safetensors file to write')
  parser.add_argument('--format', default='torchvision', choices=['torchvision', 'moco'])
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
  args = parser.parse_args(argv)
  print(json.dumps(export(args.checkpoint, args.out, args.format, args.step)))


if __name__ == '__main__':
  main()
