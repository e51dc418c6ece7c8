"""revisit_jax.augment against torchvision's functional ops (the original's semantics), PIL,
and float64 NumPy references; plus the randomness contract of augment_crops."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from jax.sharding import Mesh, PartitionSpec as P
from PIL import Image, ImageFilter
from sklearn.datasets import load_sample_image
from torchvision.transforms import autoaugment as tv_autoaugment

from revisit_jax.augment import autoaugment as aa
from revisit_jax.augment import blur, color
from revisit_jax.augment.crop import cut_crops
from revisit_jax.augment.pipeline import augment_crops, flips_of, moco_v2_crop

LUMA_TOL = 1.1e-4  # our luma uses 0.299 for red (PIL, ITU-R 601), torchvision 0.2989


@pytest.fixture(scope='module')
def photo():
  """A natural 32x48 uint8 photo (scikit-learn's sample, shipped with the package)."""
  img = Image.fromarray(load_sample_image('china.jpg')).resize((48, 32), Image.BILINEAR)
  return np.asarray(img)


@pytest.fixture(scope='module')
def flower():
  img = Image.fromarray(load_sample_image('flower.jpg')).resize((48, 32), Image.BILINEAR)
  return np.asarray(img)


def to_torch(img):
  """HWC numpy -> CHW torch tensor."""
  return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()


def from_torch(t):
  return t.permute(1, 2, 0).numpy()


def luma64(img):
  return img[..., 0:1] * 0.299 + img[..., 1:2] * 0.587 + img[..., 2:3] * 0.114


# ---- colour ops on float [0, 1] ----

@pytest.mark.parametrize('factor', [0.0, 0.6, 1.0, 1.4])
def test_float_colour_ops_match_torchvision(photo, factor):
  x = photo.astype(np.float32) / 255
  t = to_torch(x)
  np.testing.assert_allclose(color.adjust_brightness(jnp.asarray(x), factor),
                             from_torch(TF.adjust_brightness(t, factor)), atol=1e-6)
  np.testing.assert_allclose(color.adjust_contrast(jnp.asarray(x), factor),
                             from_torch(TF.adjust_contrast(t, factor)), atol=LUMA_TOL)
  np.testing.assert_allclose(color.adjust_saturation(jnp.asarray(x), factor),
                             from_torch(TF.adjust_saturation(t, factor)), atol=LUMA_TOL)
  # Exact formulas in float64 (ITU-R 601 luma).
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(color.adjust_contrast(jnp.asarray(x), factor),
                             np.clip(factor * x64 + (1 - factor) * luma64(x64).mean(), 0, 1),
                             atol=2e-6)
  np.testing.assert_allclose(color.adjust_saturation(jnp.asarray(x), factor),
                             np.clip(factor * x64 + (1 - factor) * luma64(x64), 0, 1), atol=2e-6)


def test_grayscale_matches_torchvision_and_pil(photo):
  x = photo.astype(np.float32) / 255
  ours = np.asarray(color.to_grayscale(jnp.asarray(x)))
  assert ours.shape == x.shape
  np.testing.assert_allclose(ours, from_torch(TF.rgb_to_grayscale(to_torch(x), 3)),
                             atol=LUMA_TOL)
  np.testing.assert_allclose(ours, np.broadcast_to(luma64(x.astype(np.float64)), x.shape),
                             atol=1e-6)
  pil = np.asarray(TF.rgb_to_grayscale(Image.fromarray(photo), 3))
  assert np.abs(np.round(ours * 255) - pil).max() <= 1


@pytest.mark.parametrize('hue', [-0.5, -0.1, 0.03, 0.1, 0.5])
def test_hue_matches_torchvision(photo, hue):
  x = photo.astype(np.float32) / 255
  np.testing.assert_allclose(color.adjust_hue(jnp.asarray(x), hue),
                             from_torch(TF.adjust_hue(to_torch(x), hue)), atol=1e-5)


def test_hue_handles_grey_and_primary_pixels():
  # max == min pixels (hue undefined) and each sextant's boundary colour.
  x = np.array([[[0, 0, 0], [1, 1, 1], [.5, .5, .5], [1, 0, 0], [1, 1, 0], [0, 1, 0]],
                [[0, 1, 1], [0, 0, 1], [1, 0, 1], [.2, .4, .6], [.9, .1, .3], [.3, .3, .9]]],
               np.float32)
  for hue in (-0.3, 0.2):
    np.testing.assert_allclose(color.adjust_hue(jnp.asarray(x), hue),
                               from_torch(TF.adjust_hue(to_torch(x), hue)), atol=1e-6)


@pytest.mark.parametrize('factor', [0.6, 1.4])
def test_float_colour_ops_near_pil_path(photo, factor):
  """The original ran on PIL images, rounding to uint8 after each op: within a grey level."""
  x = jnp.asarray(photo, jnp.float32) / 255
  pil = Image.fromarray(photo)
  for ours, theirs in ((color.adjust_brightness(x, factor), TF.adjust_brightness(pil, factor)),
                       (color.adjust_contrast(x, factor), TF.adjust_contrast(pil, factor)),
                       (color.adjust_saturation(x, factor), TF.adjust_saturation(pil, factor))):
    assert np.abs(np.round(np.asarray(ours) * 255) - np.asarray(theirs)).max() <= 1


def test_hue_near_pil_path(photo):
  """PIL rotates hue in uint8 HSV (hue steps of 1/255): within 3 grey levels."""
  x = jnp.asarray(photo, jnp.float32) / 255
  for hue in (-0.1, 0.1):
    theirs = np.asarray(TF.adjust_hue(Image.fromarray(photo), hue)).astype(int)
    assert np.abs(np.round(np.asarray(color.adjust_hue(x, hue)) * 255) - theirs).max() <= 3


def test_normalize():
  x = np.random.default_rng(0).random((4, 5, 3), np.float32)
  expected = TF.normalize(to_torch(x), color.IMAGENET_MEAN, color.IMAGENET_STD)
  np.testing.assert_allclose(color.normalize(jnp.asarray(x)), from_torch(expected), atol=1e-6)


# ---- Gaussian blur ----

def torchvision_blur_edge_extended(x, sigma):
  """torchvision's Gaussian kernel on the image extended by repeating its edges (PIL's
  extension): pad `radius` replicated pixels, blur, cut the padding off again."""
  r = blur.kernel_radius()
  padded = torch.nn.functional.pad(to_torch(x)[None], (r, r, r, r), mode='replicate')[0]
  return from_torch(TF.gaussian_blur(padded, [2 * r + 1] * 2, [sigma, sigma])[:, r:-r, r:-r])


@pytest.mark.parametrize('sigma', [0.1, 0.7, 1.3, 2.0])
def test_blur_matches_torchvision_kernel_with_edges_extended(photo, sigma):
  x = photo.astype(np.float32) / 255
  np.testing.assert_allclose(blur.gaussian_blur(jnp.asarray(x), sigma),
                             torchvision_blur_edge_extended(x, sigma), atol=2e-6)


def test_blur_close_to_pil_radius(photo):
  """PIL's GaussianBlur(radius=sigma) (box approximation, edge extension), the original's:
  within a few grey levels everywhere, the border included (reflecting, as torchvision
  does, is 10-11 levels off there), under one on average."""
  for sigma in (0.7, 1.3, 2.0):
    ours = np.round(np.asarray(blur.gaussian_blur(jnp.asarray(photo, jnp.float32) / 255,
                                                  sigma)) * 255)
    theirs = np.asarray(Image.fromarray(photo).filter(ImageFilter.GaussianBlur(sigma)))
    diff = np.abs(ours - theirs)
    assert diff.max() <= 8 and diff.mean() < 0.7, (sigma, diff.max(), diff.mean())


def test_blur_of_an_image_smaller_than_the_kernel(photo):
  x = photo[:5, :4].astype(np.float32) / 255
  np.testing.assert_allclose(blur.gaussian_blur(jnp.asarray(x), 1.5),
                             torchvision_blur_edge_extended(x, 1.5), atol=2e-6)


# ---- AutoAugment ops on uint8 ----

def assert_same_uint8(ours, theirs, max_diff=0, max_fraction=0.0):
  ours = np.asarray(ours)
  assert ours.dtype == np.uint8
  diff = np.abs(ours.astype(int) - from_torch(theirs).astype(int))
  assert diff.max() <= max_diff or (diff > 0).mean() <= max_fraction, (diff.max(),
                                                                      (diff > 0).mean())


@pytest.mark.parametrize('bits', [1, 4, 5, 6, 7, 8])
def test_posterize_exact(photo, bits):
  assert_same_uint8(aa.posterize(jnp.asarray(photo), bits), TF.posterize(to_torch(photo), bits))


@pytest.mark.parametrize('threshold', [0.0, 28.33, 128.0, 128.5, 226.67, 255.0])
def test_solarize_exact(photo, threshold):
  assert_same_uint8(aa.solarize(jnp.asarray(photo), threshold),
                    TF.solarize(to_torch(photo), threshold))


def test_solarize_256_is_identity(photo):
  np.testing.assert_array_equal(aa.solarize(jnp.asarray(photo), 256.0), photo)


def test_invert_exact(photo):
  assert_same_uint8(aa.invert(jnp.asarray(photo)), TF.invert(to_torch(photo)))


def special_images(photo):
  """Natural, uniform noise, one constant channel, a two-level image, all-constant."""
  rng = np.random.default_rng(1)
  noise = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  const_channel = photo.copy()
  const_channel[..., 1] = 77
  two_level = np.where(rng.random((32, 32, 3)) < 0.9, 10, 200).astype(np.uint8)
  return [photo, noise, const_channel, two_level, np.full((32, 32, 3), 255, np.uint8)]


def test_equalize_exact(photo, flower):
  for img in special_images(photo) + [flower]:
    assert_same_uint8(aa.equalize(jnp.asarray(img)), TF.equalize(to_torch(img)))


def test_autocontrast_exact(photo, flower):
  for img in special_images(photo) + [flower]:
    assert_same_uint8(aa.autocontrast(jnp.asarray(img)), TF.autocontrast(to_torch(img)))


@pytest.mark.parametrize('factor', [0.1, 0.6, 1.6, 1.9])
def test_uint8_blends_match_torchvision(flower, factor):
  x, t = jnp.asarray(flower), to_torch(flower)
  # Contrast: exact here; Color: the luma weights can move the truncated grey by one level.
  assert_same_uint8(aa.contrast(x, factor), TF.adjust_contrast(t, factor), max_diff=1)
  assert_same_uint8(aa.color(x, factor), TF.adjust_saturation(t, factor), max_diff=1)
  # Sharpness: same kernel, float summation order may move a rounding by one level.
  assert_same_uint8(aa.sharpness(x, factor), TF.adjust_sharpness(t, factor), max_diff=1)


@pytest.mark.parametrize('degrees', [-30.0, -26.67, -10.0, 3.33, 20.0, 30.0, 90.0])
def test_rotate_matches_torchvision(flower, degrees):
  # Nearest sampling: allow 1 % of pixels to land on the other side of a rounding tie.
  assert_same_uint8(aa.rotate(jnp.asarray(flower), degrees), TF.rotate(to_torch(flower), degrees),
                    max_fraction=0.01)


@pytest.mark.parametrize('m', [-0.3, -0.2, -0.0667, 0.0333, 0.1667, 0.2, 0.3])
def test_shear_matches_the_originals_affine(flower, m):
  """The original's ShearX: F.affine(shear=[degrees(m), 0]) about the image centre, on the PIL
  image its pipeline held (PIL samples at floor, torch rounds half to even) and on a tensor."""
  kwargs = dict(angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(m), 0.0])
  ours = aa.shear_x(jnp.asarray(flower), m)
  assert_same_uint8(ours, TF.affine(to_torch(flower), **kwargs), max_fraction=0.01)
  theirs_pil = np.asarray(TF.affine(Image.fromarray(flower), **kwargs))
  assert_same_uint8(ours, to_torch(theirs_pil), max_fraction=0.01)


