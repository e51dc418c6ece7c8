"""Labelled TFDS splits for the evaluations (TensorFlow stays inside input_pipeline/).

Each returns a tf.data dataset of {'image': uint8 [H, W, 3]} in stored order and the
labels read beforehand in the same order. The images are decoded like training's
(`sources.decode_file_bytes`: PIL's pixels, not TFDS's fast-DCT decode). Nothing is
downloaded: the dataset must be prepared in `data_dir` already.
"""

import numpy as np

from input_pipeline.sources import decode_file_bytes, import_tf, tfds_builder


def load(name: str, split: str, data_dir=None, image_key=None):
  """(builder, dataset of `split` in stored order with `image_key` left encoded, image key).

  `image_key` defaults to the image of the dataset's supervised keys. Either storage format
  reads, as in training (sources.TFDSSource): tfrecord is streamed, array_record is read
  record by record in the same order.
  """
  import tensorflow_datasets as tfds

  builder = tfds_builder(name, data_dir)
  if image_key is None:
    if builder.info.supervised_keys is None:
      raise ValueError(f'TFDS dataset {name!r} has no (image, label) supervised keys')
    image_key = builder.info.supervised_keys[0]
  decoders = {image_key: tfds.decode.SkipDecoding()}
  try:
    if builder.info.file_format in tfds.core.FileFormat.with_random_access():
      records = builder.as_data_source(split=split, decoders=decoders)
      ds = records_in_order(records, builder.info.features, image_key)
    else:
      ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
  except (AssertionError, ValueError) as e:
    first_line = str(e).strip().splitlines()[0]
    raise FileNotFoundError(f'TFDS dataset {name!r} split {split!r} not found in '
                            f'{data_dir or "the default data dir"} (it must be prepared '
                            f'beforehand): {first_line}') from None
  return builder, ds, image_key


def records_in_order(records, features, image_key):
  """A random-access split (`records`) as a tf.data dataset of its examples in stored order,
  typed by the dataset's `features`, the image left encoded."""
  tf = import_tf()
  signature = {**features.get_tensor_spec(), image_key: tf.TensorSpec([], tf.string)}

  def typed(spec, value):  # lists (sequence features) and empty ones get the feature's dtype
    if isinstance(spec, dict):
      return {k: typed(s, value[k]) for k, s in spec.items()}
    return np.asarray(value, spec.dtype.as_numpy_dtype)

  return tf.data.Dataset.from_generator(
      lambda: (typed(signature, records[i]) for i in range(len(records))),
      output_signature=signature)


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
