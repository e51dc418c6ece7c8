"""One jitted pretraining step for MoCo v2 and 'ours', on any number of devices and hosts.

Per step: EMA of the key encoder, keys with shuffle BN, the loss of all queries against
the split queues, the gradient (taken outside `shard_map`, so the replicated parameters
get the global mean gradient, as DDP's all-reduce), SGD, then the enqueue.
Batch: {'image': uint8 [B, C, C, 3] (decoded images on a canvas of config.data.canvas_size),
'boxes': int32 [B, 2 + n_small, 4] (each crop's box), 'image_id': int32 [B]}, split along B
over the mesh. Each device cuts and augments the crops of its own images.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import PartitionSpec as P

from revisit_jax import config_check, method, queues
from revisit_jax.augment import augment_crops, cut_crops, flips_of, normalize
from revisit_jax.sharding import AXIS
from revisit_jax.config_check import crop_groups, num_crops
from revisit_jax.train_state import TrainState, make_optimizer, make_schedule

def check_batch(config, batch) -> None:
  """Shapes of the batch against the config (at trace time, before compiling)."""
  b, canvas = config.data.global_batch, config.data.canvas_size
  expected = {'image': (b, canvas, canvas, 3), 'boxes': (b, num_crops(config), 4),
              'image_id': (b,)}
  if set(batch) != set(expected):
    raise ValueError(f'batch keys {sorted(batch)}: expected {sorted(expected)}')
  for name, shape in expected.items():
    if tuple(batch[name].shape) != shape:
      raise ValueError(f"batch['{name}'] has shape {tuple(batch[name].shape)}: expected {shape}")


def crop_ops(config: ml_collections.ConfigDict, augment: bool = True):
  """(cut, prepare): cut(key, images, boxes, image_ids, crop_ids, size) -> uint8 crops
  [b, len(crop_ids), size, size, 3]; prepare(key, crops, image_ids, crop_ids) -> encoder
  input. Both run on any shard of the batch (their randomness is keyed by image and crop).
  With augment=False crops are cut unflipped and only normalised."""
  dtype = jnp.dtype(config.model.dtype)
  autoaugment = tuple(config.crops.autoaugment_crops)

  def cut(key, images, boxes, image_ids, crop_ids, size):
    boxes = boxes[:, crop_ids[0]:crop_ids[-1] + 1]
    flips = (flips_of(key, image_ids, crop_ids, autoaugment) if augment else
             jnp.zeros(boxes.shape[:2], bool))
    return cut_crops(images, boxes, size, flips)

  def prepare(key, crops, image_ids, crop_ids):
    if not augment:
      return normalize(crops.astype(jnp.float32) / 255.0).astype(dtype)
    return augment_crops(key, crops, image_ids, crop_ids, autoaugment, num_crops(config), dtype)

  return cut, prepare


def input_side(config: ml_collections.ConfigDict, key, batch) -> list:
  """Every crop group cut and augmented, as the step does it (for cost measurements)."""
  cut, prepare = crop_ops(config)
  ids = batch['image_id']
  return [prepare(key, cut(key, batch['image'], batch['boxes'], ids, crop_ids, size), ids,
                  crop_ids) for crop_ids, size in crop_groups(config)]


def pmean_floats(tree):
  """Average BN statistics over devices so the replicated copy stays replicated."""
  return jax.tree.map(
      lambda x: jax.lax.pmean(x, AXIS) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def per_device_pieces(config: ml_collections.ConfigDict, mesh, augment=True):
  """The step's work on each device's images, shard-mapped over the batch axis:
  (encode_keys, query_loss, enqueue). With augment=False the crops are cut unflipped and
  only normalised."""
  model = method.build_encoder(config)
  m, c = config.method, config.crops
  small_ids = tuple(range(2, num_crops(config)))
  cut, prepare = crop_ops(config, augment)

  def encode_keys(params, batch_stats, batch, permutation, key):
    """Crop 1 through the key encoder with shuffle BN: (k, h) per image, BN statistics."""
    ids = batch['image_id']
    crops = cut(key, batch['image'], batch['boxes'], ids, (1,), c.large_size)[:, 0]
    prep = lambda crops, ids: prepare(key, crops[:, None], ids, (1,))[:, 0]  # noqa: E731
    k, h, batch_stats = method.shuffled_keys(model, params, batch_stats, crops, ids,
                                             permutation, prep)
    return k, h, pmean_floats(batch_stats)

  def query_loss(params, batch_stats, batch, k, queue, queue_h, key, knn_weight):
    """Crop 0 and the small crops through the query encoder, their losses against the keys
    and the queues: (loss, (loss terms, BN statistics))."""
    images, boxes, ids = batch['image'], batch['boxes'], batch['image_id']
    query = prepare(key, cut(key, images, boxes, ids, (0,), c.large_size), ids, (0,))[:, 0]
    small = None
    if small_ids:
      small = prepare(key, cut(key, images, boxes, ids, small_ids, c.small_size), ids,
                      small_ids)
    z, h, batch_stats = method.query_features(model, params, batch_stats, query, small)
    terms = method.losses(z, k, h, queue, queue_h, m.temperature, m.knn_topk, knn_weight)
    return terms['loss'], (terms, pmean_floats(batch_stats))

  def enqueue(queue, queue_h, pointer, k, k_h):
    """The keys over the oldest rows of each device's part of the queues."""
    queue, next_pointer = queues.enqueue(queue, k, pointer)
    if queue_h is not None:
      queue_h, _ = queues.enqueue(queue_h, k_h, pointer)
    return queue, queue_h, next_pointer

  data, rep = P(AXIS), P()
  return (jax.shard_map(encode_keys, mesh=mesh, in_specs=(rep, rep, data, rep, rep),
                        out_specs=(data, data, rep)),
          jax.shard_map(query_loss, mesh=mesh,
                        in_specs=(rep, rep, data, data, data, data, rep, rep),
                        out_specs=(rep, (rep, rep))),
          jax.shard_map(enqueue, mesh=mesh, in_specs=(data, data, rep, data, data),
                        out_specs=(data, data, rep)))


