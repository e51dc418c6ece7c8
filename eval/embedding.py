"""A 2-D map of frozen features, coloured by class, with the weighted kNN top-1 in the title.

  python -m eval.embedding runs/demo --out runs/demo/embedding.png        # the demo set
  python -m eval.embedding WEIGHTS --data DIR --out map.png [--method umap]

The mapped images are the test split (val for a folder without test/), their features the
L2-normalised pooled ones of eval.knn (centre crops); the title's kNN top-1 classifies them
against the train split as eval.knn does (k 20, temperature 0.07). The map is scikit-learn's
t-SNE (PCA init), or UMAP where the `umap` package is installed (--method auto picks it).
Sets larger than --max_points are mapped through a random subset of that size (the kNN
top-1 still counts every image). The numbers go to the JSON beside the PNG.
"""

import argparse
import importlib.util
from pathlib import Path

import numpy as np

from eval import common, knn
from revisit_jax.knn import knn_predict


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.add_weights_args(parser, json_out=False)
  knn.add_data_args(parser, data='demo')
  parser.add_argument('--out', required=True, help='PNG to write; the JSON goes beside it')
  parser.add_argument('--method', choices=('auto', 'tsne', 'umap'), default='auto',
                      help='auto: UMAP if the umap package is installed, else t-SNE')
  parser.add_argument('--k', type=int, default=20)
  parser.add_argument('--temperature', type=float, default=0.07)
  parser.add_argument('--max_points', type=int, default=5000)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  if not args.out.lower().endswith('.png'):
    parser.error(f'--out {args.out}: the map is written as PNG; name it *.png')
  if args.max_points < 2:
    parser.error(f'--max_points {args.max_points}: must be at least 2')
  umap_installed = importlib.util.find_spec('umap') is not None
  if args.method == 'umap' and not umap_installed:
    parser.error('--method umap: the umap package is not installed (pip install umap-learn)')
  if args.method == 'auto':
    args.method = 'umap' if umap_installed else 'tsne'
  knn.check_data_args(parser, args)
  return args


def project(features: np.ndarray, method: str, seed: int) -> np.ndarray:
  """[N, D] -> [N, 2]."""
  if method == 'umap':
    import umap
    return umap.UMAP(n_components=2, random_state=seed).fit_transform(features)
  from sklearn.manifold import TSNE
  perplexity = min(30.0, (len(features) - 1) / 3)  # scikit-learn needs perplexity < N
  return TSNE(n_components=2, init='pca', perplexity=perplexity,
              random_state=seed).fit_transform(features)


def draw(points, labels, classes, title, out: Path):
  """Scatter plot, one colour and legend entry per class, written as PNG (Agg canvas)."""
  from matplotlib import colormaps
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  figure = Figure(figsize=(8.5, 7), layout='constrained')
  FigureCanvasAgg(figure)
  ax = figure.add_subplot()
  colours = colormaps['tab10' if len(classes) <= 10 else 'tab20'].colors
  for c, name in enumerate(classes):
    here = labels == c
    if here.any():
      ax.scatter(points[here, 0], points[here, 1], s=10, alpha=0.8,
                 color=colours[c % len(colours)], label=f'{name} ({here.sum()})')
  ax.set_xlabel('dimension 1')
  ax.set_ylabel('dimension 2')
  ax.set_title(title)
  if len(classes) <= 20:
    ax.legend(loc='center left', bbox_to_anchor=(1.01, 0.5), fontsize='small', markerscale=2,
              title='class (images)')
  out.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(out, dpi=100)


def main(argv=None):
  args = parse_args(argv)
  device = common.pick_device()
  model = common.build_resnet(args.weights, device=device)
  train_x, train_y, test_x, test_y, classes, test_split = knn.both_splits(args, model, device)
  pred = knn_predict(train_x, train_y, test_x, ks=(args.k,), temperature=args.temperature,
                     num_classes=len(classes))[0]
  top1 = 100 * float(np.mean(pred == test_y))

  rng = np.random.default_rng(args.seed)
  shown = np.sort(rng.choice(len(test_y), min(args.max_points, len(test_y)), replace=False))
  points = project(test_x[shown], args.method, args.seed)
  name = 't-SNE' if args.method == 'tsne' else 'UMAP'
  title = (f'{name} of {Path(args.weights).name} features, {args.data}/{test_split} '
           f'({len(shown)} images)\nweighted kNN top-1 {top1:.1f} % (k={args.k}, bank: '
           f'{args.train_split}, {len(train_y)} images)')
  out = Path(args.out)
  draw(points, test_y[shown], classes, title, out)
  result = {'task': 'embedding', 'weights': str(args.weights), 'data': args.data,
            'train_split': args.train_split, 'test_split': test_split, 'method': args.method,
            'num_train': len(train_y), 'num_test': len(test_y), 'num_shown': len(shown),
            'k': args.k, 'temperature': args.temperature, 'knn_top1': top1,
            'png': str(out)}
  common.report(result, out.with_suffix('.json'))


if __name__ == '__main__':
  from revisit_jax import cli  # one-line errors, exit status 2
  cli.run(main)
