"""Where images come from: a local folder, a TFDS dataset, or in-memory arrays (the demo set).

Every source yields tf.data elements ``(image_id int64, payload, label int64)`` where
``decode(payload)`` gives the image as RGB uint8 [H, W, 3] and label is -1 when unlabelled.
``image_id`` is the image's index in the whole dataset (sorted file list, TFDS split order,
array row), so per-image randomness does not depend on sharding. Folder and array sources
allow random access: ``lookup(ids)`` gives numpy payloads and labels for ids in any order,
``elements(ids)`` the same as a dataset, and ``fetch`` readies them for ``decode``; a TFDS
source is read in its stored order (``stream``), or, stored as array_record, like a folder.
Constructors check their input at once, so a bad path or dataset name fails before any
device work.
"""

import contextlib
import dataclasses
import functools
import os
import sys

import numpy as np

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
DEMO = 'demo'
TFDS_PREFIX = 'tfds:'


@contextlib.contextmanager
def native_stderr_silenced():
  """Points file descriptor 2 at /dev/null: TensorFlow 2.21 logs INFO lines from C++ at import
  (oneDNN, CPU features) whatever TF_CPP_MIN_LOG_LEVEL says, and they would come before a
  command's one-line output or error. Python's own errors are printed after, as usual."""
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


@functools.cache
def import_tf():
  """TensorFlow, imported lazily and kept off the accelerators (once, before TF starts)."""
  with native_stderr_silenced() if 'tensorflow' not in sys.modules else contextlib.nullcontext():
    import tensorflow as tf

  tf.config.set_visible_devices([], 'GPU')  # TF must not take accelerator memory from JAX
  return tf


def decode_file_bytes(data):
  """Encoded JPEG/PNG/GIF/BMP bytes -> RGB uint8 [H, W, 3] (grey, CMYK, RGBA, 16-bit become RGB).

  JPEGs use libjpeg's accurate integer DCT, as PIL does, so the pixels are PIL's; TF's default
  (the fast DCT) differs from PIL by up to ~18 grey levels on most pixels of a photo.
  """
  tf = import_tf()
  image = tf.cond(
    tf.io.is_jpeg(data),
    lambda: tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_ACCURATE'),
    lambda: tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False),
  )
  image.set_shape([None, None, 3])
  return image


class _RandomAccess:
  """Shared by the sources that can look images up by id."""

  labels: np.ndarray | None
  random_access = True  # False: only ``stream`` reads it (a TFDS split stored as tfrecord)

  def labels_of(self, ids: np.ndarray) -> np.ndarray:
    return self.labels[ids] if self.labels is not None else np.full(len(ids), -1, np.int64)

  def elements(self, ids: np.ndarray):
    ids = np.asarray(ids, np.int64)
    return import_tf().data.Dataset.from_tensor_slices((ids, *self.lookup(ids)))

  @staticmethod
  def fetch(elements):
    """Elements from ``lookup`` made ready for ``decode`` (here they already are)."""
    return elements


@dataclasses.dataclass(frozen=True, eq=False)
class FolderSource(_RandomAccess):
  """Image files under ``root`` (searched recursively), sorted by path.

  With class sub-folders, ``labels`` holds each file's class index (sorted sub-folder
  names, like torchvision's ImageFolder); otherwise it is None.
  """

  root: str
  paths: np.ndarray = dataclasses.field(repr=False)
  labels: np.ndarray | None = dataclasses.field(repr=False)
  class_names: tuple[str, ...] = dataclasses.field(repr=False)
  payload_dtype = 'string'
  payload_shape = ()

  @property
  def name(self) -> str:
    return self.root

  def __len__(self) -> int:
    return len(self.paths)

  def describe(self, image_id: int) -> str:
    return str(self.paths[image_id])

  def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """File paths (bytes) and labels of ``ids``."""
    return np.char.encode(self.paths[ids], 'utf-8'), self.labels_of(ids)

  @staticmethod
  def decode(payload):
    return decode_file_bytes(import_tf().io.read_file(payload))


def folder_source(root: str, with_labels: bool = False) -> FolderSource:
  """All .jpg/.jpeg/.png files under ``root``; with labels, the top sub-folder is the class."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f'image folder {root!r} does not exist or is not a folder')
  paths = sorted(
    os.path.join(d, f)
    for d, _, files in os.walk(root, followlinks=True)
    for f in files
    if f.lower().endswith(IMAGE_SUFFIXES)
  )
  if not paths:
    raise ValueError(f'image folder {root!r} holds no {"/".join(IMAGE_SUFFIXES)} files')
  labels, class_names = None, ()
  if with_labels:
    rel = [os.path.relpath(p, root).split(os.sep) for p in paths]
    loose = [os.path.join(root, *r) for r in rel if len(r) == 1]
    if loose:
      raise ValueError(
        f'image folder {root!r} needs class sub-folders for labels, but has '
        f'{len(loose)} image(s) directly inside, e.g. {loose[0]!r}'
      )
    class_names = tuple(sorted({r[0] for r in rel}))
    index = {c: k for k, c in enumerate(class_names)}
    labels = np.array([index[r[0]] for r in rel], np.int64)
  return FolderSource(root, np.array(paths), labels, class_names)


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource(_RandomAccess):
  """Decoded images held in memory: uint8 [N, H, W, 3] and optional int labels [N]."""

  name: str
  images: np.ndarray = dataclasses.field(repr=False)
  labels: np.ndarray | None = dataclasses.field(repr=False)
  payload_dtype = 'uint8'

  @property
  def payload_shape(self) -> tuple[int, ...]:
    return self.images.shape[1:]

  def __len__(self) -> int:
    return len(self.images)

  def describe(self, image_id: int) -> str:
    return f'{self.name}[{image_id}]'

  def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of ``ids``."""
    return self.images[ids], self.labels_of(ids)

  @staticmethod
  def decode(payload):
    return payload


