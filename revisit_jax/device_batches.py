"""Per-process numpy batches -> global jax arrays sharded along the batch (no TensorFlow here)."""

import collections
import itertools
from collections.abc import Iterable, Iterator

import jax
from jax.sharding import Mesh

from revisit_jax.sharding import batch_sharding


def to_global(batch: dict, mesh: Mesh) -> dict:
  """Each process's rows become its part of one global array per key, split along 'data'.

  The per-process batch must divide evenly over this process's devices.
  """
  sharding = batch_sharding(mesh)
  local = len(mesh.local_devices)
  out = {}
  for key, value in batch.items():
    if value.shape[0] % local:
      raise ValueError(
        f'batch key {key!r}: {value.shape[0]} rows do not split over {local} local devices'
      )
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def prefetch_to_device(batches: Iterable[dict], mesh: Mesh, size: int = 2) -> Iterator[dict]:
  """Place batches on the devices ``size`` ahead, so copies overlap the steps using earlier ones."""
  queue = collections.deque()
  batches = iter(batches)

  def enqueue(n):
    for batch in itertools.islice(batches, n):
      queue.append(to_global(batch, mesh))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)
