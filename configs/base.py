"""Fields shared by every pretraining config; each config file overrides a few.

Not a config itself: the files beside it (ours_800ep.py, ...) are.
"""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.arch = 'resnet50'          # resnet18 / 34 / 50 / 101 (torchvision layout)
  c.model.width = 64                 # 64 is torchvision's; smaller only for tests and the demo
  c.model.stem = 'imagenet'          # or 'cifar' (3x3 stride-1 conv1, no max-pool: 32 px images)
  c.model.head_hidden_dim = 2048
  c.model.embed_dim = 128
  c.model.dtype = 'bfloat16'         # compute dtype; parameters and BN statistics stay float32

  c.method = ml_collections.ConfigDict()
  c.method.kind = 'ours'             # 'ours' (multi-crop + kNN loss) or 'moco' (MoCo v2)
  c.method.temperature = 0.2
  c.method.queue_size = 65536
  c.method.key_momentum = 0.995
  c.method.knn_topk = 20
  c.method.knn_weight = 0.4
  c.method.knn_warmup_epochs = 0     # kNN loss off for the first epochs (the 'warmup' configs)
  c.method.backbone_queue_dtype = 'float32'  # or 'bfloat16' to halve the 2048-d queue

  # Crop layout: crops 0 and 1 (query, key) are 'large'; crops 2.. are 'small'.
  c.crops = ml_collections.ConfigDict()
  c.crops.large_size = 160
  c.crops.large_scale = (0.2, 1.0)
  c.crops.num_small = 4
  c.crops.small_size = 96
  c.crops.small_scale = (0.05, 0.14)
  c.crops.constrained = True         # small crops overlap the key crop by >= 10 %
  c.crops.autoaugment_crops = (0, 2, 3, 4, 5)

  c.optim = ml_collections.ConfigDict()
  c.optim.base_lr = 0.3
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.schedule = 'cosine_epoch'  # the original's per-epoch cosine; or 'cosine_step'
  c.optim.epochs = 800

  c.data = ml_collections.ConfigDict()
  c.data.source = 'tfds:coco/2017'   # 'tfds:NAME', a folder of images, or 'demo'
  c.data.split = 'train'
  c.data.data_dir = ''               # TFDS data_dir ('' = TFDS default)
  c.data.global_batch = 256
  c.data.canvas_size = 640           # images travel decoded on a canvas this size (larger: shrunk)
  c.data.bn_groups = 2               # BN groups per device; 2 on one GPU = the paper's 2 x 128
  c.data.workers = 0                 # tf.data parallelism; 0 = AUTOTUNE
  c.data.seed = 0

  c.train = ml_collections.ConfigDict()
  c.train.seed = 0
  c.train.log_every_steps = 50
  c.train.checkpoint_every_steps = 1000
  c.train.keep_checkpoints = 3
  c.train.num_steps = -1             # -1: epochs x steps per epoch; a positive value stops early
  c.train.export_torch = True        # write torchvision weights next to the checkpoints at the end
  c.train.compilation_cache = 'auto'  # persistent XLA cache: a folder, 'off', or 'auto' =
                                     # $REVISIT_JAX_XLA_CACHE, else ~/.cache/revisit_jax/xla
  c.train.xla_flags = ''             # XLA flags for this config, put before $XLA_FLAGS (which wins)

  c.monitor = ml_collections.ConfigDict()
  c.monitor.every_epochs = 0         # 0 = off; else weighted kNN top-1 every E epochs
  c.monitor.source = ''              # labelled set: 'demo', 'tfds:NAME', or a folder of <split>/<class>/ images
  c.monitor.image_size = 224         # centre crop after resizing the shorter side to size * 256/224
  c.monitor.train_split = 'train'    # the kNN bank (for a folder: its sub-folder of that name)
  c.monitor.test_split = 'test'      # the classified images
  c.monitor.k = 200                  # neighbours (InstDisc / MoCo monitor: 200, T 0.07)
  c.monitor.temperature = 0.07
  c.monitor.batch_size = 256         # images per feature batch
  c.monitor.final_vs_random = False  # at the end, also score the network at its initialisation
  return c


def moco_v2(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """MoCo v2: two 224 px crops, no small crops, no kNN loss, no AutoAugment."""
  c.method.kind = 'moco'
  c.method.key_momentum = 0.999
  c.method.knn_weight = 0.0
  c.crops.large_size = 224
  c.crops.num_small = 0
  c.crops.constrained = False
  c.crops.autoaugment_crops = ()
  return c
