"""VOC07 SVM: the label reader, the two protocols on planted features, the CLI against the
original's and the benchmark's code paths (written out here: they download VOC and need CUDA)."""
import functools
import io
import json

import numpy as np
import pytest
import torch
from sklearn.model_selection import cross_val_score
from sklearn.svm import LinearSVC

from eval import common, voc_svm
from input_pipeline import tfds_eval
from fixtures_eval import resnet50_pth, single_thread, write_voc07  # noqa: F401  (pytest fixture)

single_thread()


def planted(n, labels, rng, strength=3.0):
  """L2-normalised features where dimension k carries class k: linearly separable per class."""
  x = rng.normal(scale=0.1, size=(n, 64))
  x[:, :20] += strength * (labels == 1)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def random_labels(n, rng):
  y = np.where(rng.random((n, 20)) < 0.3, 1, -1)
  y[np.arange(n), np.arange(n) % 20] = 1  # At least n // 20 positives per class.
  return y


@pytest.mark.parametrize('protocol', ['original', 'costsweep'])
def test_separable_classes_give_ap_near_100(protocol):
  rng = np.random.default_rng(0)
  train_y, test_y = random_labels(90, rng), random_labels(60, rng)
  result = voc_svm.evaluate_svms(planted(90, train_y, rng), train_y, planted(60, test_y, rng),
                                 test_y, protocol, jobs=2)
  assert set(result['ap']) == set(voc_svm.CLASSES)
  assert min(result['ap'].values()) > 99.0
  assert result['mAP'] == pytest.approx(np.mean(list(result['ap'].values())))
  if protocol == 'costsweep':
    assert set(result['cost'].values()) <= set(voc_svm.COSTS)


def test_difficult_test_images_count_as_negative_only_in_the_original_protocol():
  rng = np.random.default_rng(1)
  train_y, test_y = random_labels(90, rng), random_labels(60, rng)
  test_x = planted(60, test_y, rng)
  # Two test images are "difficult" for class 0 (absent from the others) and look like the
  # purest class-0 image possible, so they outrank every real positive.
  difficult = np.flatnonzero(test_y[:, 0] == -1)[:2]
  test_x[difficult] = np.eye(64)[0]
  test_y[difficult] = -1
  test_y[difficult, 0] = 0
  train_x = planted(90, train_y, rng)
  original = voc_svm.evaluate_svms(train_x, train_y, test_x, test_y, 'original', jobs=1)
  sweep = voc_svm.evaluate_svms(train_x, train_y, test_x, test_y, 'costsweep', jobs=1)
  assert original['ap']['aeroplane'] < 95.0
  assert sweep['ap']['aeroplane'] > 99.0


def test_reader_returns_the_written_labels(tmp_path):
  root, labels = write_voc07(tmp_path)
  for split in ('trainval', 'test'):
    paths, y = voc_svm.read_voc07_split(root, split)
    np.testing.assert_array_equal(y, labels[split])
    assert all(p.is_file() and p.suffix == '.jpg' for p in paths)


def test_reader_errors_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match='nowhere'):
    voc_svm.read_voc07_split(tmp_path / 'nowhere', 'trainval')
  root, _ = write_voc07(tmp_path)
  (root / 'ImageSets' / 'Main' / 'cow_test.txt').unlink()
  with pytest.raises(FileNotFoundError, match='cow_test.txt'):
    voc_svm.read_voc07_split(root, 'test')
  (root / 'ImageSets' / 'Main' / 'dog_trainval.txt').write_text('000000 yes\n')
  with pytest.raises(ValueError, match='dog_trainval.txt'):
    voc_svm.read_voc07_split(root, 'trainval')


# ---------------------------------------------------------------- the references' code paths

def original_ap(targets, preds):
  """get_precision_recall + calculate_ap of the original's evaluation/voc_svm/metrics.py (and
  the benchmark's svm_helper.py): argsort then reversed, VOC2010+ area under the envelope."""
  positive = (np.asarray(targets) > 0).astype(np.float64)
  order = np.argsort(preds)[::-1]
  tp = np.cumsum(positive[order])
  fp = np.cumsum(1 - positive[order])
  rec = np.concatenate([[0], tp / positive.sum(), [1]])
  prec = np.concatenate([[0], tp / (tp + fp), [0]])
  for i in range(len(prec) - 2, -1, -1):
    prec[i] = max(prec[i], prec[i + 1])
  steps = np.flatnonzero(rec[1:] != rec[:-1]) + 1
  return float(np.sum((rec[steps] - rec[steps - 1]) * prec[steps]))


