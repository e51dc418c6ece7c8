"""The memory queues, split along K over the 'data' axis.

Each device holds K/n rows. The functions below run per device inside `shard_map`;
their collectives make the split invisible: log-sum-exp, ranks and top-k come out
as if computed against one replicated queue, and the enqueue needs no traffic.
"""

import jax
import jax.numpy as jnp

from revisit_jax.sharding import AXIS


def init_queue(key, size: int, dim: int, dtype=jnp.float32):
  """[size, dim] rows of L2-normalised Gaussian noise (the original's start)."""
  rows = jax.random.normal(key, (size, dim), jnp.float32)
  return (rows / jnp.linalg.norm(rows, axis=1, keepdims=True)).astype(dtype)


def gather(x):
  """Concatenate every device's `x` along axis 0, in device order."""
  return jax.lax.all_gather(x, AXIS, tiled=True)


def own_rows(x, rows: int):
  """This device's `rows` rows of a gathered array (the inverse of `gather`)."""
  return jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index(AXIS) * rows, rows)


def logits(queries, queue_local, temperature):
  """[Q, K/n] float32 logits of all (gathered) queries against the local rows."""
  sims = jnp.einsum('qd,kd->qk', queries, queue_local.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
  return sims / temperature


def logsumexp(logits_local):
  """For this device's queries: the log-sum-exp of their logits over the whole queue.

  Each device reduces its rows; the [n, Q] partial results are gathered and merged.
  """
  partial = jax.nn.logsumexp(logits_local, axis=1)
  merged = jax.nn.logsumexp(jax.lax.all_gather(partial, AXIS), axis=0)
  return own_rows(merged, merged.shape[0] // jax.lax.axis_size(AXIS))


def count_above(logits_local, threshold):
  """For this device's queries: how many queue logits exceed `threshold` [Q]."""
  above = jnp.sum(logits_local > threshold[:, None], axis=1, dtype=jnp.int32)
  return jax.lax.psum_scatter(above, AXIS, tiled=True)


def top_k(queries, queue_local, k: int):
  """Global row indices [Q, k] of each query's k most similar queue rows.

  Only selects rows (no gradient), so the search runs in the queue's storage
  dtype with float32 accumulation. Local top-k, then top-k of the n*k candidates.
  """
  sims = jnp.einsum('qd,kd->qk', jax.lax.stop_gradient(queries).astype(queue_local.dtype),
                    queue_local, preferred_element_type=jnp.float32)
  values, index = jax.lax.top_k(sims, k)
  index = index + jax.lax.axis_index(AXIS) * queue_local.shape[0]
  values = jax.lax.all_gather(values, AXIS, axis=1, tiled=True)
  index = jax.lax.all_gather(index, AXIS, axis=1, tiled=True)
  _, best = jax.lax.top_k(values, k)
  return jnp.take_along_axis(index, best, axis=1)


def mean_at(logits_local, index):
  """For this device's queries: the mean of their logits at global rows `index` [Q, k]."""
  rows = logits_local.shape[1]
  local = index - jax.lax.axis_index(AXIS) * rows
  here = (local >= 0) & (local < rows)
  picked = jnp.take_along_axis(logits_local, jnp.clip(local, 0, rows - 1), axis=1)
  partial = jnp.sum(jnp.where(here, picked, 0.0), axis=1)
  return jax.lax.psum_scatter(partial, AXIS, tiled=True) / index.shape[1]


def enqueue(queue_local, keys_local, pointer):
  """Write this device's keys over its oldest rows; returns (queue, next pointer)."""
  queue_local = jax.lax.dynamic_update_slice_in_dim(
      queue_local, keys_local.astype(queue_local.dtype), pointer, axis=0)
  return queue_local, (pointer + keys_local.shape[0]) % queue_local.shape[0]
