"""Labelled TFDS splits for the evaluations (TensorFlow stays inside input_pipeline/).

Each returns a tf.data dataset of {'image': uint8 [H, W, 3]} in stored order and the
labels read beforehand in the same order. Nothing is downloaded: the dataset must be
prepared in `data_dir` already.
"""

import numpy as np

from input_pipeline.sources import import_tf


def load(name: str, split: str, data_dir=None, **kwargs):
  import_tf()
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    return builder, builder.as_dataset(split=split, shuffle_files=False, **kwargs)
  except (tfds.core.registered.DatasetNotFoundError, AssertionError, ValueError) as e:
    where = data_dir or 'the default data dir'
    raise FileNotFoundError(f'TFDS dataset {name!r} split {split!r} not found in {where} '
                            f'(it must be prepared beforehand): {e}') from None


def rgb_images(ds, image_key='image'):
  tf = import_tf()
  def rgb(example):
    image = example[image_key]
    return {'image': tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image}
  return ds.map(rgb)


def classification_split(name: str, split: str, data_dir=None):
  """(images, labels [N], class names) of a single-label dataset (supervised keys)."""
  import tensorflow_datasets as tfds
  builder, ds = load(name, split, data_dir)
  if builder.info.supervised_keys is None:
    raise ValueError(f'TFDS dataset {name!r} has no (image, label) supervised keys')
  image_key, label_key = builder.info.supervised_keys[:2]
  _, labels_only = load(name, split, data_dir,
                        decoders={image_key: tfds.decode.SkipDecoding()})
  labels = np.array(list(labels_only.map(lambda e: e[label_key]).as_numpy_iterator()))
  return rgb_images(ds, image_key), labels, builder.info.features[label_key].names


def voc07_split(name: str, split: str, num_classes: int, data_dir=None):
  """(images, labels [N, classes] in VOC's 1 / 0 (difficult only) / -1) of voc/2007;
  trainval = TFDS train + validation."""
  _, ds = load(name, {'trainval': 'train+validation', 'test': 'test'}[split], data_dir)
  labels = []
  for example in ds.map(lambda e: {'labels': e['labels'],
                                   'easy': e['labels_no_difficult']}).as_numpy_iterator():
    row = np.full(num_classes, -1, np.int8)
    row[example['labels']] = 0
    row[example['easy']] = 1
    labels.append(row)
  return rgb_images(ds), np.stack(labels)
