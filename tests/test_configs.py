"""Every pretraining config against SPEC.md section 1, and the config checks at start."""

import importlib
import math
from pathlib import Path

import jax
import pytest
from absl import flags
from ml_collections import config_flags

from revisit_jax import compile_cache, config_check, sharding, train

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'

# SPEC.md section 1, typed in from its table (not from the config files).
MOCO = dict(kind='moco', large=(2, 224, (0.2, 1.0)), small=None, constrained=False,
            autoaugment=(), knn_weight=0.0, knn_topk=None, warmup=0, momentum=0.999)
OURS = dict(kind='ours', large=(2, 160, (0.2, 1.0)), small=(4, 96, (0.05, 0.14)),
            constrained=True, autoaugment=(0, 2, 3, 4, 5), knn_weight=0.4, knn_topk=20,
            warmup=0, momentum=0.995)
TABLE = {
    'moco_200ep': (MOCO, 200), 'moco_800ep': (MOCO, 800),
    'ours_200ep': (OURS, 200), 'ours_800ep': (OURS, 800),
    'ours_warmup_200ep': ({**OURS, 'warmup': 20}, 200),
    'ours_warmup_800ep': ({**OURS, 'warmup': 20}, 800),
}


def load(name):
  return importlib.import_module(f'configs.{name}').get_config()


@pytest.mark.parametrize('name', sorted(TABLE))
def test_config_has_the_spec_values(name):
  want, epochs = TABLE[name]
  c = load(name)
  assert c.method.kind == want['kind']
  count, size, scale = want['large']
  assert (2, c.crops.large_size, tuple(c.crops.large_scale)) == (count, size, scale)
  if want['small'] is None:
    assert c.crops.num_small == 0
  else:
    assert (c.crops.num_small, c.crops.small_size, tuple(c.crops.small_scale)) == want['small']
  assert c.crops.constrained is want['constrained']
  assert tuple(c.crops.autoaugment_crops) == want['autoaugment']
  assert math.isclose(c.method.knn_weight, want['knn_weight'])
  if want['knn_topk'] is not None:
    assert c.method.knn_topk == want['knn_topk']
  assert c.method.knn_warmup_epochs == want['warmup']
  assert math.isclose(c.method.key_momentum, want['momentum'])
  assert c.optim.epochs == epochs
  # Shared by every config.
  assert (c.model.arch, c.model.width, c.model.head_hidden_dim, c.model.embed_dim) == (
      'resnet50', 64, 2048, 128)
  assert math.isclose(c.method.temperature, 0.2)
  assert c.method.queue_size == 65536
  assert c.data.global_batch == 256
  assert (c.optim.base_lr, c.optim.momentum, c.optim.weight_decay) == (0.3, 0.9, 1e-4)
  assert c.optim.schedule == 'cosine_epoch'


@pytest.mark.parametrize('name', sorted(TABLE) + ['demo'])
def test_config_file_starts_with_its_command(name):
  doc = importlib.import_module(f'configs.{name}').__doc__
  assert doc, f'configs/{name}.py has no docstring'
  assert f'python -m revisit_jax.main --config configs/{name}.py --workdir ' in doc


def test_demo_config_is_cpu_sized_and_embedded():
  c = load('demo')
  assert c.data.source == 'demo' and c.monitor.source == 'demo'
  assert c.model.dtype == 'float32'  # bf16 matmuls are slow on CPUs
  assert c.monitor.final_vs_random and c.train.export_torch
  assert c.method.queue_size % c.data.global_batch == 0


def parse(argv):
  """Parse command-line flags into a locked config as main.py does."""
  values, argv = flags.FlagValues(), ['prog'] + argv
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


def test_overrides_apply_and_bad_ones_are_rejected():
  c = parse([f'--config={CONFIGS}/ours_200ep.py', '--config.optim.base_lr=0.03',
             '--config.data.bn_groups=1'])
  assert c.optim.base_lr == 0.03 and c.data.bn_groups == 1
  with pytest.raises(AttributeError, match='lrr'):  # ml_collections' locked-config error
    parse([f'--config={CONFIGS}/ours_200ep.py', '--config.optim.lrr=1'])
  with pytest.raises(flags.IllegalFlagValueError, match='base_lr'):
    parse([f'--config={CONFIGS}/ours_200ep.py', '--config.optim.base_lr=fast'])


def demo_with(**fields):
  c = load('demo')
  for path, value in fields.items():
    section, key = path.split('__')
    c[section][key] = value
  return c


