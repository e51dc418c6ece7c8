"""Labelled evaluation images: resize the shorter side, centre crop (torchvision semantics).

torchvision ``Resize(resize)`` on a PIL image sets the shorter side to ``resize`` and the
longer to ``int(resize * long / short)``, bilinear with antialiasing; ``CenterCrop(crop)``
then cuts at ``round((size - crop) / 2)``. Every image of this process's share comes out
once, in dataset order; the last batch may be smaller. Unreadable files are skipped and named.
"""

import numpy as np

from input_pipeline import crops, pipeline, sources


def resize_centre_crop(image, resize: int, crop: int):
  """uint8 [H, W, 3] -> uint8 [crop, crop, 3] as torchvision Resize(resize) + CenterCrop(crop)."""
  tf = sources.import_tf()
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  short, long = tf.minimum(h, w), tf.maximum(h, w)
  new_long = tf.cast(
    tf.floor(resize * tf.cast(long, tf.float64) / tf.cast(short, tf.float64)), tf.int32
  )
  new_h = tf.where(h <= w, resize, new_long)
  new_w = tf.where(h <= w, new_long, resize)
  out = crops.pil_bilinear(image, tf.stack([new_h, new_w]))
  top = tf.cast(tf.round(tf.cast(new_h - crop, tf.float64) / 2), tf.int32)
  left = tf.cast(tf.round(tf.cast(new_w - crop, tf.float64) / 2), tf.int32)
  return out[top : top + crop, left : left + crop]


def eval_batches(
  source,
  *,
  batch_size: int,
  resize: int = 256,
  crop: int = 224,
  process_index: int = 0,
  process_count: int = 1,
  workers: int | None = None,
  skipped: list | None = None,
):
  """Yield {'image': uint8 [b, crop, crop, 3], 'label': int64 [b], 'image_id': int64 [b]}.

  ``source`` is a source object or a spec for sources.open_source (labels required).
  Process p takes images p, p + process_count, ...; unreadable ones are appended to ``skipped``.
  """
  if crop > resize:
    raise ValueError(f'centre crop {crop} is larger than the resized shorter side {resize}')
  if isinstance(source, str):
    source = sources.open_source(source, with_labels=True)
  tf = sources.import_tf()
  if not source.random_access:
    elements = source.stream(0, len(source)).shard(process_count, process_index)
    describe = lambda p: f'{source.name}/{source.split}[{p * process_count + process_index}]'  # noqa: E731
  else:
    # A TFDS source's labels come with its records.
    if not isinstance(source, sources.TFDSSource) and source.labels is None:
      raise ValueError(
        f'evaluation source {source.name!r} has no labels (a folder needs class sub-folders)'
      )
    ids = np.arange(process_index, len(source), process_count)
    elements = source.fetch(source.elements(ids))
    describe = lambda p: source.describe(int(ids[p]))  # noqa: E731

  def decode(position, element):
    image_id, payload, label = element
    return {
      'image': source.decode(payload),
      'label': label,
      'image_id': image_id,
      '_position': position,
    }

  def resize_crop(element):
    return {**element, 'image': resize_centre_crop(element['image'], resize, crop)}

  parallel = workers or tf.data.AUTOTUNE
  ds = (
    elements.enumerate().map(decode, num_parallel_calls=parallel).ignore_errors()
  )  # unreadable files only
  ds = ds.map(resize_crop, num_parallel_calls=parallel)
  ds = ds.batch(batch_size).prefetch(2).with_options(pipeline.tf_options(workers))
  skipped = [] if skipped is None else skipped
  expected = 0
  for batch in ds.as_numpy_iterator():
    expected = pipeline.note_skipped(batch.pop('_position'), expected, describe, skipped)
    yield batch
