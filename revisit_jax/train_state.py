"""The training state (both encoders, optimizer, queues) and the optimizer.

Parameters, BN statistics and the optimizer are replicated; the queues are split along
K over the mesh (see queues.py). Parameters stay float32 whatever the compute dtype.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from revisit_jax import method, queues
from revisit_jax.models import feature_dim
from revisit_jax.sharding import batch_sharding, replicated


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  key_params: Any
  key_batch_stats: Any
  opt_state: Any
  queue: jax.Array           # [K, embed_dim] keys z, split along K
  queue_h: jax.Array | None  # [K, feature_dim] keys' backbone features h; None for MoCo
  queue_ptr: jax.Array       # next row to overwrite in each device's K/n rows
  rng: jax.Array


SCHEDULES = ('cosine_epoch', 'cosine_step')


def cosine_lr(base_lr: float, epochs: int):
  """e -> base_lr * 0.5 * (1 + cos(pi * e / epochs)), the original's adjust_learning_rate
  (e: the epoch, or the fractional epoch); also the lr converters.export_torch records."""
  return optax.cosine_decay_schedule(base_lr, epochs)


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """The learning rate at a step: cosine_lr of its epoch, whole or fractional."""
  cosine = cosine_lr(config.optim.base_lr, config.optim.epochs)
  if config.optim.schedule == 'cosine_epoch':
    return lambda step: cosine(step // steps_per_epoch)
  if config.optim.schedule == 'cosine_step':
    return lambda step: cosine(step / steps_per_epoch)
  raise ValueError(f'config.optim.schedule={config.optim.schedule!r}: expected one of {SCHEDULES}')


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """torch.optim.SGD(momentum, weight_decay): buf = mu buf + (g + wd p); p -= lr buf."""
  return optax.chain(
      optax.add_decayed_weights(config.optim.weight_decay),
      optax.sgd(make_schedule(config, steps_per_epoch), momentum=config.optim.momentum))


def create_train_state(config: ml_collections.ConfigDict, mesh, rng) -> TrainState:
  """A fresh state placed on `mesh`: key encoder = copy of the query encoder, noise queues."""
  model = method.build_encoder(config)
  # The optimizer state's structure does not depend on the schedule.
  optimizer = make_optimizer(config, steps_per_epoch=1)
  with_knn = config.method.kind == 'ours'

  def init(rng):
    init_key, queue_key, queue_h_key, rng = jax.random.split(rng, 4)
    size = config.crops.large_size
    variables = model.init(init_key, jnp.zeros((1, size, size, 3), model.head.dtype), train=False)
    params, batch_stats = variables['params'], variables['batch_stats']
    queue_h = None
    if with_knn:
      queue_h = queues.init_queue(
          queue_h_key, config.method.queue_size,
          feature_dim(config.model.arch, config.model.width),
          jnp.dtype(config.method.backbone_queue_dtype))
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
        key_params=params, key_batch_stats=batch_stats, opt_state=optimizer.init(params),
        queue=queues.init_queue(queue_key, config.method.queue_size, config.model.embed_dim),
        queue_h=queue_h, queue_ptr=jnp.zeros((), jnp.int32), rng=rng)

  return jax.jit(init, out_shardings=state_shardings(jax.eval_shape(init, rng), mesh))(rng)


def state_shardings(state: TrainState, mesh):
  """Where each field of `state` (arrays or shapes) lives: queues split, the rest replicated."""
  return jax.tree.map(lambda _: replicated(mesh), state).replace(
      queue=batch_sharding(mesh),
      queue_h=None if state.queue_h is None else batch_sharding(mesh))
