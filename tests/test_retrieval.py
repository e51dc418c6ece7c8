"""Segment retrieval: K-means segments, majority labels, the subset rule, the CLI end to end."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from eval import retrieval
from fixtures_eval import (CELL, class_from_pixels, resnet50_pth, single_thread,  # noqa: F401
                           write_voc12)

single_thread()


def test_segments_recover_a_planted_partition():
  rng = np.random.default_rng(0)
  truth = rng.integers(0, 3, (6, 5))
  truth[0, :3] = [0, 1, 2]  # Every part present.
  directions = np.eye(16)[:3] * 5
  grid = directions[truth] + rng.normal(scale=0.1, size=(6, 5, 16))
  segments, descriptors = retrieval.segment(torch.tensor(grid).permute(2, 0, 1), 3, seed=0)
  # Same partition up to renaming the segments.
  pairs = set(zip(truth.ravel().tolist(), segments.ravel().tolist()))
  assert len(pairs) == 3 and len({p[1] for p in pairs}) == 3
  np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1, rtol=1e-5)
  for part, seg in pairs:  # Each descriptor points along its part's direction.
    assert descriptors[seg] @ directions[part] / 5 > 0.95


def test_more_clusters_than_cells_is_clamped():
  segments, descriptors = retrieval.segment(torch.randn(8, 2, 1), 5, seed=0)
  assert segments.shape == (2, 1) and len(descriptors) == 2


def test_majority_ignores_void_and_subset_relabels():
  segments = np.array([[0, 0, 1, 1], [0, 2, 1, 1]])
  mask = np.array([[12, 255, 1, 1], [12, 255, 0, 0]])  # Segment 2 is all void.
  counts = retrieval.class_counts(segments, mask, 3)
  assert counts[0, 12] == 2 and counts[1, 1] == 2 and counts[1, 0] == 2 and counts[2].sum() == 0
  labels, valid = retrieval.majority(counts)
  assert labels[0] == 12 and valid.tolist() == [True, True, False]
  # Dog (12) is outside the subset: segment 0 has no usable pixel left.
  labels, valid = retrieval.majority(counts, [0] + retrieval.SUBSET_IDS)
  assert valid.tolist() == [False, True, False] and labels[1] in (0, 1)
  np.testing.assert_array_equal(retrieval.subset_mask(mask),
                                [[255, 255, 1, 1], [255, 255, 0, 0]])


class ClassOneHot(torch.nn.Module):
  """A 'perfect' trunk for the VOC12 fixture: one-hot of the class read from the pixels."""

  def forward(self, x):
    classes = class_from_pixels(x)[:, CELL // 2::CELL, CELL // 2::CELL]
    return torch.nn.functional.one_hot(classes, 2048).permute(0, 3, 1, 2).float()


def test_perfect_features_give_miou_100(tmp_path, resnet50_pth, monkeypatch):  # noqa: F811
  data = write_voc12(tmp_path, n_train=4, n_val=3)
  monkeypatch.setattr(retrieval, 'resnet_trunk', lambda resnet: ClassOneHot())
  out = tmp_path / 'r.json'
  retrieval.main([str(resnet50_pth), '--data', str(data), '--size', '128', '--clusters', '3',
                  '--workers', '0', '--out', str(out)])
  result = json.loads(out.read_text())
  present = [c for c, v in result['iou'].items() if v is not None]
  assert len(present) >= 4 and all(result['iou'][c] == pytest.approx(100) for c in present)
  assert result['miou'] == pytest.approx(100)
  assert result['miou_subset'] == pytest.approx(100)


def test_cli_end_to_end_with_figure(tmp_path, resnet50_pth, capsys):  # noqa: F811
  data = write_voc12(tmp_path, n_train=3, n_val=2)
  out = tmp_path / 'res' / 'retrieval.json'
  retrieval.main([str(resnet50_pth), '--data', str(data), '--size', '64', '--clusters', '2',
                  '--workers', '0', '--figure_rows', '2', '--figure_topk', '3',
                  '--figure_tile', '48', '--out', str(out)])
  result = json.loads(out.read_text())
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
  assert list(result['iou']) == list(retrieval.CLASSES)
  assert list(result['iou_subset']) == list(retrieval.SUBSET)
  assert 0 <= result['miou'] <= 100 and 0 <= result['miou_subset'] <= 100
  assert result['query_segments'] <= 2 * 2 and result['bank_segments'] <= 3 * 2
  with Image.open(result['figure']) as figure:
    assert figure.size == (4 * 48, 2 * 48)


def test_missing_dataset_names_the_path(tmp_path, resnet50_pth):  # noqa: F811
  with pytest.raises(FileNotFoundError, match='no_voc_here'):
    retrieval.main([str(resnet50_pth), '--data', str(tmp_path / 'no_voc_here')])
