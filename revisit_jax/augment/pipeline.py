"""Per-crop augmentation chains and `augment_crops`, the jitted photometric stage.

The CPU input pipeline emits uint8 crops; everything random after cropping happens here,
per (image, crop) from the key fold_in(fold_in(key, image_id), crop_id), so a crop's result
does not depend on batch order or on how the batch is split over devices.
"""

import jax
import jax.numpy as jnp
import numpy as np

from revisit_jax.augment.autoaugment import autoaugment_image
from revisit_jax.augment.blur import gaussian_blur
from revisit_jax.augment.color import color_jitter, normalize, to_grayscale

NUM_CROP_IDS = 6  # crops 0-5: large query, key, four small queries


def _maybe_hflip(key, img):
  """Flip [H, W, 3] with p 0.5 as one gather (a select of img and img[:, ::-1] would make
  XLA compute img twice)."""
  w = img.shape[1]
  cols = jnp.arange(w)
  return img[:, jnp.where(jax.random.bernoulli(key, 0.5), w - 1 - cols, cols)]


def moco_v2_crop(key, crop):
  """MoCo v2 chain on one uint8 crop [H, W, 3] -> normalised float32 [H, W, 3]: jitter (p 0.8),
  grayscale (p 0.2), blur (p 0.5, sigma ~ U(0.1, 2)), horizontal flip (p 0.5). Colour ops
  work in float [0, 1] without rounding to uint8 in between (see color.py)."""
  k_jitter, k_jitter_on, k_gray, k_blur_on, k_sigma, k_flip = jax.random.split(key, 6)
  x = crop.astype(jnp.float32) / 255.0
  x = jnp.where(jax.random.bernoulli(k_jitter_on, 0.8), color_jitter(k_jitter, x), x)
  x = jnp.where(jax.random.bernoulli(k_gray, 0.2), to_grayscale(x), x)
  sigma = jax.random.uniform(k_sigma, (), minval=0.1, maxval=2.0)
  x = jnp.where(jax.random.bernoulli(k_blur_on, 0.5), gaussian_blur(x, sigma), x)
  x = _maybe_hflip(k_flip, x)
  return normalize(x)


def autoaugment_crop(key, crop):
  """With p 0.5 the MoCo v2 chain, else flip (p 0.5) + AutoAugment ImageNet + normalise."""
  k_choice, k_moco, k_flip, k_aa = jax.random.split(key, 4)
  aa = autoaugment_image(k_aa, _maybe_hflip(k_flip, crop))
  aa = normalize(aa.astype(jnp.float32) / 255.0)
  return jnp.where(jax.random.bernoulli(k_choice, 0.5), moco_v2_crop(k_moco, crop), aa)


def _check(crops, image_ids, crop_ids, autoaugment_crops):
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
    bad = [i for i in ids if not isinstance(i, (int, np.integer)) or not 0 <= i < NUM_CROP_IDS]
    if bad:
      raise ValueError(f'augment_crops: {name} has {bad}, not crop ids 0..{NUM_CROP_IDS - 1}')


def augment_crops(key, crops, image_ids, crop_ids, autoaugment_crops, dtype=jnp.bfloat16):
  """uint8 crops [N, C, H, W, 3] -> normalised `dtype` [N, C, H, W, 3].

  crop_ids (static): the global crop id (0-5) of each of the C crops. autoaugment_crops
  (static): crop ids that take the AutoAugment alternative; the others get MoCo v2.
  image_ids: int [N], a dataset-wide id per image (the source of its randomness).
  """
  _check(crops, image_ids, crop_ids, autoaugment_crops)
  out = [None] * len(crop_ids)
  # One vmapped chain per kind of crop (not per crop) keeps the compiled program small.
  for chain, uses_aa in ((moco_v2_crop, False), (autoaugment_crop, True)):
    cols = [c for c, crop_id in enumerate(crop_ids) if (crop_id in autoaugment_crops) == uses_aa]
    if not cols:
      continue
    cids = jnp.asarray([crop_ids[c] for c in cols], jnp.int32)
    keys = jax.vmap(lambda i: jax.vmap(
        lambda cid: jax.random.fold_in(jax.random.fold_in(key, i), cid))(cids))(image_ids)
    augmented = jax.vmap(jax.vmap(chain))(keys, crops[:, np.asarray(cols)]).astype(dtype)
    for j, c in enumerate(cols):
      out[c] = augmented[:, j]
  return jnp.stack(out, axis=1)