def make_train_step(config: ml_collections.ConfigDict, mesh, steps_per_epoch: int, augment=True):
  """A jitted `(state, batch) -> (state, metrics)`; the input state is donated. The step in
  the order of moco's builder.py: momentum update, keys with shuffle BN, queries and losses,
  the update, the enqueue."""
  config_check.check(config, mesh.devices.size)
  encode_keys, query_loss, enqueue = per_device_pieces(config, mesh, augment)
  optimizer = make_optimizer(config, steps_per_epoch)
  schedule = make_schedule(config, steps_per_epoch)
  m = config.method

  def step(state: TrainState, batch):
    check_batch(config, batch)
    rng, permutation_key, augment_key = jax.random.split(state.rng, 3)
    key_params = method.ema(state.key_params, state.params, m.key_momentum)
    permutation = jax.random.permutation(permutation_key, config.data.global_batch)
    k, k_h, key_batch_stats = encode_keys(key_params, state.key_batch_stats, batch,
                                          permutation, augment_key)
    epoch = state.step // steps_per_epoch
    knn_weight = jnp.where(epoch >= m.knn_warmup_epochs, m.knn_weight, 0.0)
    # The gradient is taken outside shard_map: the replicated parameters get the global mean.
    (_, (terms, batch_stats)), grads = jax.value_and_grad(query_loss, has_aux=True)(
        state.params, state.batch_stats, batch, k, state.queue, state.queue_h, augment_key,
        knn_weight)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    queue, queue_h, pointer = enqueue(state.queue, state.queue_h, state.queue_ptr, k, k_h)
    metrics = {**terms, 'lr': schedule(state.step)}
    return state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats, key_params=key_params, key_batch_stats=key_batch_stats,
        opt_state=opt_state, queue=queue, queue_h=queue_h, queue_ptr=pointer, rng=rng), metrics

  return jax.jit(step, donate_argnums=0)
