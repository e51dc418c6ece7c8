"""Weighted kNN (revisit_jax.knn) and the eval.knn command."""

import json

import numpy as np
import pytest
from PIL import Image

from eval import knn as eval_knn
from fixtures_eval import resnet50_pth  # noqa: F401  (pytest fixture)
from revisit_jax.knn import knn_accuracy, knn_predict


def reference_scores(train_x, train_y, test_x, k, temperature, num_classes):
  """Float64 brute force: class scores [n_test, num_classes] of the weighted vote."""
  train_x = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
  test_x = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
  scores = np.zeros((len(test_x), num_classes))
  for i, q in enumerate(test_x):
    sims = train_x @ q
    for j in np.argsort(-sims)[:k]:
      scores[i, train_y[j]] += np.exp(sims[j] / temperature)
  return scores


def test_matches_float64_reference():
  rng = np.random.default_rng(0)
  train_x = rng.normal(size=(300, 16))
  train_y = rng.integers(0, 5, 300)
  test_x = rng.normal(size=(45, 16)) * rng.uniform(0.5, 3, (45, 1))  # norms do not matter
  ks = (1, 20, 200)
  got = knn_predict(train_x.astype(np.float32), train_y, test_x.astype(np.float32), ks=ks,
                    temperature=0.07, batch_size=16)  # 3 batches, the last one padded
  assert got.shape == (3, 45)
  for row, k in zip(got, ks):
    scores = reference_scores(train_x, train_y, test_x, k, 0.07, 5)
    top2 = np.sort(scores, axis=1)[:, -2:]
    clear = top2[:, 1] > 1.001 * top2[:, 0]  # skip near ties float32 may break either way
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(row[clear], scores.argmax(1)[clear])


def test_temperature_weights_the_votes_hand_case():
  # Neighbours of the query e0: one of class 0 at cosine 0.9, two of class 1 at cosine 0.8.
  # T = 0.07: exp(0.9/T) = 3.8e5 > 2 exp(0.8/T) = 1.8e5 -> class 0.
  # T = 1:    exp(0.9) = 2.46 < 2 exp(0.8) = 4.45 -> class 1.
  def unit(c):
    return np.array([c, np.sqrt(1 - c * c), 0.0], np.float32)

  train_x = np.stack([unit(0.9), unit(0.8), unit(0.8), [0, 0, 1], [0, 0, 1]]).astype(np.float32)
  train_y = np.array([0, 1, 1, 2, 2])
  query = np.array([[1, 0, 0]], np.float32)
  assert knn_predict(train_x, train_y, query, ks=(3,), temperature=0.07)[0, 0] == 0
  assert knn_predict(train_x, train_y, query, ks=(3,), temperature=1.0)[0, 0] == 1
  assert knn_predict(train_x, train_y, query, ks=(1,), temperature=1.0)[0, 0] == 0
  assert knn_accuracy(train_x, train_y, query, [1], k=3, temperature=1.0) == 1.0


def test_bad_arguments():
  x = np.eye(3, dtype=np.float32)
  with pytest.raises(ValueError, match='k='):
    knn_predict(x, [0, 1, 2], x, ks=(4,))
  with pytest.raises(ValueError, match='3 train features but 2 labels'):
    knn_predict(x, [0, 1], x, ks=(1,))
  with pytest.raises(ValueError, match='labels must lie in 0..1'):
    knn_predict(x, [0, 1, 2], x, ks=(1,), num_classes=2)


# ---------------------------------------------------------------- the command

COLOURS = {'red': (220, 30, 30), 'green': (30, 200, 40), 'blue': (30, 40, 220)}


def write_folder(root, per_split):
  rng = np.random.default_rng(0)
  for split, count in per_split.items():
    for name, colour in COLOURS.items():
      (root / split / name).mkdir(parents=True)
      for i in range(count):
        pixels = np.clip(np.array(colour) + rng.integers(-10, 10, (40, 48, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f'{i}.png')


def test_command_on_folder(resnet50_pth, tmp_path, capsys):  # noqa: F811
  write_folder(tmp_path / 'data', {'train': 5, 'val': 2})
  eval_knn.main([str(resnet50_pth), '--data', str(tmp_path / 'data'), '--size', '32',
                 '--k', '1', '5', '--workers', '0', '--out', str(tmp_path / 'r.json')])
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out == json.loads((tmp_path / 'r.json').read_text())
  assert out['test_split'] == 'val' and out['num_train'] == 15 and out['num_test'] == 6
  assert out['top1'] == {'1': 100.0, '5': 100.0}


def test_command_bad_folders(resnet50_pth, tmp_path):  # noqa: F811
  with pytest.raises(FileNotFoundError, match='nowhere'):
    eval_knn.main([str(resnet50_pth), '--data', str(tmp_path / 'nowhere')])
  (tmp_path / 'flat' / 'train').mkdir(parents=True)
  (tmp_path / 'flat' / 'val').mkdir()
  with pytest.raises(FileNotFoundError, match='flat/train.*one sub-folder of images per class'):
    eval_knn.main([str(resnet50_pth), '--data', str(tmp_path / 'flat'), '--workers', '0'])


def test_command_on_tfds(resnet50_pth, tmp_path, capsys):  # noqa: F811
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    eval_knn.main([str(resnet50_pth), '--data', 'tfds:mnist', '--size', '32', '--k', '3',
                   '--batch_size', '4'])
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out['test_split'] == 'test' and out['num_train'] == out['num_test'] == 8
  assert 0 <= out['top1']['3'] <= 100


def test_tfds_not_prepared(resnet50_pth, tmp_path):  # noqa: F811
  pytest.importorskip('tensorflow_datasets')
  with pytest.raises(FileNotFoundError, match="'mnist'.*empty-dir"):
    eval_knn.main([str(resnet50_pth), '--data', 'tfds:mnist',
                   '--tfds_data_dir', str(tmp_path / 'empty-dir')])
