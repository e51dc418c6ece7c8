"""The per-crop random draws, the two augmentation chains, and `augment_crops`.

Everything random about a crop comes from the key fold_in(fold_in(key, image_id), crop_id),
so a crop's result does not depend on batch order or on how the batch is split over devices.
The horizontal flip is drawn here but applied when the crop is cut (crop.cut_crops reverses
its column taps): every later op commutes with it (MoCo v2) or comes after it (AutoAugment).
"""

import jax
import jax.numpy as jnp
import numpy as np

from revisit_jax.augment import blur, color
from revisit_jax.augment.autoaugment import apply_policy, policy_draws


def moco_v2_draws(key):
  """MoCo v2's draws: jitter (p 0.8; a jitter not applied is a plan of identity steps),
  grayscale (p 0.2), blur (p 0.5, sigma ~ U(0.1, 2)), horizontal flip (p 0.5)."""
  k_jitter, k_jitter_on, k_gray, k_blur_on, k_sigma, k_flip = jax.random.split(key, 6)
  factors, order = color.jitter_params(k_jitter)
  plan = jnp.where(jax.random.bernoulli(k_jitter_on, 0.8), color.jitter_plan(factors, order),
                   jnp.asarray(color.IDENTITY_STEP))
  return {'plan': plan, 'hue': factors[color.HUE], 'gray': jax.random.bernoulli(k_gray, 0.2),
          'blur': jax.random.bernoulli(k_blur_on, 0.5),
          'sigma': jax.random.uniform(k_sigma, (), minval=0.1, maxval=blur.SIGMA_MAX),
          'flip': jax.random.bernoulli(k_flip, 0.5)}


def crop_draws(key, autoaugment: bool):
  """All draws of one crop. An AutoAugment crop takes, with p 0.5, the MoCo v2 chain, else a
  flip (p 0.5) and the ImageNet policy ('autoaugment': which one it took)."""
  if not autoaugment:
    return {**moco_v2_draws(key), 'autoaugment': jnp.bool_(False),
            'ops': jnp.zeros(2, jnp.int32), 'magnitudes': jnp.zeros(2)}
  k_choice, k_moco, k_flip, k_aa = jax.random.split(key, 4)
  draws = moco_v2_draws(k_moco)
  use_aa = ~jax.random.bernoulli(k_choice, 0.5)
  ops, magnitudes = policy_draws(k_aa)
  return {**draws, 'autoaugment': use_aa, 'ops': ops, 'magnitudes': magnitudes,
          'flip': jnp.where(use_aa, jax.random.bernoulli(k_flip, 0.5), draws['flip'])}


def draws_of(key, image_ids, crop_ids, autoaugment_crops):
  """crop_draws of every (image, crop): arrays [N, C, ...]; crop_ids and autoaugment_crops
  are static."""
  per_crop = []
  for crop_id in crop_ids:
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i), crop_id))(image_ids)
    per_crop.append(jax.vmap(lambda k: crop_draws(k, crop_id in autoaugment_crops))(keys))
  return jax.tree.map(lambda *xs: jnp.stack(xs, axis=1), *per_crop)


def moco_v2_colour(crop, draws):
  """The jitter of one uint8 crop [H, W, 3]: float32 [H, 3, W] (the blur's layout)."""
  channels = color.planes(crop.astype(jnp.float32) * (1.0 / 255.0))
  plan, hue = draws['plan'], draws['hue']
  return jnp.stack(color.jitter(channels, plan, hue, color.contrast_mean(channels, plan, hue)),
                   axis=1)


def moco_v2(crops, draws):
  """The MoCo v2 chain but the flip on uint8 crops [N, H, W, 3]: float32 [N, H, W, 3] in [0, 1].

  Grayscale comes after the blur, not before: both are linear (a channel mix, a filter per
  channel), so the order does not change the result, and XLA's CPU backend compiles a jitter
  followed by a grayscale into code that recomputes the jitter for every use."""
  h, w = crops.shape[1], crops.shape[2]
  colour = jax.vmap(moco_v2_colour)(crops, draws)
  blurred = blur.blur_rows_planar(colour, blur.matrices(draws['sigma'], draws['blur'], h),
                                  blur.matrices(draws['sigma'], draws['blur'], w))
  channels = tuple(blurred[:, :, c] for c in range(3))
  grey = draws['gray'][:, None, None]
  return jnp.stack([jnp.where(grey, color.luma(channels), c) for c in channels], axis=-1)


