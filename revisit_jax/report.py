"""A run at a glance: one PNG (and the same numbers as JSON) from WORKDIR/metrics.jsonl.

  python -m revisit_jax.report runs/demo            # writes runs/demo/report.png, report.json
  python -m revisit_jax.report runs/ours --out ours.png

Panels over training steps: the loss terms, the InfoNCE top-1 / top-5, the kNN monitor's
top-1 (when the run had one), the learning rate and the throughput. A step logged twice (a
resumed run repeats the steps after its last checkpoint) counts with its latest value.
Needs only matplotlib (Agg, no display) and the metrics file: no TensorFlow or torch.
"""

import argparse
import json
from pathlib import Path

from revisit_jax import cli, files
from revisit_jax.logging_utils import METRICS_FILE

# (panel title, y label, [(metric, legend label)], factor): percentages are stored as fractions.
PANELS = (
    ('Loss terms', 'loss', [('loss', 'total'), ('infonce', 'InfoNCE'), ('knn', 'kNN loss')], 1),
    ('InfoNCE accuracy (positive key ranked first)', '%',
     [('acc1', 'top-1'), ('acc5', 'top-5')], 100),
    ('kNN monitor', 'top-1 %', [('monitor/knn_top1', 'weighted kNN top-1')], 1),
    ('Learning rate', 'lr', [('lr', 'lr')], 1),
    ('Throughput', 'images / s', [('images_per_s', 'all devices'),
                                  ('images_per_s_per_device', 'per device')], 1),
)


def read_metrics(workdir) -> dict[str, dict[int, float]]:
  """{metric: {step: value}} of WORKDIR/metrics.jsonl; a later line wins for the same step."""
  path = Path(workdir) / METRICS_FILE
  if not path.is_file():
    raise FileNotFoundError(f'{path}: no such file (is {workdir} a training workdir?)')
  series: dict[str, dict[int, float]] = {}
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      step = int(record.pop('step'))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
      raise ValueError(f'{path} line {number}: not a {{"step": ..., name: value}} record '
                       f'({type(e).__name__}: {e})') from None
    for name, value in record.items():
      series.setdefault(name, {})[step] = float(value)
  if not series:
    raise ValueError(f'{path}: no metrics logged yet')
  return series


def summary(series: dict[str, dict[int, float]]) -> dict:
  """The numbers the picture shows: each metric's steps and values in step order, and its last."""
  out = {}
  for name, by_step in sorted(series.items()):
    steps = sorted(by_step)
    out[name] = {'step': steps, 'value': [by_step[s] for s in steps], 'last': by_step[steps[-1]]}
  return out


def repeats(numbers: dict, name: str) -> bool:
  """Per-device throughput on one device is the total again: not drawn twice."""
  return (name == 'images_per_s_per_device' and 'images_per_s' in numbers
          and numbers[name]['value'] == numbers['images_per_s']['value'])


def plot(numbers: dict, title: str):
  """A matplotlib Figure (Agg canvas) with one panel per group of metrics the run logged."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  panels = [p for p in PANELS if any(name in numbers for name, _ in p[2])]
  columns = 2 if len(panels) > 1 else 1
  rows = -(-len(panels) // columns)
  figure = Figure(figsize=(6 * columns, 3.4 * rows), layout='constrained')
  FigureCanvasAgg(figure)
  for i, (panel_title, ylabel, metrics, factor) in enumerate(panels):
    ax = figure.add_subplot(rows, columns, i + 1)
    for name, label in metrics:
      if name in numbers and not repeats(numbers, name):
        values = [v * factor for v in numbers[name]['value']]
        ax.plot(numbers[name]['step'], values, marker='o' if len(values) < 20 else None,
                label=f'{label} (last {values[-1]:.4g})')
    ax.set_title(panel_title)
    ax.set_xlabel('training step')
    ax.set_ylabel(ylabel)
    if ylabel == 'lr':
      ax.ticklabel_format(axis='y', style='sci', scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
  figure.suptitle(title)
  return figure


def write(workdir, out=None) -> tuple[Path, Path]:
  """Writes the PNG (default WORKDIR/report.png) and the JSON beside it; returns both paths."""
  workdir = Path(workdir)
  numbers = summary(read_metrics(workdir))
  png = Path(out) if out else workdir / 'report.png'
  if png.suffix.lower() != '.png':
    raise ValueError(f'{png}: the picture is written as PNG; name it *.png')
  last_step = max(v['step'][-1] for v in numbers.values())
  title = f'{workdir.resolve().name}: {last_step} steps'
  if 'epoch' in numbers:
    title += f", epoch {numbers['epoch']['last']:.3g}"
  if 'monitor/knn_top1' in numbers:
    title += f", kNN top-1 {numbers['monitor/knn_top1']['last']:.1f} %"
  figure = plot(numbers, title)
  with files.replaced_atomically(png) as tmp:
    figure.savefig(tmp, dpi=100, format='png')
  data = png.with_suffix('.json')
  files.write_text(data, json.dumps({'workdir': str(workdir), 'title': title,
                                     'metrics': numbers}) + '\n')
  return png, data


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('workdir', help='training workdir (holds metrics.jsonl)')
  parser.add_argument('--out', default=None, help='PNG to write (default WORKDIR/report.png); '
                                                  'the JSON goes beside it')
  args = parser.parse_args(argv)
  if args.out and not args.out.lower().endswith('.png'):
    parser.error(f'--out {args.out}: the picture is written as PNG; name it *.png')
  png, data = write(args.workdir, args.out)
  print(json.dumps({'png': str(png), 'json': str(data)}))


if __name__ == '__main__':
  cli.run(main)
