"""The training program end to end, as subprocesses on the demo data with a tiny network.

Each run is `python -m revisit_jax.main` in its own process, so signals, exit codes and
messages are the real ones. A shared persistent compilation cache lets the runs of one
config compile once.
"""

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import demo
from revisit_jax import checkpoint

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8  # the uninterrupted run; the interrupted one is signalled after step 3
TINY = {
    'model.width': 8, 'model.head_hidden_dim': 32, 'model.embed_dim': 16,
    'crops.large_size': 16, 'crops.small_size': 8, 'crops.num_small': 2,
    'crops.autoaugment_crops': '(0, 2)', 'method.queue_size': 128, 'method.knn_topk': 4,
    'data.global_batch': 32, 'optim.base_lr': 0.06, 'optim.epochs': 1, 'train.num_steps': STEPS,
    'train.log_every_steps': 1, 'train.checkpoint_every_steps': 2,
    'monitor.final_vs_random': False, 'train.export_torch': False,
}
MOCO = dict(method__kind='moco', method__knn_weight=0.0, crops__num_small=0,
            crops__autoaugment_crops='()', crops__constrained=False)


def overrides(**changes):
  """--config.FIELD=VALUE flags: the tiny demo, with `changes` (FIELD with '__' for '.')."""
  fields = {**TINY, **{k.replace('__', '.'): v for k, v in changes.items()}}
  return [f'--config.{k}={v}' for k, v in fields.items()]


def env(tmp_cache, devices=1):
  out = {k: v for k, v in os.environ.items() if not k.startswith(('XLA_', 'JAX_'))}
  out.update(JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             # One thread per XLA CPU op: threaded reductions may sum in a varying order,
             # and the kNN loss's top-k turns such last-bit differences into other picks.
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} '
                       '--xla_cpu_multi_thread_eigen=false',
             JAX_COMPILATION_CACHE_DIR=str(tmp_cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return out


def command(workdir, *extra, fields=None):
  return [sys.executable, '-m', 'revisit_jax.main', '--config', 'configs/demo.py',
          *(overrides() if fields is None else fields), '--workdir', str(workdir), *extra]


def run(workdir, *extra, cache, fields=None, timeout=600):
  return subprocess.run(command(workdir, *extra, fields=fields), cwd=ROOT, env=env(cache), capture_output=True,
                        text=True, timeout=timeout)


def logged_steps(workdir):
  path = Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def arrays(workdir):
  """The latest checkpoint's arrays by path, restored onto this process's first device
  (whatever devices wrote it), and its meta."""
  state, meta = checkpoint.restore(workdir)
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(state)}, meta


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp('jax_cache')


@pytest.fixture(scope='module')
def full_run(tmp_path_factory, cache):
  workdir = tmp_path_factory.mktemp('full')
  result = run(workdir, cache=cache)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result


def test_full_run_writes_metrics_events_config_and_checkpoints(full_run):
  workdir, result = full_run
  steps = logged_steps(workdir)
  assert [s['step'] for s in steps] == list(range(1, STEPS + 1))
  for name in ('loss', 'infonce', 'knn', 'acc1', 'acc5', 'lr', 'images_per_s'):
    assert all(np.isfinite(s[name]) for s in steps), name
  # total = InfoNCE + 0.4 kNN (the demo keeps the paper's weight).
  np.testing.assert_allclose([s['loss'] for s in steps],
                             [s['infonce'] + 0.4 * s['knn'] for s in steps], rtol=1e-5)
  assert list(workdir.glob('events.out.tfevents.*'))
  config = json.loads((workdir / 'config.json').read_text())
  assert config['model']['width'] == 8 and config['data']['source'] == 'demo'
  assert checkpoint.latest_step(workdir) == STEPS
  _, meta = arrays(workdir)
  assert meta['step'] == STEPS and meta['config']['model']['width'] == 8
  assert json.loads(result.stdout.strip().splitlines()[-1])['step'] == STEPS


