"""Training works: the optimizer is torch's SGD, and the whole step learns a toy task."""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.base import get_base_config, moco_v2
from revisit_jax.sharding import batch_sharding, make_mesh
from revisit_jax.train_state import create_train_state, make_optimizer
from revisit_jax.train_step import make_train_step
from step_batches import canvas_size, tiled_batch

IMAGES, BATCH, SIZE, CROP = 32, 16, 32, 28


def patterns(rng):
  """Smooth random colour patterns, so that two crops of one image look alike (about N(0, 1)
  once normalised by the ImageNet mean and std)."""
  coarse = np.clip(118 + 57 * rng.normal(size=(IMAGES, 4, 4, 3)), 0, 255).astype(np.uint8)
  return np.repeat(np.repeat(coarse, SIZE // 4, axis=1), SIZE // 4, axis=2)


def two_crops(rng, images):
  """uint8 [n, 2, CROP, CROP, 3]: random crops with random horizontal flips."""
  out = np.empty((len(images), 2, CROP, CROP, 3), np.uint8)
  for i, image in enumerate(images):
    for c in range(2):
      y, x = rng.integers(0, SIZE - CROP + 1, size=2)
      crop = image[y:y + CROP, x:x + CROP]
      out[i, c] = crop[:, ::-1] if rng.random() < 0.5 else crop
  return out


def test_infonce_top1_goes_from_chance_to_above_0_9():
  c = moco_v2(get_base_config())
  c.model.arch, c.model.width, c.model.head_hidden_dim, c.model.dtype = 'resnet18', 8, 64, 'float32'
  c.crops.large_size = CROP
  c.data.canvas_size = canvas_size(CROP, 0, 0)  # the two crops side by side, cut as they are
  # The queue holds exactly the other half of the images: no positive among the negatives.
  c.method.queue_size, c.data.global_batch, c.data.bn_groups = BATCH, BATCH, 1
  c.method.key_momentum = 0.9
  c.optim.base_lr, c.optim.epochs = 0.05, 1000
  mesh = make_mesh(jax.devices()[:1])
  state = create_train_state(c, mesh, jax.random.key(0))
  step = make_train_step(c, mesh, steps_per_epoch=IMAGES // BATCH, augment=False)
  rng = np.random.default_rng(0)
  images, top1 = patterns(rng), []
  start = time.time()
  for i in range(200):
    half = np.arange(BATCH) + (i % 2) * BATCH
    batch = {**tiled_batch(two_crops(rng, images[half])), 'image_id': half.astype(np.int32)}
    state, metrics = step(state, jax.device_put(batch, batch_sharding(mesh)))
    top1.append(float(metrics['acc1']))
  print(f'{time.time() - start:.1f} s; top-1 first steps {top1[1:5]}, last {top1[-5:]}')
  # Step 0 scores against the noise queue; from step 1 on the queue holds real keys.
  assert np.mean(top1[1:5]) < 0.5
  assert np.mean(top1[-10:]) > 0.9


def test_optimizer_is_torch_sgd_with_the_per_epoch_cosine():
  """Three steps of make_optimizer against torch.optim.SGD with the original's lr per epoch."""
  torch = pytest.importorskip('torch')
  c = get_base_config()
  c.optim.epochs, c.optim.weight_decay = 3, 0.1
  steps_per_epoch = 2
  rng = np.random.default_rng(0)
  p0 = rng.normal(size=(4, 3)).astype(np.float32)
  grads = rng.normal(size=(6, 4, 3)).astype(np.float32)

  optimizer = make_optimizer(c, steps_per_epoch)
  params, state = {'w': jnp.asarray(p0)}, optimizer.init({'w': jnp.asarray(p0)})
  for g in grads:
    updates, state = optimizer.update({'w': jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)

  w = torch.nn.Parameter(torch.tensor(p0))
  sgd = torch.optim.SGD([w], lr=c.optim.base_lr, momentum=0.9, weight_decay=0.1)
  for i, g in enumerate(grads):
    epoch = i // steps_per_epoch  # the original's adjust_learning_rate, once per epoch
    for group in sgd.param_groups:
      group['lr'] = c.optim.base_lr * 0.5 * (1 + math.cos(math.pi * epoch / c.optim.epochs))
    w.grad = torch.tensor(g)
    sgd.step()
  np.testing.assert_allclose(params['w'], w.detach().numpy(), rtol=1e-5, atol=1e-6)
