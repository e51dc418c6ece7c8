"""Reading PyTorch weight files safely and telling their layouts apart.

Three layouts are recognised (SPEC.md section 5):
- 'moco': an original MoCo / "Revisiting" training checkpoint, keys
  `[module.]encoder_q.*`, `[module.]encoder_k.*`, `[module.]queue*`;
- 'torchvision': a plain torchvision ResNet state_dict (`conv1.weight`, ...),
  possibly inside `{'state_dict': ...}` and possibly with a `module.` prefix.
Anything else is refused with the keys it holds.
"""

import dataclasses
from pathlib import Path

import numpy as np

QUEUE_KEYS = ('queue', 'queue_backbone', 'queue_ptr')
BN_BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')


@dataclasses.dataclass
class TorchWeights:
  """A weight file split into its parts, as NumPy arrays keyed like torchvision."""
  path: str
  layout: str                                 # 'moco' or 'torchvision'
  encoder_q: dict[str, np.ndarray]            # backbone + (moco) head as fc.0 / fc.2
  encoder_k: dict[str, np.ndarray] | None = None
  queues: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  epoch: int = 0
  arch: str | None = None
  optimizer: dict | None = None

  def backbone(self) -> dict[str, np.ndarray]:
    """The query encoder without its head: what torchvision's resnet50 loads."""
    return {k: v for k, v in self.encoder_q.items() if not k.startswith('fc.')}


def parameter_keys(state: dict | None) -> list[str]:
  """A torch module's parameters in its state_dict order (the state_dict minus BN buffers)."""
  return [k for k in state or {} if not k.endswith(BN_BUFFERS)]


def to_numpy(value):
  import torch
  if isinstance(value, torch.Tensor):
    return value.detach().cpu().numpy()
  return np.asarray(value)


def load_raw(path) -> dict:
  """torch.load with weights_only=True (or safetensors); never unpickles objects."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'{path}: no such file')
  if path.suffix == '.safetensors':
    from safetensors.numpy import load_file
    return load_file(str(path))
  import torch
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises several types for non-checkpoint bytes
    raise ValueError(f'{path}: not a PyTorch checkpoint readable with weights_only=True '
                     f'({type(e).__name__}: {str(e).splitlines()[0][:200]})') from None
  if not isinstance(obj, dict):
    raise ValueError(f'{path}: expected a dict of tensors or a training checkpoint, '
                     f'got {type(obj).__name__}')
  return obj


def strip_prefix(state: dict, prefix: str) -> dict:
  if state and all(k.startswith(prefix) for k in state):
    return {k[len(prefix):]: v for k, v in state.items()}
  return state


def read_weights(path) -> TorchWeights:
  """Any supported weight file -> TorchWeights; a clear ValueError otherwise."""
  obj = load_raw(path)
  state = obj.get('state_dict', obj)
  if not isinstance(state, dict) or not state:
    raise ValueError(f'{path}: no state_dict found (top-level keys: {sorted(obj)[:10]})')
  non_tensors = [k for k, v in state.items() if not hasattr(v, 'shape')]
  if non_tensors:
    raise ValueError(f'{path}: not a state_dict: entries {non_tensors[:5]} are not tensors')
  state = strip_prefix({k: to_numpy(v) for k, v in state.items()}, 'module.')
  common = dict(path=str(path), epoch=int(obj.get('epoch', 0) or 0), arch=obj.get('arch'))

  if any(k.startswith('encoder_q.') for k in state):
    parts = {'encoder_q.': {}, 'encoder_k.': {}}
    queues, unknown = {}, []
    for key, value in state.items():
      prefix = next((p for p in parts if key.startswith(p)), None)
      if prefix:
        parts[prefix][key[len(prefix):]] = value
      elif key in QUEUE_KEYS:
        queues[key] = value
      else:
        unknown.append(key)
    if unknown:
      raise ValueError(f'{path}: unexpected keys in a MoCo checkpoint: {unknown[:10]}')
    return TorchWeights(layout='moco', encoder_q=parts['encoder_q.'],
                        encoder_k=parts['encoder_k.'] or None, queues=queues,
                        optimizer=obj.get('optimizer'), **common)

  if 'conv1.weight' in state and 'bn1.running_mean' in state:
    return TorchWeights(layout='torchvision', encoder_q=state, **common)

  raise ValueError(f'{path}: unknown layout; expected a MoCo checkpoint (encoder_q.*) or a '
                   f'torchvision ResNet state_dict (conv1.weight, ...); first keys: '
                   f'{sorted(state)[:8]}')