def reference_features(voc, split, weights, resize, crop):
  """The original main.py's features: torchvision transforms on PIL, the pooled ResNet-50
  output divided by its norm + 1e-5; labels with 0 (difficult) kept for the caller."""
  import torchvision
  from PIL import Image
  from torchvision import transforms
  transform = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop),
                                  transforms.ToTensor(),
                                  transforms.Normalize([0.485, 0.456, 0.406],
                                                       [0.229, 0.224, 0.225])])
  rows = {}
  for k, name in enumerate(voc_svm.CLASSES):  # voc.py: read_object_labels, in file order
    for line in (voc / 'ImageSets' / 'Main' / f'{name}_{split}.txt').read_text().splitlines():
      image_id, label = line.split()
      rows.setdefault(image_id, np.zeros(20))[k] = int(label)
  model = torchvision.models.resnet50()
  model.load_state_dict(torch.load(weights, weights_only=True))
  model.fc = torch.nn.Identity()
  images = torch.stack([transform(Image.open(voc / 'JPEGImages' / f'{i}.jpg').convert('RGB'))
                        for i in rows])
  with torch.no_grad():
    feats = model.eval()(images).numpy()
  feats = feats / (np.linalg.norm(feats, axis=1) + 1e-5)[:, np.newaxis]
  return feats, np.stack(list(rows.values()))


def reference_svm(cost):
  # random_state as ours (the references leave liblinear's shuffling unseeded).
  return LinearSVC(C=cost, class_weight={1: 2, -1: 1}, intercept_scaling=1.0, penalty='l2',
                   loss='squared_hinge', tol=1e-4, dual=True, max_iter=2000, random_state=0)


def original_protocol(train_x, train_y, test_x, test_y):
  """main.py: labels 0 -> -1 in train and test, C = 0.5, AP x100 per class."""
  train_y, test_y = np.where(train_y == 0, -1, train_y), np.where(test_y == 0, -1, test_y)
  return [100 * original_ap(test_y[:, k], reference_svm(0.5).fit(train_x, train_y[:, k])
                            .decision_function(test_x)) for k in range(20)], None


def benchmark_protocol(train_x, train_y, test_x, test_y, costs):
  """train_svm_kfold.py + test_svm.py (targets remapped as create_voc_data_files.py: difficult
  negative in train, left out of test): per class the cost of the best mean 3-fold CV AP."""
  aps, chosen = [], []
  for k in range(20):
    y = np.where(train_y[:, k] == 1, 1, -1)
    cv = [cross_val_score(reference_svm(c), train_x, y, cv=3, scoring='average_precision').mean()
          for c in costs]
    cost = costs[int(np.argmax(cv))]
    keep = test_y[:, k] != 0
    scores = reference_svm(cost).fit(train_x, y).decision_function(test_x[keep])
    aps.append(100 * original_ap(test_y[keep, k], scores))
    chosen.append(cost)
  return aps, chosen


@pytest.mark.parametrize('protocol', ['original', 'costsweep'])
def test_cli_equals_the_references_on_photos(tmp_path, resnet50_pth, capsys,  # noqa: F811
                                             protocol):
  root, labels = write_voc07(tmp_path)
  out = tmp_path / 'res' / 'voc.json'
  voc_svm.main([str(resnet50_pth), '--data', str(root), '--protocol', protocol, '--resize', '72',
                '--crop', '64', '--batch_size', '4', '--workers', '0', '--jobs', '2',
                '--costs', '0.01,1', '--out', str(out)])
  result = json.loads(out.read_text())
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
  assert result['num_trainval'] == len(labels['trainval'])
  assert result['num_test'] == len(labels['test'])
  assert list(result['ap']) == list(voc_svm.CLASSES) and result['ap_method'] == 'area'
  train = reference_features(root, 'trainval', resnet50_pth, 72, 64)
  test = reference_features(root, 'test', resnet50_pth, 72, 64)
  np.testing.assert_array_equal(train[1], labels['trainval'])
  if protocol == 'original':
    aps, costs = original_protocol(*train, *test)
  else:
    aps, costs = benchmark_protocol(*train, *test, [0.01, 1.0])
    assert list(result['cost'].values()) == costs
  np.testing.assert_allclose(list(result['ap'].values()), aps, atol=1e-9)
  assert result['mAP'] == pytest.approx(np.mean(aps), abs=1e-9)
  assert len(set(np.round(aps, 6))) > 5  # the photos give varied APs, not all 100