def test_tensorboard_events_hold_the_logged_scalars(full_run):
  workdir, _ = full_run
  from tensorflow.core.util import event_pb2
  import tensorflow as tf
  losses = {}
  for path in workdir.glob('events.out.tfevents.*'):
    for record in tf.data.TFRecordDataset(str(path)):
      event = event_pb2.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag == 'loss':
          assert value.metadata.plugin_data.plugin_name == 'scalars'  # what TensorBoard plots
          losses[event.step] = float(tf.make_ndarray(value.tensor))
  logged = {s['step']: s['loss'] for s in logged_steps(workdir)}
  assert sorted(losses) == sorted(logged)
  np.testing.assert_allclose([losses[s] for s in logged], list(logged.values()), rtol=1e-6)


def test_sigterm_then_resume_matches_the_uninterrupted_run(full_run, cache, tmp_path):
  full_dir, _ = full_run
  workdir = tmp_path / 'interrupted'
  proc = subprocess.Popen(command(workdir), cwd=ROOT, env=env(cache), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 600
  while not any(s['step'] >= 3 for s in logged_steps(workdir)):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.time() < deadline, 'the run never logged step 3'
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  stopped = checkpoint.latest_step(workdir)
  assert 3 <= stopped < STEPS, f'stopped at {stopped}: the signal came too late to test a resume'
  assert 'Stopped at step' in out

  resumed = run(workdir, cache=cache)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert checkpoint.latest_step(workdir) == STEPS
  want, _ = arrays(full_dir)
  got, _ = arrays(workdir)
  assert sorted(got) == sorted(want)
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)
  # The resumed steps log the losses of the uninterrupted run.
  full = {s['step']: s['loss'] for s in logged_steps(full_dir)}
  after = {s['step']: s['loss'] for s in logged_steps(workdir) if s['step'] > stopped}
  assert sorted(after) == list(range(stopped + 1, STEPS + 1))
  np.testing.assert_allclose([after[s] for s in after], [full[s] for s in after], rtol=1e-6)


KILLS = 4  # SIGKILLs per run of the kill test
EVERY_STEP = dict(train__checkpoint_every_steps=1, train__keep_checkpoints=4,
                  train__export_torch=True)
DAMAGES = ('file missing', 'file truncated', 'metadata unreadable')


def steps_logged_since(workdir, since_ns) -> list[int]:
  """The steps in metrics.jsonl if a launch after `since_ns` rewrote it (a resumed run first
  drops the lines of the steps it redoes), else []. A line being written is skipped."""
  path = Path(workdir) / 'metrics.jsonl'
  try:
    if path.stat().st_mtime_ns <= since_ns:
      return []
    lines = path.read_text().splitlines()
  except FileNotFoundError:
    return []
  steps = []
  for line in lines:
    try:
      steps.append(json.loads(line)['step'])
    except json.JSONDecodeError:
      pass
  return steps


def temporary_files(workdir) -> list[str]:
  """What interrupted writes left: orbax's unfinished steps and our files' temporaries."""
  return sorted(str(p.relative_to(workdir)) for p in Path(workdir).rglob('*')
                if 'orbax-checkpoint-tmp' in p.name or p.name.endswith('.tmp'))


def compiled_steps(cache) -> set[str]:
  """The training steps in the persistent compilation cache."""
  return {p.name for p in Path(cache).glob('jit_step-*')}


@pytest.fixture(scope='module')
def killed_run(tmp_path_factory, cache, full_run):
  """The tiny run with a checkpoint every step (so kills land inside asynchronous saves) and
  the final export, SIGKILLed KILLS times at random moments and started again after each,
  then run to its end. Returns (workdir, where each kill landed, the random seed, the
  training steps it added to the compilation cache, which full_run filled)."""
  steps_before = compiled_steps(cache)
  workdir = tmp_path_factory.mktemp('killed')
  logs = tmp_path_factory.mktemp('killed_logs')
  seed = random.randrange(2**31)
  rng = random.Random(seed)
  kills, startup_s = [], None
  for attempt in range(KILLS):
    resumed = checkpoint.latest_step(workdir) or 0
    # A random delay into start-up (import, restore, compile; the second launch, once the
    # first showed how long that takes), or after this launch logged a random step: inside
    # that step's save, the next steps, or the final save and export.
    target = resumed if attempt == 1 or resumed == STEPS else rng.randint(resumed + 1, STEPS)
    log = logs / f'launch{attempt}.txt'
    start, start_ns = time.perf_counter(), time.time_ns()
    with open(log, 'w') as out:
      proc = subprocess.Popen(command(workdir, fields=overrides(**EVERY_STEP)), cwd=ROOT,
                              env=env(cache), stdout=out, stderr=subprocess.STDOUT)
    if target > resumed:
      while max(steps_logged_since(workdir, start_ns), default=0) < target:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.perf_counter() - start < 600, f'launch {attempt} never logged step {target}'
        time.sleep(0.01)
      startup_s = startup_s or time.perf_counter() - start
    delay = rng.uniform(0, 1.0 if target > resumed else startup_s)
    time.sleep(delay)
    if proc.poll() is not None:  # it finished before the kill
      assert proc.returncode == 0, log.read_text()[-3000:]
      break
    proc.kill()
    proc.wait()
    kills.append({'moment': f'{delay:.2f} s after step {target}' if target > resumed
                            else f'{delay:.2f} s after the launch',
                  'checkpoints': checkpoint.steps(workdir), 'left': temporary_files(workdir)})
  result = run(workdir, cache=cache, fields=overrides(**EVERY_STEP))
  assert result.returncode == 0, result.stderr[-3000:]
  inside = sum(any('orbax-checkpoint-tmp' in f for f in k['left']) for k in kills)
  print(f'\nkill test (seed {seed}): {len(kills)} SIGKILLs, {inside} inside a save: {kills}')
  return workdir, kills, seed, compiled_steps(cache) - steps_before


