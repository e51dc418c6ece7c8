"""What a pretraining config may hold, checked in one place before anything is written or
compiled (revisit_jax.main through train, revisit_jax.benchmark and converters.import_torch
through the step or the state they build).

The crop layout comes from the config: crops 0 and 1 are the large query and key, then
config.crops.num_small small queries (crop ids 2 .. 1 + num_small); nothing sets an
upper limit on their number (SPEC.md section 3: the constrained sampler draws each small crop
against the key crop alone).
"""

import ml_collections

from revisit_jax.models.resnet import STAGE_SIZES
from revisit_jax.train_state import SCHEDULES

KINDS = ('ours', 'moco')
STEMS = ('imagenet', 'cifar')
DTYPES = ('float32', 'bfloat16')
POSITIVE_INTS = ('data.global_batch', 'data.bn_groups', 'data.canvas_size', 'model.width',
                 'model.head_hidden_dim', 'model.embed_dim', 'crops.large_size',
                 'crops.small_size', 'method.queue_size', 'optim.epochs',
                 'train.log_every_steps', 'train.checkpoint_every_steps',
                 'train.keep_checkpoints')
PAPER_BN_GROUP = 128  # SPEC.md: the original's 2 GPUs x 128 images, per-GPU BatchNorm


class ConfigError(ValueError):
  """An impossible config: the commands report it in one line (revisit_jax.cli)."""


def num_crops(config) -> int:
  """Crops per image: the large query and key, then the small queries."""
  return 2 + config.crops.num_small


def crop_groups(config) -> tuple:
  """(crop ids, size) of each group of crops: the large query and key, then the small ones."""
  groups = (((0, 1), config.crops.large_size),)
  if config.crops.num_small:
    groups += ((tuple(range(2, num_crops(config))), config.crops.small_size),)
  return groups


def check(config: ml_collections.ConfigDict, devices: int, processes: int = 1,
          num_images: int | None = None) -> None:
  """Raise a ConfigError naming every impossible field or combination for a run on `devices`
  devices and `processes` processes (and, given `num_images`, that many training images)."""
  problems = [f'config.{f}={config[f]!r}: expected an int >= 1' for f in POSITIVE_INTS
              if not (isinstance(config[f], int) and config[f] >= 1)]
  if not (isinstance(config.crops.num_small, int) and config.crops.num_small >= 0):
    problems.append(f'config.crops.num_small={config.crops.num_small!r}: expected an int >= 0')
  if problems:  # the checks below divide by these
    raise ConfigError('invalid config: ' + '; '.join(problems))
  problems += choices(config) + crop_problems(config) + method_problems(config, devices)
  problems += run_problems(config, processes, num_images)
  if problems:
    raise ConfigError('invalid config: ' + '; '.join(problems))


def choices(config) -> list[str]:
  out = []
  for field, allowed in (('model.arch', tuple(STAGE_SIZES)), ('model.stem', STEMS),
                         ('optim.schedule', SCHEDULES), ('method.kind', KINDS),
                         ('model.dtype', DTYPES), ('method.backbone_queue_dtype', DTYPES)):
    if config[field] not in allowed:
      out.append(f'config.{field}={config[field]!r}: expected one of {allowed}')
  return out


def crop_problems(config) -> list[str]:
  crops, out = config.crops, []
  for field in ('crops.large_scale', 'crops.small_scale'):
    low, high = config[field]
    if not 0 < low <= high <= 1:
      out.append(f'config.{field}=({low}, {high}): expected 0 < low <= high <= 1 '
                 '(fractions of the image area)')
  if config.method.kind == 'ours' and crops.num_small == 0:
    out.append("config.crops.num_small=0 with config.method.kind='ours': "
               "the multi-crop method needs small crops (use kind 'moco')")
  crop_ids = tuple(range(num_crops(config)))
  unknown = [c for c in crops.autoaugment_crops if c not in crop_ids]
  if unknown:
    out.append(f'config.crops.autoaugment_crops={tuple(crops.autoaugment_crops)}: '
               f'crops {unknown} do not exist (crop ids are {crop_ids})')
  return out


