"""Pretrain: python -m revisit_jax.main --config CONFIG_FILE --workdir DIR [--config.FIELD=VALUE ...]

  python -m revisit_jax.main --config configs/demo.py --workdir runs/demo
  python -m revisit_jax.main --config configs/ours_800ep.py --workdir runs/ours \\
      --config.data.source=/data/coco/train2017

Running the same command again resumes from the newest intact checkpoint in DIR, whatever
killed the run (SIGTERM or SIGINT save and exit 0; after a SIGKILL or a crash the steps since
the last checkpoint are redone). A damaged checkpoint is reported in one warning line and moved
aside; if none is intact the program stops and --fresh starts again from step 0. An unknown
field, a value of the wrong type or an impossible combination stops the program before any
work, in one line on stderr and exit status 2.

Several hosts: under SLURM (SLURM_NTASKS > 1, one task per host) jax.distributed finds the
coordinator itself; elsewhere start one process per host with
  --coordinator_address=HOST0:PORT --num_processes=N --process_id=I
All processes form one mesh over all devices; each reads its share of every batch.
"""

import json
import os
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

from revisit_jax import cli, files, monitor, sharding, train_state

FINAL_KNN_FILE = 'knn_final.json'

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints, logs and exports.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'HOST:PORT of process 0 for a multi-host run.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in a multi-host run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process in a multi-host run.')
_FRESH = flags.DEFINE_bool('fresh', False, 'Start from step 0: first move what --workdir holds '
                           '(checkpoints, logs, exports) into WORKDIR/previous-<time>/.')
flags.mark_flags_as_required(['config', 'workdir'])


def init_distributed() -> None:
  """jax.distributed for explicit coordinator flags or a multi-task SLURM job; else nothing."""
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  slurm_tasks = int(os.environ.get('SLURM_NTASKS', '1'))
  if all(v is None for v in explicit) and slurm_tasks <= 1:
    return
  # CPU-only processes need a collectives backend; accelerators ignore this setting.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if any(v is None for v in explicit):
    if any(v is not None for v in explicit):
      raise app.UsageError('--coordinator_address, --num_processes and --process_id go together')
    jax.distributed.initialize()  # SLURM: everything from the environment
  else:
    jax.distributed.initialize(coordinator_address=explicit[0], num_processes=explicit[1],
                               process_id=explicit[2])


def use_xla_flags(config_flags: str) -> None:
  """The config's XLA flags, before $XLA_FLAGS so that a flag set there wins. JAX hands them
  to XLA when it starts its backends, at the first device query, which comes later."""
  for word in config_flags.split():
    if not word.startswith('--'):  # XLA would drop the flags after it without a word
      raise ValueError(f'config.train.xla_flags: {word!r} is not an XLA flag (--name=value)')
  if config_flags:
    os.environ['XLA_FLAGS'] = f"{config_flags} {os.environ.get('XLA_FLAGS', '')}".strip()


def report(summary: dict) -> None:
  """The end of the run on stdout: kNN comparison (if any) and a JSON summary line."""
  if summary['stopped']:
    print(f"Stopped at step {summary['step']}; run the same command again to resume.")
  knn = summary.get('knn')
  if knn:
    print(f"Weighted kNN top-1 on {knn['source']}/{knn['test_split']} (k={knn['k']}): "
          f"learned {knn['learned_top1']:.1f} %, same network at initialisation "
          f"{knn['random_init_top1']:.1f} %")
  if summary.get('export'):
    print(f"torchvision weights: {summary['export']}")
  print(json.dumps(summary))


def final_knn(config, state) -> dict:
  """kNN top-1 of the trained network and of the same network at its initialisation."""
  from revisit_jax.train import open_monitor
  splits = open_monitor(config)
  fresh = train_state.create_train_state(config, sharding.make_mesh(),
                                         jax.random.PRNGKey(config.train.seed))
  return {'learned_top1': monitor.knn_top1(config, state.params, state.batch_stats, splits),
          'random_init_top1': monitor.knn_top1(config, fresh.params, fresh.batch_stats, splits),
          'source': config.monitor.source, 'test_split': config.monitor.test_split,
          'k': config.monitor.k, 'temperature': config.monitor.temperature,
          'step': int(state.step)}


def write_curves(workdir) -> None:
  """The run's curves (revisit_jax.report) as WORKDIR/report.png; prints where."""
  from revisit_jax import report as curves
  try:
    png, _ = curves.write(workdir)
  except (FileNotFoundError, ValueError) as e:  # nothing logged yet
    print(f'No training curves: {e}')
    return
  print(f'Training curves: {png}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    config = _CONFIG.value.lock()  # a config file that failed to load raises here
  except OSError as e:
    raise OSError(f'--config: {cli.one_line(e)}') from None
  use_xla_flags(config.train.xla_flags)
  init_distributed()
  from revisit_jax import train
  workdir = Path(_WORKDIR.value).absolute()
  summary, state = train.train(config, workdir, fresh=_FRESH.value)
  if not summary['stopped']:
    if config.monitor.final_vs_random:
      summary['knn'] = final_knn(config, state)
      if jax.process_index() == 0:
        files.write_text(workdir / FINAL_KNN_FILE, json.dumps(summary['knn'], indent=2) + '\n')
    if config.train.export_torch:
      from converters import export_torch
      summary['export'] = export_torch.export_trained(workdir, config, state)
  if jax.process_index() == 0:
    write_curves(_WORKDIR.value)
    report(summary)


if __name__ == '__main__':
  cli.run_absl(main)
