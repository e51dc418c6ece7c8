"""Labelled TFDS splits for the evaluations (TensorFlow stays inside input_pipeline/).

Each returns a tf.data dataset of {'image': uint8 [H, W, 3]} in stored order and the
labels read beforehand in the same order. The images are decoded like training's
(`sources.decode_file_bytes`: PIL's pixels, not TFDS's fast-DCT decode). Nothing is
downloaded: the dataset must be prepared in `data_dir` already.
"""

import numpy as np

from input_pipeline.sources import decode_file_bytes, import_tf, tfds_builder


def load(name: str, split: str, data_dir=None, image_key=None):
  """(builder, dataset of `split` with `image_key` left encoded, image key).

  `image_key` defaults to the image of the dataset's supervised keys.
  """
  import tensorflow_datasets as tfds

  builder = tfds_builder(name, data_dir)
  if image_key is None:
    if builder.info.supervised_keys is None:
      raise ValueError(f'TFDS dataset {name!r} has no (image, label) supervised keys')
    image_key = builder.info.supervised_keys[0]
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={image_key: tfds.decode.SkipDecoding()})
  except (AssertionError, ValueError) as e:
    first_line = str(e).strip().splitlines()[0]
    raise FileNotFoundError(f'TFDS dataset {name!r} split {split!r} not found in '
                            f'{data_dir or "the default data dir"} (it must be prepared '
                            f'beforehand): {first_line}') from None
  except NotImplementedError:  # TFDS reads array_record only by random access
    raise ValueError(f'TFDS dataset {name!r} is stored as {builder.info.file_format.value}; the '
                     'evaluations read it in order, which needs file_format="tfrecord"') from None
  return builder, ds, image_key


def decoded_images(ds, image_key):
  return ds.map(lambda example: {'image': decode_file_bytes(example[image_key])})


def classification_split(name: str, split: str, data_dir=None):
  """(images, labels [N], class names) of a single-label dataset (supervised keys)."""
  builder, ds, image_key = load(name, split, data_dir)
  label_key = builder.info.supervised_keys[1]
  labels = np.array(list(ds.map(lambda e: e[label_key]).as_numpy_iterator()))
  return decoded_images(ds, image_key), labels, builder.info.features[label_key].names


def voc07_split(name: str, split: str, num_classes: int, data_dir=None):
  """(images, labels [N, classes] in VOC's 1 / 0 (difficult only) / -1) of voc/2007;
  trainval = TFDS train + validation."""
  _, ds, image_key = load(name, {'trainval': 'train+validation', 'test': 'test'}[split],
                          data_dir, image_key='image')
  labels = []
  for example in ds.map(lambda e: {'labels': e['labels'],
                                   'easy': e['labels_no_difficult']}).as_numpy_iterator():
    row = np.full(num_classes, -1, np.int8)
    row[example['labels']] = 0
    row[example['easy']] = 1
    labels.append(row)
  return decoded_images(ds, image_key), np.stack(labels)


def shuffled_with_labels(images, labels, seed: int, buffer_size: int = 10_000):
  """{'image', 'label'} of a split read in stored order, shuffled through a buffer with `seed`:
  a streamed TFDS split has no random access, so training on it (eval.linear) shuffles so."""
  tf = import_tf()
  pairs = tf.data.Dataset.zip(images, tf.data.Dataset.from_tensor_slices(labels))
  return pairs.map(lambda x, y: {**x, 'label': y}).shuffle(buffer_size, seed=seed)