def test_shear_slides_rows_about_the_centre():
  """Hand case, tan(m) = 0.25 on 8 rows: x_in = x_out + 0.25 * (y + 0.5 - 4), rounded; the top
  rows move right, the bottom rows left, the middle rows stay."""
  img = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
  out = np.asarray(aa.shear_x(jnp.asarray(img), math.atan(0.25)))
  for y, shift in enumerate([-1, -1, 0, 0, 0, 0, 1, 1]):
    for x in range(8):
      expected = img[y, x + shift] if 0 <= x + shift < 8 else 0
      np.testing.assert_array_equal(out[y, x], expected)


# ---- the ImageNet policy ----

def test_policy_matches_torchvision():
  """torchvision's ImageNet policy is the 25 sub-policies SPEC.md lists."""
  theirs = tv_autoaugment.AutoAugment(tv_autoaugment.AutoAugmentPolicy.IMAGENET).policies
  assert len(aa.IMAGENET_POLICY) == 25
  assert [tuple(tuple(step) for step in sub) for sub in theirs] == list(aa.IMAGENET_POLICY)


def test_magnitude_bins_match_torchvision():
  space = tv_autoaugment.AutoAugment()._augmentation_space(10, [32, 32])
  for name, (_, bins, signed) in aa.OPS.items():
    their_bins, their_signed = space[name]
    assert signed == their_signed, name
    if name == 'Solarize':  # SPEC.md: linspace(256, 0); torchvision: linspace(255, 0)
      np.testing.assert_allclose(bins, np.linspace(256, 0, 10))
    elif bins is not None:
      np.testing.assert_allclose(bins, their_bins.numpy(), rtol=1e-6)
  np.testing.assert_array_equal(aa.OPS['Posterize'][1], [8, 8, 7, 7, 6, 6, 5, 5, 4, 4])