def test_sigkill_at_random_moments_then_restarts_end_as_the_uninterrupted_run(
    full_run, killed_run, tmp_path):
  import torch
  from converters.export_torch import export
  workdir, kills, seed, compiled = killed_run
  context = f'seed {seed}, kills {kills}'
  assert kills, context
  assert not compiled, 'every launch should have read the step from the compilation cache'

  want, _ = arrays(full_run[0])
  got, meta = arrays(workdir)
  assert meta['step'] == STEPS and sorted(got) == sorted(want), context
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=f'{name}; {context}')
  # Every step logged once, with the uninterrupted run's values.
  logged, full = logged_steps(workdir), logged_steps(full_run[0])
  assert [s['step'] for s in logged] == list(range(1, STEPS + 1)), context
  for name in ('loss', 'infonce', 'knn', 'acc1', 'acc5', 'lr'):
    assert [s[name] for s in logged] == [s[name] for s in full], f'{name}; {context}'
  # The files written at the end are whole, and nothing temporary is left.
  assert json.loads((workdir / 'config.json').read_text())['train']['checkpoint_every_steps'] == 1
  exported = torch.load(workdir / 'resnet18_torchvision.pth', weights_only=True)
  export(workdir, tmp_path / 'reference.pth')
  reference = torch.load(tmp_path / 'reference.pth', weights_only=True)
  assert sorted(exported) == sorted(reference)
  assert all(torch.equal(exported[k], reference[k]) for k in reference), context
  assert temporary_files(workdir) == [], context


