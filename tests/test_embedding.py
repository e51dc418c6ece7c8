"""eval.embedding: a 2-D map of a labelled set's features with the kNN top-1 in its title."""

import json

import pytest
from PIL import Image

from eval import embedding
from fixtures_eval import single_thread


def test_demo_map_of_the_learned_weights(demo_run, tmp_path, capsys):
  workdir = demo_run[0]
  single_thread()
  embedding.main([str(workdir), '--out', str(tmp_path / 'map.png'), '--workers', '0',
                  '--max_points', '200'])  # the training workdir, the demo set by default
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert printed == json.loads((tmp_path / 'map.json').read_text())
  assert (printed['data'], printed['test_split'], printed['num_test'], printed['num_shown']) == (
      'demo', 'test', 360, 200)
  assert printed['method'] == ('umap' if embedding.importlib.util.find_spec('umap') else 'tsne')
  # The title's kNN top-1 is the training run's own final monitor (Flax, same crops, k, T).
  monitor = json.loads((workdir / 'knn_final.json').read_text())
  assert (printed['k'], printed['temperature']) == (monitor['k'], monitor['temperature'])
  assert printed['knn_top1'] == pytest.approx(monitor['learned_top1'], abs=0.6)  # 2 images
  with Image.open(tmp_path / 'map.png') as image:
    assert image.format == 'PNG' and image.size == (850, 700)


def test_bad_arguments(tmp_path):
  with pytest.raises(SystemExit):
    embedding.main([str(tmp_path / 'w.pth'), '--out', str(tmp_path / 'map.jpg')])
  with pytest.raises(FileNotFoundError, match='w.pth'):
    embedding.main([str(tmp_path / 'w.pth'), '--out', str(tmp_path / 'map.png')])