def test_policy_steps_probabilities_and_signs(flower):
  img = jnp.asarray(flower)
  keys = jax.random.split(jax.random.PRNGKey(0), 16)

  def run(keys, img, policy):
    return jax.jit(jax.vmap(functools.partial(aa.autoaugment_image, policy=policy),
                            in_axes=(0, None)))(keys, img)

  twice = ((('Invert', 1.0, None), ('Invert', 1.0, None)),)
  np.testing.assert_array_equal(run(keys, img, twice),
                                np.broadcast_to(flower, (16,) + flower.shape))
  once = ((('Invert', 1.0, None), ('Equalize', 0.0, None)),)
  np.testing.assert_array_equal(run(keys, img, once)[0], 255 - flower)
  # Rotate bin 9 = 30 degrees with a random sign: both signs occur, nothing else.
  outs = np.asarray(run(keys, img, ((('Rotate', 1.0, 9), ('Invert', 0.0, None)),)))
  plus, minus = np.asarray(aa.rotate(img, 30.0)), np.asarray(aa.rotate(img, -30.0))
  is_plus = (outs == plus).all(axis=(1, 2, 3))
  is_minus = (outs == minus).all(axis=(1, 2, 3))
  assert (is_plus | is_minus).all() and is_plus.any() and is_minus.any()