def method_problems(config, devices: int) -> list[str]:
  m, batch, groups = config.method, config.data.global_batch, config.data.bn_groups
  out = []
  if batch % (devices * groups):
    out.append(f'config.data.global_batch={batch} is not divisible by {devices} devices '
               f'x config.data.bn_groups={groups}')
  if m.queue_size % batch:
    out.append(f'config.method.queue_size={m.queue_size} is not a multiple of '
               f'config.data.global_batch={batch}')
  if not 0 <= m.key_momentum <= 1:
    out.append(f'config.method.key_momentum={m.key_momentum}: expected 0 <= m <= 1')
  if not m.temperature > 0:
    out.append(f'config.method.temperature={m.temperature}: expected > 0')
  if m.kind == 'ours' and m.knn_topk < 1:
    out.append(f'config.method.knn_topk={m.knn_topk}: expected >= 1')
  elif m.kind == 'ours' and m.knn_topk > m.queue_size // devices:
    out.append(f'config.method.knn_topk={m.knn_topk} exceeds the {m.queue_size // devices} '
               'queue rows per device')
  if m.knn_warmup_epochs > config.optim.epochs:
    out.append(f'config.method.knn_warmup_epochs={m.knn_warmup_epochs} exceeds '
               f'config.optim.epochs={config.optim.epochs}: the kNN loss would never start')
  if m.kind == 'moco' and m.knn_weight:
    out.append(f"config.method.knn_weight={m.knn_weight} with kind 'moco', which has "
               'no kNN loss (set it to 0 or use kind ours)')
  return out


def run_problems(config, processes: int, num_images: int | None) -> list[str]:
  t, batch, mon = config.train, config.data.global_batch, config.monitor
  out = []
  if batch % processes:
    out.append(f'config.data.global_batch={batch} is not divisible by {processes} processes')
  if num_images is not None:
    steps_per_epoch = num_images // batch
    if steps_per_epoch < 1:
      out.append(f'config.data.source={config.data.source!r} has {num_images} images, '
                 f'fewer than one batch of config.data.global_batch={batch}')
    elif t.num_steps != -1 and not 0 < t.num_steps <= config.optim.epochs * steps_per_epoch:
      out.append(f'config.train.num_steps={t.num_steps}: expected -1 or 1..'
                 f'{config.optim.epochs * steps_per_epoch} (epochs x steps per epoch)')
  if not t.compilation_cache:
    out.append("config.train.compilation_cache is empty: expected 'auto', 'off' or a folder")
  if (mon.every_epochs > 0 or mon.final_vs_random) and not mon.source:
    out.append('config.monitor.source is empty but the monitor is on '
               f'(every_epochs={mon.every_epochs}, final_vs_random={mon.final_vs_random})')
  if mon.every_epochs < 0:
    out.append(f'config.monitor.every_epochs={mon.every_epochs} must be >= 0')
  return out


def bn_group_note(config: ml_collections.ConfigDict, devices: int) -> str:
  """A warning when BN would average over other than the paper's 128 images ('' if not)."""
  batch, groups = config.data.global_batch, config.data.bn_groups
  group = batch // (devices * groups)
  if batch != 2 * PAPER_BN_GROUP or group == PAPER_BN_GROUP:
    return ''
  per_device = batch // devices
  fix = (f'set --config.data.bn_groups={per_device // PAPER_BN_GROUP}'
         if per_device % PAPER_BN_GROUP == 0 else
         f'{per_device} images per device cannot hold one (no cross-device BN here)')
  return (f'BatchNorm statistics over {group} images ({batch} / ({devices} devices x '
          f'config.data.bn_groups={groups})), not the paper\'s {PAPER_BN_GROUP}: {fix}')