@pytest.mark.parametrize('fields, message', [
    ({'data__global_batch': 99}, 'bn_groups'),
    ({'method__queue_size': 1000}, 'not a multiple of config.data.global_batch'),
    ({'method__knn_warmup_epochs': 10**6}, 'knn_warmup_epochs'),
    ({'method__kind': 'simclr'}, 'config.method.kind'),
    ({'model__stem': 'tiny'}, 'config.model.stem'),
    ({'train__num_steps': 10**9}, 'config.train.num_steps'),
    ({'monitor__source': ''}, 'config.monitor.source'),
    ({'data__global_batch': 4096, 'method__queue_size': 8192}, 'fewer than one batch'),
    ({'data__bn_groups': 0}, r'config.data.bn_groups=0: expected an int >= 1'),
    ({'data__global_batch': 0}, r'config.data.global_batch=0: expected an int >= 1'),
    ({'model__width': 0}, r'config.model.width=0: expected an int >= 1'),
    ({'model__arch': 'resnet152'}, 'config.model.arch=.resnet152.'),
    ({'optim__schedule': 'cosine'}, 'config.optim.schedule=.cosine.'),
    ({'crops__large_scale': (1.0, 0.2)}, r'config.crops.large_scale=\(1.0, 0.2\)'),
    ({'crops__small_scale': (0.0, 0.14)}, r'config.crops.small_scale=\(0.0, 0.14\)'),
    ({'method__knn_topk': 0}, 'config.method.knn_topk=0'),
    ({'method__key_momentum': 1.5}, 'config.method.key_momentum=1.5'),
    ({'method__temperature': 0.0}, 'config.method.temperature=0.0'),
    ({'train__compilation_cache': ''}, 'config.train.compilation_cache is empty'),
    ({'crops__autoaugment_crops': (0, 7)}, r'crops \[7\] do not exist \(crop ids are \(0, 1, 2, 3\)\)'),
    ({'crops__num_small': 1, 'crops__autoaugment_crops': (0, 3)}, r'crops \[3\] do not exist'),
    ({'crops__small_size': 0}, r'config.crops.small_size=0: expected an int >= 1'),
    ({'crops__large_size': -224}, r'config.crops.large_size=-224: expected an int >= 1'),
    ({'crops__num_small': -1}, r'config.crops.num_small=-1: expected an int >= 0'),
    ({'method__kind': 'ours', 'crops__num_small': 0}, 'needs small crops'),
])
def test_impossible_combinations_are_named(fields, message):
  mesh = sharding.make_mesh(jax.devices()[:1])
  with pytest.raises(config_check.ConfigError, match=message):
    train.validate(demo_with(**fields), mesh, num_images=1440)


def test_an_impossible_layout_is_refused_before_anything_is_written(tmp_path):
  with pytest.raises(config_check.ConfigError, match='autoaugment_crops'):
    train.train(demo_with(crops__autoaugment_crops=(0, 9)), tmp_path / 'wd')
  assert not (tmp_path / 'wd').exists()


def test_any_number_of_small_crops_is_a_layout():
  """SPEC.md section 3 sets no limit: crop ids follow num_small, so 5 small crops pass."""
  config = demo_with(crops__num_small=5, crops__autoaugment_crops=(0, 6))
  config_check.check(config, devices=1, num_images=1440)
  assert config_check.crop_groups(config) == (((0, 1), 32), ((2, 3, 4, 5, 6), 16))


def test_unknown_data_source_is_named(tmp_path):
  c = demo_with(data__source=str(tmp_path / 'missing'))
  with pytest.raises(train.RunError, match='config.data.source=.*missing'):
    train.open_data(c)


@pytest.mark.parametrize('devices, bn_groups, advice', [
    (1, 2, None), (2, 1, None), (2, 2, 'bn_groups=1'), (1, 1, 'bn_groups=2'),
    (4, 1, 'cannot hold one'),
])
def test_bn_groups_other_than_the_papers_128_images_are_flagged(devices, bn_groups, advice):
  """SPEC.md: the paper's BatchNorm averaged over 128 images (2 GPUs x 128)."""
  c = load('ours_800ep')
  c.data.bn_groups = bn_groups
  note = config_check.bn_group_note(c, devices)
  if advice is None:
    assert note == ''
  else:
    assert advice in note and f'over {256 // (devices * bn_groups)} images' in note


def test_compilation_cache_is_in_the_users_cache_unless_moved_or_turned_off(monkeypatch,
                                                                            tmp_path):
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'user_cache'))
  jax_own = jax.config.jax_compilation_cache_dir
  try:
    jax.config.update('jax_compilation_cache_dir', None)
    assert compile_cache.resolve('auto') == str(tmp_path / 'user_cache' / 'revisit_jax' / 'xla')
    jax.config.update('jax_compilation_cache_dir', str(tmp_path / 'jax_own'))
    assert compile_cache.resolve('auto') == str(tmp_path / 'jax_own')  # JAX's setting is kept
  finally:
    jax.config.update('jax_compilation_cache_dir', jax_own)
  assert compile_cache.resolve('off') is None
  assert compile_cache.resolve(str(tmp_path / 'mine')) == str(tmp_path / 'mine')
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / 'from_env'))
  assert compile_cache.resolve('auto') == str(tmp_path / 'from_env')
  assert compile_cache.resolve(str(tmp_path / 'mine')) == str(tmp_path / 'mine')  # config wins
  monkeypatch.setenv(compile_cache.ENV, 'off')
  assert compile_cache.resolve('auto') is None
  assert load('demo').train.compilation_cache == 'auto'