# ---- augment_crops ----

CROP_IDS, AA_CROPS, NUM_CROPS = (0, 1), (0,), 2
BOX_OF_32 = (0, 0, 32, 32)  # the whole 32 x 32 crop: cutting it only mirrors it


@pytest.fixture(scope='module')
def batch():
  rng = np.random.default_rng(0)
  crops = rng.integers(0, 256, (8, 2, 32, 32, 3), dtype=np.uint8)
  return jnp.asarray(crops), jnp.arange(100, 108, dtype=jnp.int32)


@pytest.fixture(scope='module')
def augment():
  fn = jax.jit(augment_crops, static_argnums=(3, 4, 5))
  return lambda key, crops, ids, crop_ids, aa_crops: fn(key, crops, ids, crop_ids, aa_crops,
                                                        NUM_CROPS)


def test_augment_crops_shape_dtype_deterministic(batch, augment):
  crops, ids = batch
  key = jax.random.PRNGKey(3)
  out = augment(key, crops, ids, CROP_IDS, AA_CROPS)
  assert out.shape == crops.shape and out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(out, augment(key, crops, ids, CROP_IDS, AA_CROPS))
  # Normalised [0, 1] pixels stay within ((0 - mean) / std, (1 - mean) / std).
  lo = (0 - np.array(color.IMAGENET_MEAN)) / np.array(color.IMAGENET_STD)
  hi = (1 - np.array(color.IMAGENET_MEAN)) / np.array(color.IMAGENET_STD)
  f = np.asarray(out, np.float32)
  assert (f >= lo - 0.02).all() and (f <= hi + 0.02).all()
  assert not np.array_equal(out, augment(jax.random.PRNGKey(4), crops, ids, CROP_IDS, AA_CROPS))


