"""MoCo v2 baseline, 200 epochs (SPEC.md section 1).

  python -m revisit_jax.main --config configs/moco_200ep.py --workdir runs/moco_200ep

2 x 224 px crops (scale 0.2-1), no kNN loss, no AutoAugment, key momentum 0.999.
Data: COCO train2017 from a prepared TFDS (tfds:coco/2017, --config.data.data_dir=DIR) or a
folder of images (--config.data.source=/data/coco/train2017); 118,287 // 256 = 462 steps per
epoch, 92,400 steps = 23.7 M images in all.
Hardware: one GPU of the H100 / H200 class (BN in 2 groups of 128 = the original's 2 GPUs),
or several GPUs with --config.data.bn_groups=1; several hosts: see revisit_jax/main.py.
Time: 23.7 M images / the step throughput measured in BENCHMARKS.md; the input pipeline
needs the host's CPU cores to keep up.
"""

from configs.base import get_base_config, moco_v2


def get_config():
  c = moco_v2(get_base_config())
  c.optim.epochs = 200
  return c
