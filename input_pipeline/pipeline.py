"""The training input: per-process batches of multi-crops from a source, resumable by position.

Per epoch, a permutation that is a pure function of (seed, epoch) is cut into global
batches, and each process reads its slice of every global batch (``epoch_order``); the crops
of an image use a stateless seed from (seed, epoch, image_id). So the batches depend on
(seed, epoch, batch index) only, not on parallelism, and a run resumed at (epoch, batch)
skips file names (before any decoding) and sees the batches a full run would have seen. A
TFDS source stored as array_record is read the same way (records fetched by id); one stored
as tfrecord can only be read in stored order, so it gets a seeded buffer shuffle instead.

Unreadable images (corrupt, truncated, not an image) are dropped by ``ignore_errors`` after
decoding (errors in the crops still surface) and named in a warning; every element carries
its position in the epoch's list, so the gaps tell which ones. Each epoch yields exactly
``steps_per_epoch`` batches: the list is followed by a spare copy of itself that fills the
places of dropped images, so processes stay in step. Dropped images shift the later batches
of their epoch; a resume at (epoch, batch) starts at file batch * batch_size, which matches
a full run only if none were dropped before.
"""

import logging

import numpy as np

from input_pipeline import crops, sources

log = logging.getLogger(__name__)
TFDS_SHUFFLE_BUFFER = 16_384