def test_augment_crops_independent_of_order_and_batch_mates(batch, augment):
  crops, ids = batch
  key = jax.random.PRNGKey(5)
  out = np.asarray(augment(key, crops, ids, CROP_IDS, AA_CROPS))
  perm = np.random.default_rng(2).permutation(8)
  permuted = augment(key, crops[perm], ids[perm], CROP_IDS, AA_CROPS)
  np.testing.assert_array_equal(permuted, out[perm])
  # Another split of the data: the first half shares its batch with other images.
  mixed = augment(key, jnp.concatenate([crops[:4], crops[4:][::-1]]),
                  jnp.concatenate([ids[:4], ids[4:] + 1000]), CROP_IDS, AA_CROPS)
  np.testing.assert_array_equal(mixed[:4], out[:4])
  same = jnp.broadcast_to(crops[:1], crops.shape)  # one image under eight image ids
  out = np.asarray(augment(key, same, ids, CROP_IDS, AA_CROPS), np.float32)
  assert all(not np.array_equal(out[0], out[i]) for i in range(1, 8))


def test_augment_crops_key_per_image_and_crop(batch, augment):
  """The key of (image, crop) is fold_in(fold_in(key, image_id), crop_id): a crop cut with
  its drawn flip and augmented is the whole MoCo v2 chain under that key."""
  crops, ids = batch
  key = jax.random.PRNGKey(6)
  whole = jnp.asarray(BOX_OF_32)[None, None].repeat(8, 0).repeat(2, 1)
  cut = cut_crops(crops[:, 1], whole, 32, flips_of(key, ids, CROP_IDS, AA_CROPS))
  out = augment(key, cut, ids, CROP_IDS, AA_CROPS)
  assert bool(flips_of(key, ids, CROP_IDS, AA_CROPS)[:, 1].any())  # the flip is exercised
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i), 1))(ids)
  expected = jax.jit(jax.vmap(moco_v2_crop))(keys, crops[:, 1])
  np.testing.assert_allclose(np.asarray(out[:, 1], np.float32), expected, atol=0.02)


