"""Every command on every bad input it can receive: one line on stderr, exit status 2, no
traceback; an unexpected error keeps its traceback.

The command lines run through tests/commands_child.py: each in its own process, as
`python -m MODULE ARG...`, forked after the slow imports, so some sixty of them take a minute
or two instead of ten. Two also run as plain subprocesses, with the libraries' own logging
left on, so what they print at import time is seen too.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from converters.import_torch import import_weights
from fixtures_eval import resnet50_pth, write_voc07, write_voc12  # noqa: F401  (a fixture)
from revisit_jax import cli
from test_converters import original_checkpoint, small_config
from test_davis import CAR_SHADOW
from test_main import ROOT, env

EVALS = ('eval.knn', 'eval.voc_svm', 'eval.retrieval', 'eval.segmentation', 'eval.davis',
         'eval.linear', 'eval.embedding')
ANY_RESNET = ('eval.knn', 'eval.linear', 'eval.embedding')  # any ResNet, rebuilt from its weights


class Payload:
  """An arbitrary object: weights_only loading refuses to unpickle it."""


@pytest.fixture(scope='module')
def bad(tmp_path_factory, resnet50_pth):  # noqa: F811
  """Paths of every kind of bad input, and the good inputs they are paired with."""
  d = tmp_path_factory.mktemp('bad_inputs')
  p = {'dir': d, 'missing': d / 'missing.pth', 'missing_dir': d / 'missing_dir',
       'empty': d / 'empty', 'texts': d / 'texts', 'noise': d / 'noise.pth',
       'evil': d / 'evil.pth', 'odd': d / 'odd.pth', 'resnet18': d / 'resnet18.pth',
       'resnet50': resnet50_pth, 'original': d / 'original.pth.tar', 'config': d / 'small.py',
       'run': d / 'run', 'damaged_run': d / 'damaged_run', 'classes': d / 'classes'}
  p['empty'].mkdir()
  p['texts'].mkdir()
  (p['texts'] / 'notes.txt').write_text('not an image\n')
  p['noise'].write_bytes(np.random.RandomState(0).bytes(1000))
  torch.save({'state_dict': {'conv1.weight': torch.zeros(1)}, 'payload': Payload()}, p['evil'])
  torch.save({'encoder.layer.weight': torch.zeros(2)}, p['odd'])
  torch.save(torchvision.models.resnet18().state_dict(), p['resnet18'])
  original_checkpoint(p['original'])  # resnet18, queues of test_converters.K entries
  p['config'].write_text('from tests.test_converters import small_config\n\n\n'
                         'def get_config():\n  return small_config()\n')
  import_weights(p['original'], p['run'], small_config(), steps_per_epoch=10)
  shutil.copytree(p['run'], p['damaged_run'])
  for metadata in (p['damaged_run'] / 'checkpoints').glob('*/state/_METADATA'):
    metadata.write_bytes(b'\x00not json')
  for split in ('train', 'val'):  # an image folder with a split that holds no class folder
    (p['classes'] / split).mkdir(parents=True)
  Image.new('RGB', (8, 8)).save(p['classes'] / 'train' / 'loose.png')
  p['voc07'], _ = write_voc07(d / 'voc07')
  p['voc12'] = write_voc12(d / 'voc12')
  return {k: str(v) for k, v in p.items()}


def cases(p):
  """(command line, what its error line must name) for every command and bad input."""
  main = ['revisit_jax.main', '--config', 'configs/demo.py', '--workdir', f'{p["dir"]}/wd']
  export = ['converters.export_torch']
  out = ['--out', f'{p["dir"]}/out.pth']
  imp = ['converters.import_torch']
  into = ['--out', f'{p["dir"]}/imported', '--config', p['config']]
  bench = ['revisit_jax.benchmark', '--config', 'configs/demo.py']
  inputs = ['input_pipeline.benchmark', '--seconds', '1']
  found = [
      (['revisit_jax.main', '--config', f'{p["dir"]}/nope.py', '--workdir', f'{p["dir"]}/wd'],
       'nope.py'),
      (['revisit_jax.main', '--config', 'configs/demo.py'], '--workdir'),
      (main + ['--config.optim.base_lr=abc'], 'base_lr'),
      (main + ['--config.optim.lrr=1'], 'lrr'),
      (main + ['--config.model.arch=resnet99'], 'resnet99'),
      (main + ['--config.train.checkpoint_every_steps=0'], 'checkpoint_every_steps'),
      (main + ['--config.crops.autoaugment_crops=(0, 9)'], 'autoaugment_crops'),
      (main + ['--config.crops.small_size=0'], 'small_size'),
      (main + ['--config.crops.num_small=-1'], 'num_small'),
      (main + [f'--config.data.source={p["missing_dir"]}'], p['missing_dir']),
      (main + [f'--config.data.source={p["empty"]}'], p['empty']),
      (main + [f'--config.data.source={p["texts"]}'], p['texts']),
      (main + [f'--config.monitor.source={p["missing_dir"]}'], p['missing_dir']),
      (['revisit_jax.main', '--config', 'configs/demo.py', '--workdir', p['noise']], p['noise']),
      (export + [p['missing_dir']] + out, p['missing_dir']),
      (export + [p['empty']] + out, p['empty']),
      (export + [p['noise']] + out, p['noise']),
      (export + [p['damaged_run']] + out, f'{p["damaged_run"]}/checkpoints/50 is damaged'),
      (export + [p['run'], '--step', '99'] + out, 'step 99'),
      (export + [p['run'], '--out', f'{p["noise"]}/out.pth'], p['noise']),
      (export + [p['run'], '--format', 'caffe'] + out, 'caffe'),
      (imp + [p['missing']] + into, p['missing']),
      (imp + [p['noise']] + into, p['noise']),
      (imp + [p['evil']] + into, 'weights_only'),
      (imp + [p['odd']] + into, p['odd']),
      (imp + [p['resnet50']] + into, 'mis-shaped'),
      (imp + [p['original']] + into + ['--config.method.queue_size=128'], 'queue_size'),
      (imp + [p['original']] + into + ['--config.model.arch=resnet99'], 'resnet99'),
      (imp + [p['original']] + into + ['--config.method.lrr=1'], 'lrr'),
      (imp + [p['original'], '--out', f'{p["dir"]}/imported', '--config',
              f'{p["dir"]}/nope.py'], 'nope.py'),
      (imp + [p['original'], '--out', f'{p["noise"]}/imported', '--config', p['config']],
       p['noise']),
      (imp + [p['original']], '--out'),
      (bench[:2] + [f'{p["dir"]}/nope.py'], 'nope.py'),
      (bench + ['--config.method.queue_size=100'], 'queue_size'),
      (bench + ['--config.optim.lrr=1'], 'lrr'),
      (bench + ['--steps=many'], 'steps'),
      (inputs + ['--source', p['missing_dir']], p['missing_dir']),
      (inputs + ['--source', p['empty']], p['empty']),
      (inputs + ['--source', p['texts']], p['texts']),
      (inputs + ['--layout', 'swav'], 'swav'),
  ]
  data = {'eval.knn': ['--data', p['classes']],
          'eval.voc_svm': ['--data', p['voc07']],
          'eval.retrieval': ['--data', p['voc12']],
          'eval.segmentation': ['--dataset', 'voc', '--data', p['voc12'],
                                '--workdir', f'{p["dir"]}/seg'],
          'eval.davis': ['--data', str(CAR_SHADOW)],
          'eval.linear': ['--data', p['classes'], '--workdir', f'{p["dir"]}/linear'],
          'eval.embedding': ['--data', p['classes'], '--out', f'{p["dir"]}/map.png']}
  for command in EVALS:
    data_flag = data[command].index('--data') + 1
    weight_cases = [(p['missing'], p['missing']), (p['empty'], p['empty']),
                    (p['noise'], p['noise']), (p['evil'], 'weights_only'), (p['odd'], p['odd'])]
    if command not in ANY_RESNET:
      weight_cases += [(p['resnet18'], 'not a ResNet-50'), (p['run'], 'not a ResNet-50')]
    for weights, named in weight_cases:
      found.append(([command, weights] + data[command], named))
    for folder in (p['missing_dir'], p['empty']):
      args = list(data[command])
      args[data_flag] = folder
      found.append(([command, p['resnet50']] + args, folder))
  found.append((['eval.knn', p['resnet50'], '--data', p['classes'], '--k', 'twenty'], 'twenty'))
  found.append((['eval.knn', p['resnet50'], '--data', p['texts']], 'train'))
  report = ['revisit_jax.report']
  found += [(report + [p['missing_dir']], p['missing_dir']), (report + [p['empty']], p['empty']),
            (report + [p['run'], '--out', f'{p["dir"]}/curves.jpg'], 'curves.jpg')]
  return found


def run_all(argvs, tmp_path):
  (tmp_path / 'cases.json').write_text(json.dumps(argvs))
  child = subprocess.run(
      [sys.executable, 'tests/commands_child.py', str(tmp_path / 'cases.json'),
       str(tmp_path / 'results.json')], cwd=ROOT, env=env(tmp_path / 'cache'),
      capture_output=True, text=True, timeout=1800)
  assert child.returncode == 0, child.stderr[-3000:]
  return json.loads((tmp_path / 'results.json').read_text())


def one_line_problem(result: dict, named: str) -> str | None:
  """Why `result` is not one `error: ...` line naming `named` with exit status 2, or None."""
  lines = [line for line in result['stderr'].splitlines() if line.strip()]
  if result['status'] != 2:
    return f'exit status {result["status"]}'
  if len(lines) != 1 or not lines[0].startswith('error: '):
    return f'{len(lines)} lines on stderr'
  if named not in lines[0]:
    return f'does not name {named!r}'
  return None


def test_every_command_reports_every_bad_input_in_one_line(bad, tmp_path):
  found = cases(bad)
  results = run_all([argv for argv, _ in found], tmp_path)
  problems = []
  for (argv, named), result in zip(found, results):
    problem = one_line_problem(result, named)
    if problem:
      problems.append(f'{" ".join(argv)}: {problem}:\n{result["stderr"][-2000:]}')
  commands = {argv[0] for argv, _ in found}
  print(f'\n{len(found)} bad inputs across {len(commands)} commands: one line each')
  assert not problems, '\n\n'.join(problems)
  assert commands == {'revisit_jax.main', 'converters.export_torch', 'converters.import_torch',
                      'revisit_jax.benchmark', 'input_pipeline.benchmark', 'revisit_jax.report',
                      *EVALS}


def test_a_fresh_interpreter_with_library_logging_on_prints_one_line(bad, tmp_path):
  """TensorFlow and JAX log at import unless told not to: nothing of it reaches stderr."""
  clean = {k: v for k, v in env(tmp_path).items() if not k.startswith('TF_')}
  for argv, named in (
      (['revisit_jax.main', '--config', 'configs/demo.py', '--workdir', f'{bad["dir"]}/wd',
        f'--config.data.source={bad["texts"]}'], bad['texts']),
      (['eval.knn', bad['resnet50'], '--data', 'tfds:no_such_dataset'], 'no_such_dataset')):
    result = subprocess.run([sys.executable, '-m', *argv], cwd=ROOT, env=clean,
                            capture_output=True, text=True, timeout=600)
    problem = one_line_problem({'status': result.returncode, 'stderr': result.stderr}, named)
    assert problem is None, f'{" ".join(argv)}: {problem}:\n{result.stderr[-3000:]}'


def test_expected_errors_become_one_line_and_others_keep_their_traceback(capsys, monkeypatch):
  def fails(error):
    def main(argv):
      raise error
    return main

  with pytest.raises(SystemExit) as stop:
    cli.run(fails(ValueError('config.x=3: expected\n  an even number')))
  assert stop.value.code == 2
  assert capsys.readouterr().err == 'error: config.x=3: expected an even number\n'
  with pytest.raises(SystemExit) as stop:
    cli.run(fails(FileNotFoundError(2, 'No such file or directory', 'w.pth')))
  assert stop.value.code == 2 and 'w.pth' in capsys.readouterr().err
  with pytest.raises(TypeError):  # a bug: the interpreter prints its traceback
    cli.run(fails(TypeError('unsupported operand')))
  monkeypatch.setenv('REVISIT_JAX_TRACEBACK', '1')
  with pytest.raises(ValueError):
    cli.run(fails(ValueError('shown with its traceback on request')))
