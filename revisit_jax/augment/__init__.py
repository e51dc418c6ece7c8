"""Photometric augmentation on the accelerator (MoCo v2 chain, AutoAugment ImageNet policy)."""

from revisit_jax.augment.autoaugment import IMAGENET_POLICY, autoaugment_image
from revisit_jax.augment.blur import gaussian_blur
from revisit_jax.augment.color import color_jitter, normalize, to_grayscale
from revisit_jax.augment.pipeline import augment_crops, autoaugment_crop, moco_v2_crop

__all__ = [
    'IMAGENET_POLICY', 'augment_crops', 'autoaugment_image', 'autoaugment_crop', 'color_jitter',
    'gaussian_blur', 'moco_v2_crop', 'normalize', 'to_grayscale',
]
