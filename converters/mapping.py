"""Name and layout mapping between Flax variables and torchvision state_dict keys.

The Flax modules are named after torchvision's (`layer1_0` is `layer1.0`), so the
mapping is mechanical: `_<digit>` suffixes become `.<digit>`, the `backbone` and `head`
levels disappear (the head's `fc_0` / `fc_2` are the original's `fc.0` / `fc.2`), kernels are transposed
(HWIO <-> OIHW, (in, out) <-> (out, in)). Pure NumPy: no torch needed here.
"""

import re

import numpy as np
from flax import traverse_util

# torchvision's registration order of modules and leaves (BasicBlock and Bottleneck
# register conv1, bn1, conv2, bn2[, conv3, bn3], downsample; the head is fc.0, fc.2).
TORCH_ORDER = ('conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3', 'downsample', 'layer1', 'layer2',
               'layer3', 'layer4', 'fc', 'weight', 'bias', 'running_mean', 'running_var',
               'num_batches_tracked')
LEAF_TO_TORCH = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
                 'var': 'running_var', 'num_batches_tracked': 'num_batches_tracked'}


def torch_module_name(name: str) -> str:
  return re.sub(r'_(\d+)$', r'.\1', name)


def torch_order(key: str) -> tuple[int, ...]:
  """Sort key that puts torchvision ResNet keys in the order torch registers them,
  which is the order of `model.parameters()` and so of the optimizer's state."""
  return tuple(int(p) if p.isdigit() else TORCH_ORDER.index(p) for p in key.split('.'))


def to_torch_array(leaf_name: str, value) -> np.ndarray:
  value = np.asarray(value)
  if leaf_name == 'kernel':
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
  if leaf_name == 'num_batches_tracked':
    return value.astype(np.int64)
  return value


def to_flax_array(leaf_name: str, value) -> np.ndarray:
  value = np.asarray(value)
  if leaf_name == 'kernel':
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
  if leaf_name == 'num_batches_tracked':
    return value.astype(np.int32)
  return value.astype(np.float32)


def flax_path_to_torch_key(path: tuple[str, ...]) -> str:
  *modules, leaf = path
  names = [torch_module_name(m) for m in modules if m not in ('backbone', 'head')]
  torch_leaf = 'weight' if leaf == 'kernel' else LEAF_TO_TORCH[leaf]
  return '.'.join(names + [torch_leaf])


def flax_to_torch(params, batch_stats) -> dict[str, np.ndarray]:
  """Flax variables -> {torch key: array}; keys in no particular order."""
  out = {}
  for collection in (params, batch_stats):
    for path, value in traverse_util.flatten_dict(collection).items():
      out[flax_path_to_torch_key(path)] = to_torch_array(path[-1], value)
  return out


class StateDictMismatch(ValueError):
  """The tensors do not fit the model: lists what is missing, extra or mis-shaped."""

  def __init__(self, source, missing=(), unexpected=(), misshaped=()):
    lines = [f'{source}: the tensors do not fit the model']
    if missing:
      lines.append(f'missing keys ({len(missing)}): {", ".join(sorted(missing))}')
    if unexpected:
      lines.append(f'unexpected keys ({len(unexpected)}): {", ".join(sorted(unexpected))}')
    if misshaped:
      lines.append('mis-shaped: ' + ', '.join(
          f'{k} {tuple(got)} (model expects {tuple(want)})' for k, got, want in misshaped))
    super().__init__('; '.join(lines))
    self.missing, self.unexpected, self.misshaped = missing, unexpected, misshaped


def torch_to_flax(state: dict, template_params, template_stats, source='state_dict'):
  """{torch key: array} -> (params, batch_stats) shaped like the templates.

  Every template variable must be present with its shape, and nothing else may be:
  a partial or wrong-architecture load raises StateDictMismatch listing the keys.
  """
  wanted = {}
  for kind, collection in (('params', template_params), ('batch_stats', template_stats)):
    for path, value in traverse_util.flatten_dict(collection).items():
      wanted[flax_path_to_torch_key(path)] = (kind, path, np.shape(value))

  missing = [k for k in wanted if k not in state]
  unexpected = [k for k in state if k not in wanted]
  misshaped = []
  converted = {'params': {}, 'batch_stats': {}}
  for key, (kind, path, shape) in wanted.items():
    if key not in state:
      continue
    value = to_flax_array(path[-1], state[key])
    if value.shape != tuple(shape):
      misshaped.append((key, np.shape(state[key]), np.shape(to_torch_array(path[-1], np.zeros(shape)))))
      continue
    converted[kind][path] = value
  if missing or unexpected or misshaped:
    raise StateDictMismatch(source, missing, unexpected, misshaped)
  return (traverse_util.unflatten_dict(converted['params']),
          traverse_util.unflatten_dict(converted['batch_stats']))
