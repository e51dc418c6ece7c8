"""revisit_jax.report: a run's curves as one PNG and the same numbers as JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from revisit_jax import report

ROOT = Path(__file__).resolve().parents[1]


def write_metrics(workdir, lines):
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(line) + '\n' for line in lines))


def test_picture_and_numbers_of_a_resumed_run(tmp_path, capsys):
  lines = [{'step': s, 'loss': 7 - s / 10, 'infonce': 5 - s / 20, 'knn': 2 - s / 20,
            'acc1': s / 100, 'acc5': s / 50, 'lr': 0.06, 'epoch': s / 4,
            'images_per_s': 100.0 + s, 'images_per_s_per_device': 50.0 + s} for s in (2, 4, 6)]
  lines.append({'step': 4, 'monitor/knn_top1': 41.5})
  # Resumed from the step-4 checkpoint: step 6 is logged again, with other values.
  lines += [{**lines[2], 'loss': 6.0}, {**lines[1], 'step': 8, 'loss': 5.5},
            {'step': 8, 'monitor/knn_top1': 52.25}]
  write_metrics(tmp_path / 'run', lines)
  report.main([str(tmp_path / 'run')])
  printed = json.loads(capsys.readouterr().out)
  assert printed == {'png': str(tmp_path / 'run' / 'report.png'),
                     'json': str(tmp_path / 'run' / 'report.json')}
  numbers = json.loads(Path(printed['json']).read_text())
  metrics = numbers['metrics']
  assert metrics['loss']['step'] == [2, 4, 6, 8]
  assert metrics['loss']['value'] == [6.8, 6.6, 6.0, 5.5]  # the later step 6 wins
  assert metrics['monitor/knn_top1'] == {'step': [4, 8], 'value': [41.5, 52.25], 'last': 52.25}
  assert metrics['images_per_s_per_device']['value'] == [52.0, 54.0, 56.0, 54.0]
  assert numbers['title'] == 'run: 8 steps, epoch 1, kNN top-1 52.2 %'
  with Image.open(printed['png']) as image:
    assert image.format == 'PNG' and image.size == (1200, 1020)  # 3 rows of 2 panels


def test_bad_input_names_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='nothing/metrics.jsonl'):
    report.write(tmp_path / 'nothing')
  write_metrics(tmp_path / 'run', [{'step': 1, 'loss': 2.0}])
  with open(tmp_path / 'run' / 'metrics.jsonl', 'a') as f:
    f.write('{"loss": 1.0}\n')
  with pytest.raises(ValueError, match='metrics.jsonl line 2'):
    report.write(tmp_path / 'run')
  with pytest.raises(SystemExit):
    report.main([str(tmp_path / 'run'), '--out', str(tmp_path / 'r.jpg')])


def test_imports_neither_tensorflow_nor_torch_nor_the_bridge():
  code = ('import sys, revisit_jax.report; '
          "print(sorted({m.split('.')[0] for m in sys.modules} & "
          "{'tensorflow', 'torch', 'converters', 'eval'}))")
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       check=True).stdout
  assert out.strip() == '[]'