def test_features_are_divided_by_norm_plus_1e5():
  x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-5, 0.0]])
  np.testing.assert_allclose(voc_svm.normalize_features(x),
                             [[3 / (5 + 1e-5), 4 / (5 + 1e-5)], [0, 0], [0.5, 0]])


@functools.cache
def _tiny_voc_class():
  """A TFDS builder with voc/2007's label features and JPEG photos (registered once per
  process)."""
  import tensorflow_datasets as tfds
  from PIL import Image
  from sklearn.datasets import load_sample_image

  photo = Image.fromarray(load_sample_image('china.jpg'))

  class TinyVoc(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      label = tfds.features.ClassLabel(names=voc_svm.CLASSES)
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(encoding_format='jpeg'),
        'labels': tfds.features.Sequence(label),
        'labels_no_difficult': tfds.features.Sequence(label),
      }))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(split, n)
              for split, n in (('train', 2), ('validation', 1), ('test', 3))}

    def _generate_examples(self, split, n):
      for k in range(n):
        jpeg = io.BytesIO()
        photo.resize((64 + 8 * k, 48), Image.BILINEAR).save(jpeg, 'JPEG', quality=90)
        labels = [k, 5 + k, 19]  # k + 5: difficult only
        yield f'{split}{k}', {'image': jpeg.getvalue(), 'labels': labels,
                              'labels_no_difficult': [k, 19]}

  return TinyVoc


def _tiny_voc(data_dir, file_format='tfrecord'):
  """The tiny VOC prepared locally (no download), stored as `file_format`."""
  _tiny_voc_class()(data_dir=data_dir, file_format=file_format).download_and_prepare()
  return 'tiny_voc'


@pytest.mark.parametrize('file_format', ['tfrecord', 'array_record'])
def test_tfds_source_labels_and_images(tmp_path, file_format):
  """Read in stored order from either format; the reference is TFDS's own reader of a
  tfrecord copy."""
  tfds = pytest.importorskip('tensorflow_datasets')
  from PIL import Image
  name = _tiny_voc(str(tmp_path / 'tfrecord'))
  if file_format != 'tfrecord':
    _tiny_voc(str(tmp_path / file_format), file_format)
  for split, n in (('trainval', 3), ('test', 3)):
    ds, labels = tfds_eval.voc07_split(name, split, 20, str(tmp_path / file_format))
    stored = tfds.builder(name, data_dir=str(tmp_path / 'tfrecord')).as_dataset(
      split={'trainval': 'train+validation', 'test': 'test'}[split], shuffle_files=False,
      decoders={'image': tfds.decode.SkipDecoding()})
    raw = list(stored.as_numpy_iterator())
    assert labels.shape == (n, 20) and len(raw) == n
    for row, example in zip(labels, raw):
      for k in range(20):  # 1: a non-difficult object; 0: only difficult ones; -1: none.
        expected = (1 if k in example['labels_no_difficult'] else
                    0 if k in example['labels'] else -1)
        assert row[k] == expected
    assert (labels == 0).sum() == n and (labels == 1).sum() == 2 * n
    for decoded, example in zip(ds.as_numpy_iterator(), raw):  # PIL's pixels, to the value
      pil = np.asarray(Image.open(io.BytesIO(example['image'])).convert('RGB'))
      np.testing.assert_array_equal(decoded['image'], pil)
  images = list(common.TFDSImages(ds, common.feature_transform(40, 32)))
  assert all(image.shape == (3, 32, 32) for image in images)
