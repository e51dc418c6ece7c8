"""The method, per device: what the original's builder.py does.

Encoders, the EMA of the key encoder, shuffle BN, the InfoNCE and kNN losses.
Everything here runs inside `shard_map` over the 'data' axis (a single device is
the case n = 1); the collectives over the split queues are in queues.py.
"""

import jax
import jax.numpy as jnp
import ml_collections

from revisit_jax import queues
from revisit_jax.models import Encoder, ProjectionHead, resnet
from revisit_jax.sharding import AXIS


def build_encoder(config: ml_collections.ConfigDict) -> Encoder:
  """ResNet + MLP head in the config's compute dtype, BN split into config.data.bn_groups."""
  dtype = jnp.dtype(config.model.dtype)
  backbone = resnet(config.model.arch, dtype=dtype, bn_groups=config.data.bn_groups,
                    width=config.model.width, stem=config.model.stem)
  head = ProjectionHead(config.model.head_hidden_dim, config.model.embed_dim, dtype)
  return Encoder(backbone=backbone, head=head)


def ema(key_params, params, momentum):
  """theta_k <- m theta_k + (1 - m) theta_q, over parameters only."""
  return jax.tree.map(lambda k, q: momentum * k + (1 - momentum) * q, key_params, params)


def l2_normalize(x):
  """torch.nn.functional.normalize: x / max(||x||, 1e-12)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def encode(model, params, batch_stats, images):
  """Train-mode forward: L2-normalised (z, h) in float32 and the updated BN statistics."""
  (z, h), new = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                            train=True, mutable=['batch_stats'])
  return l2_normalize(z), l2_normalize(h), new['batch_stats']


def query_features(model, params, batch_stats, large, small=None):
  """(z, h) [b, 1 + n_small, dim] of the query crops, and the BN statistics after both passes.

  large: [b, S, S, 3] (crop 0); small: [b, n_small, s, s, 3] or None. The small crops are a
  second forward pass, flattened image by image, so BN group g holds the small crops of the
  images that formed group g in the large pass.
  """
  z, h, batch_stats = encode(model, params, batch_stats, large)
  zs, hs = [z[:, None]], [h[:, None]]
  if small is not None:
    b, n = small.shape[:2]
    z, h, batch_stats = encode(model, params, batch_stats, small.reshape(b * n, *small.shape[2:]))
    zs.append(z.reshape(b, n, -1))
    hs.append(h.reshape(b, n, -1))
  return jnp.concatenate(zs, axis=1), jnp.concatenate(hs, axis=1), batch_stats


def shuffled_keys(model, params, batch_stats, crops, image_ids, permutation, prepare):
  """Shuffle BN: (k, h) of this device's key crops, encoded within a shuffled batch.

  `permutation` (the same on every device) reorders the global batch; this device encodes
  its slice of the reordered batch, so its BN statistics mix images of all devices, then
  the outputs are put back in the original order. `prepare(crops, ids)` turns uint8 crops
  into encoder input (augmentation keyed by image id, so it does not matter where it runs).
  """
  b = crops.shape[0]
  mine = queues.own_rows(permutation, b)
  images = prepare(queues.gather(crops)[mine], queues.gather(image_ids)[mine])
  z, h, batch_stats = encode(model, params, batch_stats, images)
  back = queues.own_rows(jnp.argsort(permutation), b)
  return queues.gather(z)[back], queues.gather(h)[back], batch_stats


def global_mean(x):
  """Mean over every device's entries of x."""
  total = jax.lax.psum(jnp.sum(x, dtype=jnp.float32), AXIS)
  return total / (x.size * jax.lax.axis_size(AXIS))


def losses(q, k, h=None, queue=None, queue_h=None, temperature=0.2, topk=20, knn_weight=0.0):
  """The loss of this device's queries against the whole queue, as global means over queries.

  q: [b, n_queries, 128] and h: [b, n_queries, D] of every query crop; k: [b, 128] the key of
  each image; queue / queue_h: this device's rows (queue_h None: no kNN loss, as MoCo v2).
  Returns {'loss', 'infonce', 'acc1', 'acc5'} and 'knn' with queue_h;
  loss = infonce + knn_weight * knn.
  """
  b, n_queries, dim = q.shape
  k = jax.lax.stop_gradient(k)
  positive = jnp.einsum('bqd,bd->bq', q, k, precision=jax.lax.Precision.HIGHEST)
  positive = positive.reshape(-1) / temperature
  logits = queues.logits(queues.gather(q.reshape(-1, dim)), queue, temperature)
  negative_lse = queues.logsumexp(logits)
  rank = queues.count_above(logits, queues.gather(jax.lax.stop_gradient(positive)))
  terms = {'infonce': jnp.logaddexp(positive, negative_lse) - positive,
           'acc1': rank < 1, 'acc5': rank < 5}
  if queue_h is not None:
    neighbours = queues.top_k(queues.gather(h.reshape(b * n_queries, -1)), queue_h, topk)
    terms['knn'] = negative_lse - queues.mean_at(logits, neighbours)
  terms = {name: global_mean(value) for name, value in terms.items()}
  terms['loss'] = terms['infonce'] + knn_weight * terms['knn'] if 'knn' in terms else terms['infonce']
  return terms