def epoch_order(
  num_images: int,
  seed: int,
  epoch: int,
  process_index: int = 0,
  process_count: int = 1,
  batch_size: int = 1,
) -> np.ndarray:
  """This process's image ids for ``epoch``, in reading order.

  Global batch k is rows k * G .. (k + 1) * G of the permutation (G = batch_size *
  process_count) and process p reads its p-th slice of batch_size rows, so the global
  batches, row order included, do not depend on the number of processes.
  """
  perm = np.random.default_rng([seed, epoch]).permutation(num_images)
  group = batch_size * process_count
  batches = perm[: num_images // group * group].reshape(-1, process_count, batch_size)
  return batches[:, process_index].reshape(-1)


def _order_with_spare(
  num_images: int, seed: int, epoch: int, process_index: int, process_count: int, batch_size: int
) -> np.ndarray:
  """epoch_order followed by a spare copy that fills the places of unreadable images."""
  ids = epoch_order(num_images, seed, epoch, process_index, process_count, batch_size)
  return np.concatenate([ids, ids])


def steps_per_epoch(num_images: int, batch_size: int, process_count: int = 1) -> int:
  """Batches per epoch and process (per-process ``batch_size``, last partial batch dropped)."""
  return num_images // process_count // batch_size


def tf_options(workers: int | None):
  """Deterministic tf.data options; ``workers`` caps the threads (None: tf.data decides)."""
  tf = sources.import_tf()
  options = tf.data.Options()
  options.deterministic = True
  if workers:
    options.threading.private_threadpool_size = workers
    options.threading.max_intra_op_parallelism = 1
  return options


def note_skipped(positions: np.ndarray, expected: int, describe, skipped: list) -> int:
  """Name the elements missing before and inside ``positions`` (dropped as unreadable).

  Appends their names to ``skipped``, logs a warning, and returns the next expected position.
  """
  missing = sorted(set(range(expected, int(positions[-1]) + 1)) - set(positions.tolist()))
  if missing:
    names = [describe(p) for p in missing]
    skipped.extend(names)
    log.warning(
      'skipped %d unreadable image(s) (%d so far): %s', len(names), len(skipped), ', '.join(names)
    )
  return int(positions[-1]) + 1


class TrainIterator:
  """Endless per-process training batches, starting at a given (epoch, batch) position.

  Yields {'image': uint8 [b, canvas, canvas, 3] (each decoded image in the top-left corner,
  zeros elsewhere; see crops.fit_canvas), 'boxes': int32 [b, crops, 4] (top, left, height,
  width of every crop, crop-id order), 'image_id': int64 [b]}. ``position`` is the (epoch, batch index) of the next batch:
  store it with a checkpoint and pass it back as ``start`` to resume. ``skipped`` names the
  unreadable images met so far. One tf.data pipeline runs over all epochs (flat_map over
  the epoch number), so nothing is traced again at an epoch boundary.
  """

  def __init__(
    self,
    source,
    *,
    layout,
    constrained: bool,
    canvas: int,
    batch_size: int,
    seed: int,
    start: tuple[int, int] = (0, 0),
    process_index: int | None = None,
    process_count: int | None = None,
    workers: int | None = None,
  ):
    crops.check_layout(layout, constrained)
    if process_index is None or process_count is None:
      import jax

      process_index, process_count = jax.process_index(), jax.process_count()
    if canvas < 1:
      raise ValueError(f'canvas {canvas} must be >= 1 pixel')
    self.source, self.layout, self.constrained = source, tuple(layout), constrained
    self.canvas = canvas
    self.batch_size, self.seed, self.workers = batch_size, seed, workers
    self.process_index, self.process_count = process_index, process_count
    self.steps = steps_per_epoch(len(source), batch_size, process_count)
    if self.steps < 1:
      raise ValueError(
        f'{len(source)} images give no full batch of {batch_size} per process '
        f'on {process_count} process(es)'
      )
    epoch, batch = start
    if not 0 <= batch < self.steps:
      raise ValueError(f"start batch {batch} is outside the epoch's {self.steps} batches")
    if not self.source.random_access:
      log.warning(
        'TFDS %s/%s is stored as %s, which TFDS reads only in order: each epoch is that order '
        'through a %d-image shuffle buffer, so it changes little between epochs (the original '
        'permutes all images every epoch). Prepare it with file_format="array_record" for that.',
        source.name, source.split, source.builder.info.file_format.value, TFDS_SHUFFLE_BUFFER,
      )
    self.position = (epoch, batch)
    self.skipped: list[str] = []
    self._expected = batch * batch_size  # next position in the epoch's element list
    self._batches = self._dataset(epoch, batch).as_numpy_iterator()

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    epoch, index = self.position
    batch = next(self._batches)
    if batch.pop('_epoch')[0] != epoch:
      raise RuntimeError(
        f'epoch {epoch} ran out of readable images after {index} of {self.steps} '
        f'batches ({len(self.skipped)} unreadable so far)'
      )
    describe = lambda p: self._describe(epoch, p)  # noqa: E731
    self._expected = note_skipped(batch.pop('_position'), self._expected, describe, self.skipped)
    if index + 1 == self.steps:
      self.position, self._expected = (epoch + 1, 0), 0
    else:
      self.position = (epoch, index + 1)
    return batch

  def _describe(self, epoch: int, position: int) -> str:
    if not self.source.random_access:
      return f'{self.source.name}/{self.source.split}: position {position} of epoch {epoch}'
    order = _order_with_spare(
      len(self.source), self.seed, epoch, self.process_index, self.process_count, self.batch_size
    )
    return self.source.describe(int(order[position]))

  def _elements(self, epoch):
    """(image_id, payload, label) of this process for ``epoch`` (a tensor), then a spare copy."""
    tf = sources.import_tf()
    source = self.source
    if not self.source.random_access:
      share = len(source) // self.process_count
      ds = source.stream(self.process_index * share, (self.process_index + 1) * share)
      seed = tf.constant(self.seed, tf.int64) * 1_000_003 + epoch
      return ds.shuffle(TFDS_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=False).repeat(2)

    # The numpy function stays registered while the pipeline lives: it must not hold self.
    n, seed, index, count, b = (
      len(source),
      self.seed,
      self.process_index,
      self.process_count,
      self.batch_size,
    )

    def lookup(e):
      ids = _order_with_spare(n, seed, int(e), index, count, b)
      return (ids, *source.lookup(ids))

    ids, payloads, labels = tf.numpy_function(
      lookup, [epoch], [tf.int64, tf.as_dtype(source.payload_dtype), tf.int64], stateful=False
    )
    ids.set_shape([None])
    payloads.set_shape([None, *source.payload_shape])
    labels.set_shape([None])
    return source.fetch(tf.data.Dataset.from_tensor_slices((ids, payloads, labels)))

  def _dataset(self, start_epoch: int, start_batch: int):
    tf = sources.import_tf()
    b, steps, seed = self.batch_size, self.steps, self.seed
    parallel = self.workers or tf.data.AUTOTUNE
    source, layout, constrained, canvas = self.source, self.layout, self.constrained, self.canvas
    padded = {'image': [canvas, canvas, 3], 'size': [2],
              'uniforms': [crops.uniforms_needed(layout, constrained)], 'image_id': [],
              '_position': [], '_epoch': []}

    def epoch_batches(epoch):
      first = tf.where(epoch == start_epoch, tf.constant(start_batch, tf.int64), 0)
      epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])

      def decode(position, element):
        image_id, payload, _ = element
        return position, image_id, source.decode(payload)

      def place(position, image_id, image):
        image = crops.fit_canvas(image, canvas)
        crop_seed = tf.random.experimental.stateless_fold_in(epoch_seed, image_id)
        return {'image': image, 'size': tf.shape(image)[:2],
                'uniforms': crops.draw_uniforms(crop_seed, layout, constrained),
                'image_id': image_id, '_position': position, '_epoch': epoch}

      def boxes(batch):
        size = batch.pop('size')
        batch['boxes'] = crops.all_boxes(batch.pop('uniforms'), size[:, 0], size[:, 1], layout,
                                         constrained)
        return batch

      # Only decoding errors are dropped: an error in the boxes is a bug and must surface.
      ds = self._elements(epoch).skip(first * b).enumerate(first * b)
      ds = ds.map(decode, num_parallel_calls=parallel).ignore_errors()
      ds = ds.map(place, num_parallel_calls=parallel)
      ds = ds.padded_batch(b, padded_shapes=padded, drop_remainder=True).map(boxes)
      return ds.take(steps - first)

    ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_batches)
    return ds.prefetch(2).with_options(tf_options(self.workers))


def create_train_iterator(
  source, *, data_dir: str | None = None, download: bool = False, **kwargs
) -> TrainIterator:
  """See TrainIterator; ``source`` may be a spec: 'demo', 'tfds:NAME' or a folder."""
  if isinstance(source, str):
    source = sources.open_source(source, data_dir=data_dir, download=download)
  return TrainIterator(source, **kwargs)
