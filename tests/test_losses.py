"""The InfoNCE and kNN losses and the accuracies against a float64 NumPy version of SPEC.md §2."""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from revisit_jax import method
from revisit_jax.sharding import AXIS, make_mesh

T, TOPK, WEIGHT = 0.2, 5, 0.4


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference(q, k, h, queue, queue_h):
  """Per query i: InfoNCE over [q.k, q.Q_1..q.Q_K] / T (positive first), kNN loss
  -mean_{j in top-k of h.Q^h} log softmax_j(q.Q / T), ranks of the positive among 1 + K."""
  q, k, h, queue, queue_h = (np.asarray(a, np.float64) for a in (q, k, h, queue, queue_h))
  b, n, d = q.shape
  qf, hf = q.reshape(-1, d), h.reshape(b * n, -1)
  kf = np.repeat(k, n, axis=0)
  logits = np.concatenate([np.sum(qf * kf, 1, keepdims=True), qf @ queue.T], axis=1) / T
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  infonce = -log_p[:, 0].mean()
  negatives = logits[:, 1:]
  log_softmax_neg = negatives - np.log(np.exp(negatives).sum(1, keepdims=True))
  neighbours = np.argsort(-(hf @ queue_h.T), axis=1)[:, :TOPK]
  knn = -np.take_along_axis(log_softmax_neg, neighbours, axis=1).mean(1).mean()
  order = np.argsort(-logits, axis=1)
  acc1 = (order[:, 0] == 0).mean()
  acc5 = (order[:, :5] == 0).any(1).mean()
  return {'infonce': infonce, 'knn': knn, 'loss': infonce + WEIGHT * knn, 'acc1': acc1,
          'acc5': acc5}


def random_case(seed, b=6, n=5, d=16, dh=24, size=48):
  rng = np.random.default_rng(seed)
  q = unit(rng.normal(size=(b, n, d)))
  # Keys near the mean query: the positive wins for some queries and not for others.
  k = unit(q.mean(1) + 0.3 * rng.normal(size=(b, d)))
  h = unit(rng.normal(size=(b, n, dh)))
  queue, queue_h = unit(rng.normal(size=(size, d))), unit(rng.normal(size=(size, dh)))
  return [a.astype(np.float32) for a in (q, k, h, queue, queue_h)]


@functools.cache
def sharded_losses():
  mesh = make_mesh(jax.devices()[:1])
  f = functools.partial(method.losses, temperature=T, topk=TOPK, knn_weight=WEIGHT)
  spec = P(AXIS)
  return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(spec,) * 5, out_specs=P()))


@pytest.mark.parametrize('seed', [0, 1])
def test_losses_match_float64_reference(seed):
  case = random_case(seed)
  got = jax.device_get(sharded_losses()(*case))
  want = reference(*case)
  assert 0 < want['acc1'] < want['acc5'] < 1, 'the random case should rank positives variously'
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, err_msg=name)


def test_moco_has_no_knn_term():
  q, k, _, queue, _ = random_case(2)
  mesh = make_mesh(jax.devices()[:1])
  f = jax.shard_map(lambda q, k, queue: method.losses(q[:, :1], k, queue=queue, temperature=T),
                    mesh=mesh, in_specs=(P(AXIS),) * 3, out_specs=P())
  got = jax.device_get(jax.jit(f)(q, k, queue))
  want = reference(q[:, :1], k, np.zeros((6, 1, 4), np.float32), queue, np.zeros((48, 4)))
  assert 'knn' not in got
  np.testing.assert_allclose(got['loss'], want['infonce'], rtol=1e-5)


def test_loss_gradient_matches_float64_finite_differences():
  """d loss / d q through the gathers and merges equals central differences of the reference."""
  q, k, h, queue, queue_h = random_case(3)
  mesh = make_mesh(jax.devices()[:1])

  def loss(q):
    f = jax.shard_map(
        lambda q, k, h, a, b: method.losses(q, k, h, a, b, T, TOPK, WEIGHT)['loss'],
        mesh=mesh, in_specs=(P(AXIS),) * 5, out_specs=P())
    return f(q, k, h, queue, queue_h)

  got = np.asarray(jax.jit(jax.grad(loss))(q))
  eps, want = 1e-6, np.zeros(q.shape)
  q64 = q.astype(np.float64)
  for index in np.ndindex(q.shape):  # central differences of the float64 reference in q
    up, down = q64.copy(), q64.copy()
    up[index] += eps
    down[index] -= eps
    want[index] = (reference(up, k, h, queue, queue_h)['loss']
                   - reference(down, k, h, queue, queue_h)['loss']) / (2 * eps)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