def damage(step_dir: Path, how: str) -> None:
  """What a crash or a bad disk does to a step folder: its largest file (array data) missing
  or cut in half, or the metadata of its state unreadable."""
  state = step_dir / 'state'
  if how == 'metadata unreadable':
    (state / '_METADATA').write_bytes(b'\x00not json')
    return
  largest = max((p for p in state.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)
  if how == 'file missing':
    largest.unlink()
  else:
    largest.write_bytes(largest.read_bytes()[:largest.stat().st_size // 2])


def test_damaged_checkpoints_are_named_and_the_run_resumes_from_the_newest_intact_one(
    full_run, killed_run, cache, tmp_path):
  workdir = tmp_path / 'damaged'
  shutil.copytree(killed_run[0], workdir)
  steps = checkpoint.steps(workdir)[-4:]  # a kill between a save and a deletion leaves 5
  assert steps == [STEPS - 3, STEPS - 2, STEPS - 1, STEPS]
  for step, how in zip(reversed(steps), DAMAGES):  # the newest three, one way each
    damage(workdir / 'checkpoints' / str(step), how)
  result = run(workdir, cache=cache, fields=overrides(**EVERY_STEP))
  assert result.returncode == 0, result.stderr[-3000:]
  intact = steps[0]
  assert f'Resuming from step {intact}' in result.stdout
  for step, how in zip(reversed(steps), DAMAGES):
    lines = [line for line in result.stderr.splitlines()
             if f'{workdir / "checkpoints" / str(step)} is damaged' in line]
    assert len(lines) == 1 and f'resuming from step {intact}' in lines[0], (how, result.stderr)
    assert len(list((workdir / 'checkpoints').glob(f'{step}.damaged-*/state'))) == 1, how
  assert checkpoint.steps(workdir) == steps  # redone and saved again
  want, _ = arrays(full_run[0])
  got, _ = arrays(workdir)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  assert [s['step'] for s in logged_steps(workdir)] == list(range(1, STEPS + 1))


def test_no_intact_checkpoint_stops_in_one_line_and_fresh_starts_again(
    full_run, killed_run, cache, tmp_path):
  workdir = tmp_path / 'ruined'
  shutil.copytree(killed_run[0], workdir)
  steps = checkpoint.steps(workdir)
  for i, step in enumerate(steps):
    damage(workdir / 'checkpoints' / str(step), DAMAGES[i % len(DAMAGES)])
  before = sorted(p.name for p in (workdir / 'checkpoints').iterdir())
  result = run(workdir, cache=cache, fields=overrides(**EVERY_STEP))
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith(f'error: {workdir / "checkpoints"} holds no intact checkpoint')
  assert '--fresh' in lines[0]
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == before  # untouched

  fresh = run(workdir, '--fresh', cache=cache,
              fields=overrides(**EVERY_STEP, train__num_steps=2))
  assert fresh.returncode == 0, fresh.stderr[-3000:]
  previous = list(workdir.glob('previous-*'))
  assert len(previous) == 1
  assert sorted(p.name for p in (previous[0] / 'checkpoints').iterdir()) == before
  assert (previous[0] / 'metrics.jsonl').exists()
  assert checkpoint.steps(workdir) == [1, 2]
  logged, full = logged_steps(workdir), logged_steps(full_run[0])
  assert [s['step'] for s in logged] == [1, 2]
  assert [s['loss'] for s in logged] == [s['loss'] for s in full[:2]]


RESTORE_DAMAGED = """
import sys
from pathlib import Path
import jax, numpy as np
from revisit_jax import checkpoint
from tests.test_main import DAMAGES, damage
state = {f'w{i}': np.random.default_rng(i).random((64, 257), np.float32) for i in range(300)}
mngr = checkpoint.manager(sys.argv[1], async_save=False)
for step, how in enumerate(DAMAGES[:2] * 2):
  checkpoint.save(mngr, step, state, {'step': step})
  mngr.wait_until_finished()
  damage(Path(sys.argv[1]) / 'checkpoints' / str(step), how)
checkpoint.close(mngr)
device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
template = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device) for k, v in state.items()}
try:
  checkpoint.restore_newest_intact(sys.argv[1], template)
except checkpoint.NoIntactCheckpoint as e:
  sys.exit(f'error: {e}')  # and the process ends while nothing else may be left in flight
"""


def test_failed_restores_leave_no_reads_behind(tmp_path):
  """A read failing makes orbax give up on some hundred others in flight; a process that
  reports it and exits prints its one line and nothing from them (without draining them,
  600 to 9,000 lines of tracebacks)."""
  result = subprocess.run([sys.executable, '-c', RESTORE_DAMAGED, str(tmp_path)], cwd=ROOT,
                          env=env(tmp_path / 'cache'), capture_output=True, text=True,
                          timeout=300)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith(f'error: {tmp_path / "checkpoints"} holds no intact checkpoint')


def test_checkpoint_reads_back_without_warnings(full_run, caplog):
  """The restore template comes from the checkpoint's own metadata, not a missing file."""
  workdir, _ = full_run
  with caplog.at_level(logging.WARNING):
    state, meta = checkpoint.restore(workdir)
  assert meta['step'] == STEPS and int(state['step']) == STEPS
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_workdir_of_another_config_is_refused(full_run, cache):
  workdir, _ = full_run
  before = sorted(p.name for p in (workdir / 'checkpoints').iterdir())
  result = run(workdir, cache=cache,
               fields=overrides(optim__base_lr=0.1, method__temperature=0.1))
  assert result.returncode != 0
  assert 'another run' in result.stderr
  assert 'optim.base_lr: checkpoint 0.06, now 0.1' in result.stderr
  assert 'method.temperature' in result.stderr
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == before


def test_config_typo_is_rejected_at_start(tmp_path, cache):
  result = run(tmp_path / 'typo', '--config.optim.lrr=1', cache=cache, timeout=120)
  assert result.returncode != 0
  assert 'lrr' in result.stderr and 'Traceback' not in result.stderr
  assert not (tmp_path / 'typo').exists()


def test_impossible_combination_is_rejected_at_start(tmp_path, cache):
  result = run(tmp_path / 'bad', '--config.method.queue_size=100', cache=cache, timeout=120)
  assert result.returncode != 0
  assert 'config.method.queue_size=100 is not a multiple of config.data.global_batch=32' in (
      result.stderr)
  assert not (tmp_path / 'bad').exists()


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, cache):
  workdir = tmp_path / 'diverged'
  fields = overrides(**MOCO, optim__base_lr=1e30, train__checkpoint_every_steps=1)
  result = run(workdir, cache=cache, fields=fields)
  assert result.returncode != 0
  assert 'non-finite loss at step' in result.stderr
  bad = int(result.stderr.split('non-finite loss at step ')[1].split()[0])
  assert 1 < bad <= STEPS
  assert f'the last checkpoint (step {bad - 1}) is intact' in result.stderr
  assert checkpoint.latest_step(workdir) == bad - 1
  state, meta = arrays(workdir)
  assert meta['step'] == bad - 1
  assert all(np.isfinite(v).all() for v in state.values())
  logged = logged_steps(workdir)
  assert all(np.isfinite(s['loss']) for s in logged) and logged[-1]['step'] < bad


def test_update_that_overflows_the_weights_is_not_checkpointed(tmp_path, cache):
  """At lr 1e38 step 1's loss is finite but its update is not: nothing may be saved."""
  workdir = tmp_path / 'overflow'
  fields = overrides(**MOCO, optim__base_lr=1e38, train__checkpoint_every_steps=1)
  result = run(workdir, cache=cache, fields=fields)
  assert result.returncode != 0
  assert 'non-finite weights or statistics after step 1' in result.stderr
  assert 'no checkpoint was written' in result.stderr
  assert checkpoint.latest_step(workdir) is None
  assert all(np.isfinite(s['loss']) for s in logged_steps(workdir))


@pytest.mark.parametrize('user_flags, devices', [('', 3), ('--xla_force_host_platform_device_count=2', 2)])
def test_config_xla_flags_reach_xla_and_yield_to_the_users(user_flags, devices, tmp_path):
  """main.use_xla_flags runs after every import of main.py and still reaches XLA; a flag the
  user put in $XLA_FLAGS wins over the config's."""
  code = ('from revisit_jax import main, train\n'
          "main.use_xla_flags('--xla_force_host_platform_device_count=3')\n"
          'import jax; print(jax.device_count())')
  environment = {**env(tmp_path), 'XLA_FLAGS': user_flags}
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=environment,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split()[-1] == str(devices)


def test_config_xla_flags_refuse_a_word_that_would_hide_the_flags_after_it(tmp_path, cache):
  result = run(tmp_path / 'wd', cache=cache,
               fields=overrides(train__xla_flags='--xla_cpu_multi_thread_eigen=false threads=1'))
  assert result.returncode == 2
  assert result.stderr.strip() == ("error: config.train.xla_flags: 'threads=1' is not an XLA "
                                   'flag (--name=value)')


def test_demo_learns_features_better_than_its_initialisation(demo_run):
  workdir, result = demo_run  # configs/demo.py as it ships
  knn = json.loads((workdir / 'knn_final.json').read_text())
  assert knn['learned_top1'] > knn['random_init_top1'] + 15  # points (measured +26.6, +26.7)
  # Its curves: the path is printed; the picture shows the monitor every few epochs of 11 steps.
  assert f"Training curves: {workdir / 'report.png'}" in result.stdout
  assert (workdir / 'report.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  shown = json.loads((workdir / 'report.json').read_text())['metrics']['monitor/knn_top1']
  monitor = [s for s in logged_steps(workdir) if 'monitor/knn_top1' in s]
  config = demo.get_config()
  every, last = 1440 // 128 * config.monitor.every_epochs, 1440 // 128 * config.optim.epochs
  assert [s['step'] for s in monitor] == shown['step'] == list(range(every, last + 1, every))
  assert shown['value'][-1] == pytest.approx(knn['learned_top1'])  # the same final network
