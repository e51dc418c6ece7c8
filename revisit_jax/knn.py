"""Weighted kNN classification on frozen features, as in the InstDisc / MoCo monitors.

Each test feature votes with its k most cosine-similar training features, each weighted by
exp(similarity / temperature); the class with the largest summed weight wins. Test features
go through in fixed-size batches, so memory stays at batch_size x num_train similarities.
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from revisit_jax.method import l2_normalize


@functools.partial(jax.jit, static_argnames=('ks', 'num_classes'))
def _predict_batch(queries, bank, bank_labels, temperature, ks, num_classes):
  """Predicted classes [len(ks), Q] of L2-normalised queries against the normalised bank."""
  sims = jnp.dot(queries, bank.T, precision=jax.lax.Precision.HIGHEST)
  top_sims, top_ids = jax.lax.top_k(sims, max(ks))
  weights = jnp.exp(top_sims / temperature)
  votes = bank_labels[top_ids]
  rows = jnp.arange(queries.shape[0])[:, None]
  preds = []
  for k in ks:
    scores = jnp.zeros((queries.shape[0], num_classes), jnp.float32)
    scores = scores.at[rows, votes[:, :k]].add(weights[:, :k])
    preds.append(jnp.argmax(scores, axis=1))
  return jnp.stack(preds)


def knn_predict(train_features, train_labels, test_features, *, ks: Sequence[int] = (200,),
                temperature: float = 0.07, num_classes: int | None = None,
                batch_size: int = 256) -> np.ndarray:
  """Predicted labels [len(ks), num_test] for each k in `ks` (one neighbour search serves all)."""
  train_labels = np.asarray(train_labels)
  ks = tuple(int(k) for k in ks)
  num_classes = int(train_labels.max()) + 1 if num_classes is None else num_classes
  if len(train_features) != len(train_labels):
    raise ValueError(f'{len(train_features)} train features but {len(train_labels)} labels')
  if not ks or min(ks) < 1 or max(ks) > len(train_labels):
    raise ValueError(f'k={ks} must lie in 1..{len(train_labels)} (the number of train features)')
  if train_labels.min() < 0 or train_labels.max() >= num_classes:
    raise ValueError(f'train labels must lie in 0..{num_classes - 1}')
  bank = l2_normalize(jnp.asarray(train_features, jnp.float32))
  bank_labels = jnp.asarray(train_labels, jnp.int32)
  queries = l2_normalize(jnp.asarray(test_features, jnp.float32))
  n = queries.shape[0]
  batch_size = min(batch_size, n)
  preds = []
  for s in range(0, n, batch_size):
    batch = queries[s:s + batch_size]
    pad = batch_size - batch.shape[0]  # pad the last batch: one compiled shape
    batch = jnp.pad(batch, ((0, pad), (0, 0)))
    preds.append(np.asarray(_predict_batch(batch, bank, bank_labels, temperature, ks,
                                           num_classes))[:, :batch_size - pad])
  return np.concatenate(preds, axis=1)


def knn_accuracy(train_features, train_labels, test_features, test_labels, *, k: int = 200,
                 temperature: float = 0.07, num_classes: int | None = None,
                 batch_size: int = 256) -> float:
  """Top-1 accuracy (fraction) of the weighted kNN classifier with k neighbours."""
  pred = knn_predict(train_features, train_labels, test_features, ks=(k,),
                     temperature=temperature, num_classes=num_classes, batch_size=batch_size)[0]
  return float(np.mean(pred == np.asarray(test_labels)))