def moco_v2_crop(key, crop):
  """The whole MoCo v2 chain, flip included, on one uint8 crop [H, W, 3] -> normalised float32.

  The flip comes last (the chain commutes with it): a flip of the input is fused by XLA's CPU
  backend into the blur's products, which then recompute the jitter for every product term
  (vmapped over 200 crops of 32 x 32: 30 s instead of 15 ms)."""
  draws = jax.tree.map(lambda x: x[None], moco_v2_draws(key))
  out = color.normalize(moco_v2(crop[None], draws)[0])
  return jnp.where(draws['flip'][0], out[:, ::-1], out)


def _check(crops, image_ids, crop_ids, autoaugment_crops, num_crop_ids):
  if crops.ndim != 5 or crops.shape[-1] != 3 or crops.dtype != jnp.uint8:
    raise ValueError(f'augment_crops: crops must be uint8 [N, C, H, W, 3], got '
                     f'{crops.dtype}{list(crops.shape)}')
  if image_ids.shape != crops.shape[:1]:
    raise ValueError(f'augment_crops: image_ids shape {tuple(image_ids.shape)} does not match '
                     f'the {crops.shape[0]} images of crops')
  if len(crop_ids) != crops.shape[1]:
    raise ValueError(f'augment_crops: crop_ids {crop_ids} name {len(crop_ids)} crops, '
                     f'crops has {crops.shape[1]}')
  for name, ids in (('crop_ids', crop_ids), ('autoaugment_crops', autoaugment_crops)):
    bad = [i for i in ids if not isinstance(i, (int, np.integer)) or not 0 <= i < num_crop_ids]
    if bad:
      raise ValueError(f'augment_crops: {name} has {bad}, not crop ids 0..{num_crop_ids - 1}')


def augment_crops(key, crops, image_ids, crop_ids, autoaugment_crops, num_crop_ids,
                  dtype=jnp.bfloat16):
  """uint8 crops [N, C, H, W, 3], already cut and flipped -> normalised `dtype` [N, C, H, W, 3].

  crop_ids (static): the global crop id of each of the C crops (0 .. num_crop_ids - 1);
  autoaugment_crops (static): crop ids that take the AutoAugment alternative, the others
  get MoCo v2. image_ids: int [N], a dataset-wide id per image (the source of its randomness).
  """
  _check(crops, image_ids, crop_ids, autoaugment_crops, num_crop_ids)
  n, c = crops.shape[:2]
  draws = draws_of(key, image_ids, crop_ids, autoaugment_crops)
  flat = lambda x: x.reshape(n * c, *x.shape[2:])  # noqa: E731
  moco = moco_v2(flat(crops), jax.tree.map(flat, draws)).reshape(crops.shape)
  cols = [k for k, crop_id in enumerate(crop_ids) if crop_id in autoaugment_crops]
  if cols:
    pick = lambda x: x[:, np.asarray(cols)].reshape(n * len(cols), *x.shape[2:])  # noqa: E731
    policy = jax.vmap(apply_policy)(pick(crops), pick(draws['ops']), pick(draws['magnitudes']))
    policy = policy.reshape(n, len(cols), *crops.shape[2:])
  out = []
  for k in range(c):
    x = moco[:, k]
    if k in cols:
      aa = policy[:, cols.index(k)].astype(jnp.float32) * (1.0 / 255.0)
      x = jnp.where(draws['autoaugment'][:, k, None, None, None], aa, x)
    out.append(color.normalize(x).astype(dtype))
  return jnp.stack(out, axis=1)


def flips_of(key, image_ids, crop_ids, autoaugment_crops):
  """bool [N, C]: which crops are mirrored (applied by crop.cut_crops)."""
  return draws_of(key, image_ids, crop_ids, autoaugment_crops)['flip']
