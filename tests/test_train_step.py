"""One 'ours' training step on one device against the step rebuilt by hand from SPEC.md §2:
crop 0 and the small crops are the queries, crop 1 the key from the key encoder after its
momentum update, the losses use the queues as they were before the step, the keys are
enqueued after it, and SGD is torch's (weight decay added to the gradient, momentum 0.9).

The encoders' forward pass is the code's own (tested against torchvision in test_resnet.py);
what is checked here is the wiring around it. One BN group, so the key shuffle cannot matter.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs.base import get_base_config
from revisit_jax import method
from revisit_jax.sharding import make_mesh
from revisit_jax.train_state import create_train_state
from revisit_jax.train_step import make_train_step
from revisit_jax.augment import normalize
from step_batches import canvas_size, tiled_batch
from test_losses import TOPK, T, WEIGHT, reference

B, STEPS_PER_EPOCH, EPOCHS, STEP = 16, 3, 4, 4  # step 4 is in epoch 1


def tiny_config():
  c = get_base_config()
  c.model.arch, c.model.width, c.model.head_hidden_dim, c.model.dtype = 'resnet18', 8, 32, 'float32'
  c.crops.large_size, c.crops.small_size = 32, 16
  c.data.canvas_size = canvas_size(32, 16, c.crops.num_small)
  c.method.queue_size, c.method.knn_topk = 64, TOPK
  c.method.temperature, c.method.knn_weight = T, WEIGHT
  c.data.global_batch, c.data.bn_groups = B, 1
  c.optim.epochs = EPOCHS
  return c


def loss_by_hand(z, h, k, queue, queue_h):
  """SPEC.md §2 in jnp (differentiable in z): InfoNCE + 0.4 x kNN loss, mean over queries."""
  zf, hf = z.reshape(-1, z.shape[-1]), h.reshape(-1, h.shape[-1])
  kf = jnp.repeat(k, z.shape[1], axis=0)
  positive = jnp.sum(zf * kf, 1) / T
  negatives = zf @ queue.T / T
  lse = jax.nn.logsumexp(negatives, 1)
  infonce = jnp.mean(jnp.logaddexp(positive, lse) - positive)
  neighbours = jnp.argsort(-(jax.lax.stop_gradient(hf) @ queue_h.T), axis=1)[:, :TOPK]
  knn = jnp.mean(lse - jnp.take_along_axis(negatives, neighbours, 1).mean(1))
  return infonce + WEIGHT * knn


def test_one_step_equals_the_step_rebuilt_by_hand():
  config, mesh = tiny_config(), make_mesh(jax.devices()[:1])
  state = create_train_state(config, mesh, jax.random.key(0))
  # Query and key encoders must differ, or the order of the momentum update would not show;
  # step STEP of a run (the optimizer's schedule counts with the state, as after a resume).
  state = state.replace(params=jax.tree.map(lambda p: p * 1.01 + 1e-3, state.params),
                        step=jnp.int32(STEP),
                        opt_state=optax.tree_utils.tree_set(state.opt_state, count=jnp.int32(STEP)))
  old = jax.device_get(state.replace(rng=jnp.zeros(())))  # the key is not needed below
  rng = np.random.default_rng(0)
  # Pixels 64..191: normalised inputs of about unit scale, as the float tolerances assume.
  large = rng.integers(64, 192, (B, 2, 32, 32, 3), np.uint8)
  small = rng.integers(64, 192, (B, 4, 16, 16, 3), np.uint8)
  step = make_train_step(config, mesh, STEPS_PER_EPOCH, augment=False)
  new, metrics = jax.device_get(step(state, tiled_batch(large, small)))
  # Without augmentation the crops are cut (here: copied) and normalised.
  batch = {name: normalize(jnp.asarray(x, jnp.float32) / 255.0)
           for name, x in (('large', large), ('small', small))}

  model = method.build_encoder(config)
  # Compiled whole (op by op, the forward and backward passes below took ~80 s on 2 cores).
  encode = jax.jit(lambda *args: method.encode(model, *args))
  query_features = jax.jit(lambda *args: method.query_features(model, *args))
  key_params = jax.tree.map(lambda k, q: 0.995 * k + 0.005 * q, old.key_params, old.params)
  k, k_h, _ = encode(key_params, old.key_batch_stats, batch['large'][:, 1])
  z, h, _ = query_features(old.params, old.batch_stats, batch['large'][:, 0], batch['small'])
  expected = reference(z, k, h, old.queue, old.queue_h)
  for name in ('loss', 'infonce', 'knn', 'acc1', 'acc5'):
    np.testing.assert_allclose(metrics[name], expected[name], rtol=1e-4, atol=1e-6, err_msg=name)

  # The key encoder moved towards the query encoder before the keys were computed.
  for got, want in zip(jax.tree.leaves(new.key_params), jax.tree.leaves(key_params)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  # The queues: this step's keys over the oldest rows (0..B-1), the rest untouched.
  np.testing.assert_allclose(new.queue[:B], k, atol=2e-5)
  np.testing.assert_allclose(new.queue_h[:B], k_h, atol=2e-5)
  np.testing.assert_array_equal(new.queue[B:], old.queue[B:])
  np.testing.assert_array_equal(new.queue_h[B:], old.queue_h[B:])
  assert int(new.queue_ptr) == B and int(new.step) == STEP + 1

  # torch SGD from a zero momentum buffer: p - lr (g + wd p), lr of epoch 1 of the cosine.
  def loss_of(params):
    z, h, _ = method.query_features(model, params, old.batch_stats, batch['large'][:, 0],
                                    batch['small'])
    return loss_by_hand(z, h, k, old.queue, old.queue_h)

  grads = jax.jit(jax.grad(loss_of))(old.params)
  lr = 0.3 * 0.5 * (1 + math.cos(math.pi * (STEP // STEPS_PER_EPOCH) / EPOCHS))
  np.testing.assert_allclose(metrics['lr'], lr, rtol=1e-6)
  for got, p, g in zip(jax.tree.leaves(new.params), jax.tree.leaves(old.params),
                       jax.tree.leaves(grads)):
    want = p - lr * (g + 1e-4 * p)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