def array_source(name: str, images: np.ndarray, labels: np.ndarray | None = None) -> ArraySource:
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or not len(images):
    raise ValueError(
      f'array source {name!r}: need uint8 [N>0, H, W, 3] images, got {images.dtype} {images.shape}'
    )
  if labels is not None and len(labels) != len(images):
    raise ValueError(f'array source {name!r}: {len(labels)} labels for {len(images)} images')
  return ArraySource(name, images, None if labels is None else np.asarray(labels, np.int64))


def demo_source(split: str = 'train') -> ArraySource:
  """The embedded labelled demo set (see demo_data.py)."""
  from input_pipeline.demo_data import load_demo

  images, labels = load_demo(split)
  return array_source(f'demo/{split}', images, labels)


@dataclasses.dataclass(frozen=True, eq=False)
class TFDSSource(_RandomAccess):
  """A prepared TFDS split with the image left encoded.

  ``stream`` reads it in stored order. Stored as array_record (random access), it can also be
  read in any order, like a folder: ``lookup`` gives ids as payloads and ``fetch`` reads their
  records, many per call.
  """

  name: str
  builder: object
  split: str
  image_key: str
  label_key: str | None
  records: object = dataclasses.field(default=None, repr=False)  # the random-access reader
  payload_dtype = 'int64'
  payload_shape = ()
  FETCH_GROUP = 64  # records per read: array_record reads them in parallel, one GIL crossing

  @property
  def random_access(self) -> bool:
    return self.records is not None

  def __len__(self) -> int:
    return self.builder.info.splits[self.split].num_examples

  def describe(self, image_id: int) -> str:
    return f'{self.name}/{self.split}[{image_id}]'

  def stream(self, start: int, stop: int):
    """Elements ``start:stop`` of the split, in stored order."""
    import tensorflow_datasets as tfds

    ds = self.builder.as_dataset(
      split=f'{self.split}[{start}:{stop}]',
      shuffle_files=False,
      decoders={self.image_key: tfds.decode.SkipDecoding()},
    )
    image_key, label_key = self.image_key, self.label_key
    tf = import_tf()

    def element(i, ex):
      label = tf.cast(ex[label_key], tf.int64) if label_key else tf.constant(-1, tf.int64)
      return i, ex[image_key], label

    return ds.enumerate(start).map(element)

  def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids as payloads (``fetch`` reads the records) and placeholder labels."""
    return np.asarray(ids, np.int64), np.full(len(ids), -1, np.int64)

  def fetch(self, elements):
    """(id, id, -1) elements -> (id, encoded image, label), reading FETCH_GROUP records a call."""
    tf = import_tf()
    image_key, label_key, records = self.image_key, self.label_key, self.records

    def read(ids):
      examples = records.__getitems__(ids.tolist())
      images = np.array([ex[image_key] for ex in examples], dtype=object)
      labels = np.array([ex[label_key] if label_key else -1 for ex in examples], np.int64)
      return images, labels

    def read_group(ids, _, __):
      images, labels = tf.numpy_function(read, [ids], [tf.string, tf.int64], stateful=False)
      images.set_shape(ids.shape)
      labels.set_shape(ids.shape)
      return ids, images, labels

    return elements.batch(self.FETCH_GROUP).map(read_group).unbatch()

  @staticmethod
  def decode(payload):
    return decode_file_bytes(payload)


def tfds_builder(name: str, data_dir: str | None = None):
  """The builder of a TFDS dataset, for training and the evaluations alike (an unknown name
  is a ValueError naming it)."""
  import tensorflow_datasets as tfds

  import_tf()
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    # its first line only, not TFDS's list of every dataset it knows
    raise ValueError(f'unknown TFDS dataset {name!r}: {str(e).strip().splitlines()[0]}') from None


def tfds_source(
  name: str, split: str = 'train', data_dir: str | None = None, download: bool = False
) -> TFDSSource:
  """A TFDS dataset by name; downloads only when ``download`` is True."""
  import tensorflow_datasets as tfds

  builder = tfds_builder(name, data_dir)
  if not builder.is_prepared():
    if not download:
      raise FileNotFoundError(
        f'TFDS dataset {name!r} is not prepared in {builder.data_dir!r}; '
        'prepare it there, point data_dir at it, or pass download=True'
      )
    builder.download_and_prepare()
  if split not in builder.info.splits:  # a plain name: stream() slices it per process
    raise ValueError(
      f'TFDS dataset {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}'
    )
  features = builder.info.features
  images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
  if not images:
    raise ValueError(
      f'TFDS dataset {name!r} has no top-level image feature (features: {list(features)})'
    )
  label = (
    'label' if isinstance(dict(features.items()).get('label'), tfds.features.ClassLabel) else None
  )
  records = None
  if builder.info.available_file_formats() & set(tfds.core.FileFormat.with_random_access()):
    records = builder.as_data_source(split, decoders={images[0]: tfds.decode.SkipDecoding()})
  return TFDSSource(name, builder, split, images[0], label, records)


def open_source(
  spec: str,
  split: str = 'train',
  data_dir: str | None = None,
  download: bool = False,
  with_labels: bool = False,
):
  """``'demo'``, ``'tfds:NAME'`` or a folder path -> a source."""
  if spec == DEMO:
    return demo_source(split)
  if spec.startswith(TFDS_PREFIX):
    source = tfds_source(spec[len(TFDS_PREFIX) :], split, data_dir, download)
    if with_labels and source.label_key is None:
      raise ValueError(f"TFDS dataset {source.name!r} has no ClassLabel feature 'label'")
    return source
  return folder_source(spec, with_labels)