def test_augment_crops_inside_shard_map(batch, augment):
  """On the local shard of a device mesh (one CPU device here): the same results."""
  crops, ids = batch
  mesh = Mesh(np.array(jax.devices()), ('data',))
  fn = jax.jit(jax.shard_map(lambda k, c, i: augment_crops(k, c, i, (0,), AA_CROPS, NUM_CROPS),
                             mesh=mesh, in_specs=(P(), P('data'), P('data')),
                             out_specs=P('data')))
  key = jax.random.PRNGKey(7)
  np.testing.assert_array_equal(fn(key, crops[:, :1], ids)[:, 0],
                                augment(key, crops, ids, CROP_IDS, AA_CROPS)[:, 0])


def test_grayscale_and_autoaugment_rates(batch, augment):
  """Only grayscale (p 0.2) leaves a colourful crop with R = G = B: crop 1 (MoCo v2) turns
  grey at rate 0.2, crop 0 (AutoAugment alternative half the time) at 0.5 * 0.2."""
  crops, ids = batch
  std, mean = np.array(color.IMAGENET_STD), np.array(color.IMAGENET_MEAN)
  grey = []
  for seed in range(125):
    out = np.asarray(augment(jax.random.PRNGKey(seed), crops, ids, CROP_IDS, AA_CROPS),
                     np.float32) * std + mean
    grey.append((np.ptp(out, axis=-1) < 0.02).all(axis=(2, 3)))  # bfloat16 rounding
  rate = np.concatenate(grey).mean(axis=0)  # per crop, 1000 draws each
  assert abs(rate[1] - 0.2) < 0.05 and abs(rate[0] - 0.1) < 0.04, rate  # 4 std


def test_moco_chain_flip_and_jitter_rates():
  """On a grey left-to-right ramp only the flip turns the slope around, and only the jitter
  (brightness, contrast) moves the middle columns: grey stays grey, hue and saturation have
  nothing to act on, and a Gaussian blur keeps a linear ramp away from its borders. Over
  2,000 draws: flipped at rate 0.5, jittered at 0.8 (4 standard deviations)."""
  ramp = np.linspace(40, 220, 32)
  crop = jnp.asarray(np.broadcast_to(ramp[None, :, None], (32, 32, 3)).astype(np.uint8))
  keys = jax.random.split(jax.random.PRNGKey(11), 2000)
  out = np.asarray(jax.jit(jax.vmap(moco_v2_crop, in_axes=(0, None)))(keys, crop))
  out = out * np.array(color.IMAGENET_STD) + np.array(color.IMAGENET_MEAN)
  columns = out.mean(axis=(1, 3))  # [draws, 32]
  flipped = columns[:, -1] < columns[:, 0]
  original = np.asarray(crop[0, :, 0], np.float64) / 255
  unjittered = np.where(flipped[:, None], original[::-1], original)
  middle = slice(blur.kernel_radius(), 32 - blur.kernel_radius())
  jittered = (np.abs(columns - unjittered)[:, middle] > 0.01).any(axis=1)
  assert abs(flipped.mean() - 0.5) < 0.045 and abs(jittered.mean() - 0.8) < 0.036, (
      flipped.mean(), jittered.mean())


@pytest.mark.parametrize('args, match', [
    (dict(crops=jnp.zeros((2, 2, 8, 8, 3), jnp.float32)), 'uint8'),
    (dict(crop_ids=(0,)), 'crop_ids'),
    (dict(crop_ids=(0, 2)), r'crop_ids has \[2\]'),
    (dict(autoaugment_crops=(-1,)), r'autoaugment_crops has \[-1\]'),
    (dict(image_ids=jnp.arange(3)), 'image_ids shape'),
])
def test_augment_crops_bad_input(args, match):
  kwargs = dict(key=jax.random.PRNGKey(0), crops=jnp.zeros((2, 2, 8, 8, 3), jnp.uint8),
                image_ids=jnp.arange(2), crop_ids=(0, 1), autoaugment_crops=(), num_crop_ids=2)
  kwargs.update(args)
  with pytest.raises(ValueError, match=match):
    augment_crops(**kwargs)
