"""Crops and photometric augmentation on the accelerator (crops cut as PIL cuts them, MoCo v2
chain, AutoAugment ImageNet policy)."""

from revisit_jax.augment.autoaugment import IMAGENET_POLICY, autoaugment_image
from revisit_jax.augment.blur import gaussian_blur
from revisit_jax.augment.color import color_jitter, normalize, to_grayscale
from revisit_jax.augment.crop import cut_crops
from revisit_jax.augment.pipeline import augment_crops, flips_of, moco_v2_crop

__all__ = [
    'IMAGENET_POLICY', 'augment_crops', 'autoaugment_image', 'color_jitter', 'cut_crops',
    'flips_of', 'gaussian_blur', 'moco_v2_crop', 'normalize', 'to_grayscale',
]
