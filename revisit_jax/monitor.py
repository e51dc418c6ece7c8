"""The online monitor: weighted kNN top-1 of the query backbone's pooled features.

Train-split features form the bank, test-split features are classified (revisit_jax.knn).
Images: shorter side resized to size * 256/224, centre crop `size`, ImageNet
normalisation, BN in eval mode. Every process computes all features on its first local
device (the monitor is meant for a small labelled set), so all processes agree without
any collective.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from revisit_jax import knn, method
from revisit_jax.augment import normalize
from revisit_jax.imagenet import resize_for_crop


def open_split(spec: str, split: str, data_dir: str = ''):
  """A labelled source: 'demo' or 'tfds:NAME' by split name, else the folder spec/split."""
  from input_pipeline import sources
  if spec == sources.DEMO or spec.startswith(sources.TFDS_PREFIX):
    return sources.open_source(spec, split, data_dir or None, with_labels=True)
  return sources.open_source(os.path.join(spec, split), with_labels=True)


def local_copy(tree):
  """A replicated global pytree as arrays on this process's first local device."""
  return jax.tree.map(lambda x: x.addressable_data(0), tree)


@functools.partial(jax.jit, static_argnums=0)
def _features(model, params, batch_stats, images):
  images = normalize(images.astype(jnp.float32) / 255.0)
  _, h = model.apply({'params': params, 'batch_stats': batch_stats}, images, train=False)
  return method.l2_normalize(h)


def features(config, params, batch_stats, source) -> tuple[np.ndarray, np.ndarray]:
  """(L2-normalised pooled features [N, D], labels [N]) of every image of `source`."""
  from input_pipeline.eval_data import eval_batches
  model = method.build_encoder(config)
  size, batch_size = config.monitor.image_size, config.monitor.batch_size
  params, batch_stats = local_copy(params), local_copy(batch_stats)
  feats, labels = [], []
  for batch in eval_batches(source, batch_size=batch_size, resize=resize_for_crop(size),
                            crop=size, workers=config.data.workers or None):
    n = len(batch['label'])
    images = np.pad(batch['image'], ((0, batch_size - n),) + ((0, 0),) * 3)  # one shape
    feats.append(np.asarray(_features(model, params, batch_stats, images))[:n])
    labels.append(batch['label'])
  return np.concatenate(feats), np.concatenate(labels)


def knn_top1(config, params, batch_stats, splits) -> float:
  """Weighted kNN top-1 (percent) of the test split against the train split.

  `splits`: (train source, test source), e.g. from open_split.
  """
  train_x, train_y = features(config, params, batch_stats, splits[0])
  test_x, test_y = features(config, params, batch_stats, splits[1])
  m = config.monitor
  return 100 * knn.knn_accuracy(train_x, train_y, test_x, test_y, k=m.k,
                                temperature=m.temperature)
