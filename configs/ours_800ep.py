"""The paper's method ('ours'), 800 epochs (SPEC.md section 1).

  python -m revisit_jax.main --config configs/ours_800ep.py --workdir runs/ours_800ep

Crops 2 x 160 (0.2-1) + 4 x 96 (0.05-0.14) constrained to the key crop, AutoAugment
on crops 0, 2, 3, 4, 5, kNN loss top-20 weight 0.4, key momentum 0.995.
Data: COCO train2017 from a prepared TFDS (tfds:coco/2017, --config.data.data_dir=DIR) or a
folder of images (--config.data.source=/data/coco/train2017); 118,287 // 256 = 462 steps per
epoch, 369,600 steps = 94.6 M images in all.
Hardware: one GPU of the H100 / H200 class (BN in 2 groups of 128 = the original's 2 GPUs),
or several GPUs with --config.data.bn_groups=1; several hosts: see revisit_jax/main.py.
Time: 94.6 M images / the step throughput measured in BENCHMARKS.md; the input pipeline
needs the host's CPU cores to keep up.
"""

from configs.base import get_base_config


def get_config():
  c = get_base_config()
  c.optim.epochs = 800
  return c
