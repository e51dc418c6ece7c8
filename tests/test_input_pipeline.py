"""The tf.data input: sources, bad files, determinism, resume, evaluation images, devices."""

import functools
import io
import logging

import numpy as np
import pytest

# torchvision must be imported before TensorFlow: the other order segfaults (triton import).
import torchvision.transforms as T
from PIL import Image

from input_pipeline import eval_data, pipeline, sources, tfds_eval
from input_pipeline.demo_data import PALETTE, load_demo

TINY = (('large', 2, 16, (0.2, 1.0)), ('small', 2, 8, (0.05, 0.14)))


def _rgb(rng, h=40, w=50):
  return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _solid_source(n=40, size=24):
  """Image k is one solid colour, unique per k, so every crop tells which image it came from."""
  colours = np.stack([np.arange(n) * 5, 255 - np.arange(n) * 3, np.full(n, 7)], -1).astype(np.uint8)
  images = np.broadcast_to(colours[:, None, None, :], (n, size, size, 3)).copy()
  return sources.array_source('solid', images), colours


def _take(it, n):
  return [next(it) for _ in range(n)]


CANVAS = 32


def _iterator(source, **kw):
  args = dict(layout=TINY, constrained=True, canvas=CANVAS, batch_size=8, seed=3, process_index=0,
              process_count=1)
  return pipeline.TrainIterator(source, **{**args, **kw})


def test_batches_hold_their_images_on_the_canvas_and_boxes_inside_them():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (40, 24, 20, 3), dtype=np.uint8)
  batch = next(_iterator(sources.array_source('noise', images)))
  assert batch['image'].shape == (8, CANVAS, CANVAS, 3) and batch['image'].dtype == np.uint8
  assert batch['boxes'].shape == (8, 4, 4) and batch['boxes'].dtype == np.int32
  assert batch['image_id'].dtype == np.int64
  np.testing.assert_array_equal(batch['image'][:, :24, :20], images[batch['image_id']])
  assert not batch['image'][:, 24:].any() and not batch['image'][:, :, 20:].any()
  top, left, h, w = np.moveaxis(batch['boxes'], -1, 0)
  assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
  assert (top + h <= 24).all() and (left + w <= 20).all()


def test_images_larger_than_the_canvas_are_shrunk_to_fit():
  """The rule for large images: aspect kept, longer side = canvas, PIL-like bilinear."""
  import tensorflow as tf
  from input_pipeline import crops

  rng = np.random.default_rng(1)
  tall = rng.integers(0, 256, (90, 50, 3), dtype=np.uint8)
  batch = next(_iterator(sources.array_source('tall', np.stack([tall] * 8)), batch_size=8))
  want = np.asarray(Image.fromarray(tall).resize((18, 32), Image.BILINEAR)).astype(int)
  assert np.abs(batch['image'][0, :, :18].astype(int) - want).max() <= 1
  assert not batch['image'][:, :, 18:].any()
  assert (batch['boxes'][..., 1] + batch['boxes'][..., 3] <= 18).all()
  small = tf.constant(tall[:20, :30])
  np.testing.assert_array_equal(crops.fit_canvas(small, CANVAS).numpy(), tall[:20, :30])


def test_same_seed_same_batches_whatever_the_parallelism():
  source, _ = _solid_source()
  noise = sources.array_source(
    'noise', np.random.default_rng(0).integers(0, 256, (40, 24, 24, 3), np.uint8)
  )
  for src in (source, noise):
    a = _take(_iterator(src, workers=1), 3)
    b = _take(_iterator(src), 3)
    for x, y in zip(a, b, strict=True):
      for k in x:
        np.testing.assert_array_equal(x[k], y[k])
  c = next(_iterator(noise, seed=4))
  assert not np.array_equal(c['boxes'], a[0]['boxes'])


def test_epochs_reshuffle_and_cover_the_data():
  source, _ = _solid_source()
  it = _iterator(source)
  ids = [next(it)['image_id'] for _ in range(10)]  # 5 batches of 8 per epoch
  first, second = np.concatenate(ids[:5]), np.concatenate(ids[5:])
  assert sorted(first) == sorted(second) == list(range(40))
  assert not np.array_equal(first, second)
  assert it.position == (2, 0)


def test_process_shares_are_disjoint_and_global_batches_do_not_depend_on_process_count():
  shares = [pipeline.epoch_order(103, 5, 2, p, 4, batch_size=3) for p in range(4)]
  assert all(len(s) == 24 for s in shares)  # 8 global batches of 12
  assert len(set(np.concatenate(shares))) == 96
  one = pipeline.epoch_order(103, 5, 2, 0, 1, batch_size=12)
  for count in (2, 4):
    parts = [
      pipeline.epoch_order(103, 5, 2, p, count, batch_size=12 // count).reshape(8, -1)
      for p in range(count)
    ]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1).reshape(-1), one)
  assert not np.array_equal(pipeline.epoch_order(103, 5, 2), pipeline.epoch_order(103, 5, 3))


def test_resume_gives_the_later_batches_of_a_full_run():
  source = sources.array_source(
    'noise', np.random.default_rng(1).integers(0, 256, (40, 24, 24, 3), np.uint8)
  )
  full = _take(_iterator(source), 9)
  resumed = _iterator(source, start=(1, 2))
  for want in full[7:]:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  assert resumed.position == (1, 4)
  with pytest.raises(ValueError, match='start batch 5'):
    _iterator(source, start=(0, 5))


@pytest.fixture
def messy_folder(tmp_path):
  """Good images of every awkward kind, and four unreadable files."""
  rng = np.random.default_rng(0)
  d = tmp_path / 'messy'
  (d / 'sub').mkdir(parents=True)
  good = {}
  good['good.jpg'] = _rgb(rng)
  Image.fromarray(good['good.jpg']).save(d / 'good.jpg', quality=95)
  good['sub/grey.png'] = _rgb(rng)[..., 0]
  Image.fromarray(good['sub/grey.png']).save(d / 'sub/grey.png')
  rgba = np.concatenate([_rgb(rng), _rgb(rng)[..., :1]], -1)
  good['rgba.PNG'] = rgba
  Image.fromarray(rgba).save(d / 'rgba.PNG')
  good['g16.png'] = (
    rng.integers(0, 256, (30, 20)).astype(np.uint16) * 257
  )  # k * 257 has high byte k
  Image.fromarray(good['g16.png']).save(d / 'g16.png')
  good['cmyk.jpg'] = _rgb(rng)
  Image.fromarray(good['cmyk.jpg']).convert('CMYK').save(d / 'cmyk.jpg', quality=95)
  good['tiny.png'] = _rgb(rng, 10, 10)
  Image.fromarray(good['tiny.png']).save(d / 'tiny.png')
  buf = io.BytesIO()
  Image.fromarray(_rgb(rng)).save(buf, format='JPEG')
  (d / 'truncated.jpg').write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
  (d / 'corrupt.jpg').write_bytes(
    b'\xff\xd8\xff\xe0' + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
  )
  (d / 'text.jpg').write_text('not an image')
  (d / 'sub' / 'empty.png').write_bytes(b'')
  (d / 'notes.txt').write_text('ignored: not an image suffix')
  bad = {'truncated.jpg', 'corrupt.jpg', 'text.jpg', 'sub/empty.png'}
  return d, good, bad


def _expected_rgb(name, pixels):
  if pixels.ndim == 2:  # grey, 16-bit grey: replicated; 16-bit keeps its high byte
    return np.repeat(
      (pixels >> 8 if pixels.dtype == np.uint16 else pixels)[..., None], 3, -1
    ).astype(np.uint8)
  return pixels[..., :3]


def test_awkward_images_decode_to_rgb_uint8(messy_folder):
  d, good, _ = messy_folder
  for name, pixels in good.items():
    image = sources.FolderSource.decode(str(d / name)).numpy()
    assert image.dtype == np.uint8 and image.shape == pixels.shape[:2] + (3,), name
    want = _expected_rgb(name, pixels)
    if name.endswith('.jpg'):  # lossy: PIL's own decode of the same file, to the pixel
      np.testing.assert_array_equal(image, np.asarray(Image.open(d / name).convert('RGB')), name)
    else:
      np.testing.assert_array_equal(image, want, err_msg=name)


def test_bad_files_are_skipped_counted_and_named(messy_folder, caplog):
  d, good, bad = messy_folder
  source = sources.folder_source(str(d))
  assert len(source) == len(good) + len(bad)  # notes.txt is not listed
  it = _iterator(source, batch_size=1)
  with caplog.at_level(logging.WARNING, logger='input_pipeline.pipeline'):
    batches = _take(it, it.steps)  # a whole epoch: every file is met at least once
  names = {str(p) for p in source.paths}
  good_ids = {i for i, p in enumerate(source.paths) if p[len(str(d)) + 1 :] in good}
  assert {int(b['image_id'][0]) for b in batches[: len(good)]} == good_ids
  assert all(
    b['image'].shape == (1, CANVAS, CANVAS, 3) and b['image'].dtype == np.uint8 for b in batches
  )
  assert set(it.skipped) == {str(d / b) for b in bad} and set(it.skipped) <= names
  for b in bad:
    assert str(d / b) in caplog.text


@functools.cache
def _tiny_tfds_class():
  """A TFDS builder of 24 solid-colour PNGs in 3 classes (registered once per process)."""
  import tensorflow_datasets as tfds

  class TinySolidImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            'image': tfds.features.Image(shape=(None, None, 3), encoding_format='png'),
            'label': tfds.features.ClassLabel(num_classes=3),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      for k in range(24):
        yield k, {'image': _solid_image(k), 'label': k % 3}

  return TinySolidImages


def _tiny_tfds_builder(data_dir, file_format='tfrecord'):
  """The tiny dataset prepared locally (no download), stored as ``file_format``."""
  _tiny_tfds_class()(data_dir=data_dir, file_format=file_format).download_and_prepare()


def _solid_image(k):
  return np.full((20, 30, 3), k * 10, np.uint8)


def test_tfds_source_train_resume_and_eval(tmp_path):
  _tiny_tfds_builder(str(tmp_path))
  source = sources.open_source('tfds:tiny_solid_images', data_dir=str(tmp_path), with_labels=True)
  assert len(source) == 24 and source.label_key == 'label'
  with pytest.raises(ValueError, match="no split 'train\\[:5\\]'"):
    sources.tfds_source('tiny_solid_images', 'train[:5]', data_dir=str(tmp_path))
  evals = list(eval_data.eval_batches(source, batch_size=5, resize=20, crop=16))
  ids = np.concatenate([b['image_id'] for b in evals])
  np.testing.assert_array_equal(ids, np.arange(24))  # stored order, every image once
  colour = np.concatenate([b['image'][:, 0, 0, 0] for b in evals]).astype(int)
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in evals]), colour // 10 % 3)
  layout = (('large', 2, 16, (0.2, 1.0)),)
  it = pipeline.TrainIterator(
    source, layout=layout, constrained=False, canvas=CANVAS, batch_size=4, seed=0,
    process_index=0, process_count=1
  )
  full = _take(it, 8)  # two epochs of 6 batches
  for b in full:  # the image is the one its id names
    np.testing.assert_array_equal(b['image'][:, 3, 3, 0], colour[b['image_id']])
  assert sorted(np.concatenate([b['image_id'] for b in full[:6]])) == list(range(24))
  resumed = pipeline.TrainIterator(
    source,
    layout=layout,
    constrained=False,
    canvas=CANVAS,
    batch_size=4,
    seed=0,
    process_index=0,
    process_count=1,
    start=(1, 1),
  )
  resumed = next(resumed)
  for k in ('image', 'boxes', 'image_id'):
    np.testing.assert_array_equal(resumed[k], full[7][k])


def test_tfds_array_record_source_reads_like_the_images_in_memory(tmp_path, caplog):
  """Stored as array_record, a TFDS split is permuted every epoch like a folder: the batches
  equal those of the same images held in memory (same ids, same crops), resumes included."""
  _tiny_tfds_builder(str(tmp_path), file_format='array_record')
  import tensorflow_datasets as tfds

  source = sources.open_source('tfds:tiny_solid_images', data_dir=str(tmp_path))
  assert source.random_access
  # TFDS's own reader and decoder, in stored order (TFDS shuffled the examples when preparing).
  stored = tfds.data_source('tiny_solid_images', split='train', data_dir=str(tmp_path))
  memory = sources.array_source('same', np.stack([stored[i]['image'] for i in range(24)]))
  kwargs = dict(
    layout=(('large', 2, 16, (0.2, 1.0)),), constrained=False, canvas=CANVAS, batch_size=4,
    seed=3, process_index=0, process_count=1,
  )
  with caplog.at_level('WARNING'):
    got = _take(pipeline.TrainIterator(source, **kwargs), 12)  # two epochs of 6 batches
  assert not [r for r in caplog.records if 'shuffle buffer' in r.getMessage()]
  want = _take(pipeline.TrainIterator(memory, **kwargs), 12)
  for g, w in zip(got, want):
    for k in ('image', 'boxes', 'image_id'):
      np.testing.assert_array_equal(g[k], w[k])
  for epoch in range(2):
    ids = np.concatenate([b['image_id'] for b in got[6 * epoch : 6 * epoch + 6]])
    np.testing.assert_array_equal(ids, pipeline.epoch_order(24, 3, epoch, 0, 1, 4))
  resumed = pipeline.TrainIterator(source, start=(1, 2), **kwargs)
  np.testing.assert_array_equal(next(resumed)['boxes'], got[8]['boxes'])
  # Evaluation reads it too (as_dataset cannot): every image once, with its label.
  evals = list(eval_data.eval_batches(source, batch_size=5, resize=20, crop=16))
  np.testing.assert_array_equal(np.concatenate([b['image_id'] for b in evals]), np.arange(24))
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in evals]),
                                [stored[i]['label'] for i in range(24)])
  # So do the evaluations that read TFDS splits themselves: what the tfrecord copy gives.
  _tiny_tfds_builder(str(tmp_path / 'tfrecord'))
  got, want = (tfds_eval.load('tiny_solid_images', 'train', str(d), image_key='image')[1]
               for d in (tmp_path, tmp_path / 'tfrecord'))
  pairs = zip(got.as_numpy_iterator(), want.as_numpy_iterator(), strict=True)
  for g, w in pairs:
    assert g['image'] == w['image'] and g['label'] == w['label']  # encoded bytes, labels


def test_tfds_tfrecord_source_warns_that_its_order_barely_changes(tmp_path, caplog):
  _tiny_tfds_builder(str(tmp_path))
  source = sources.open_source('tfds:tiny_solid_images', data_dir=str(tmp_path))
  assert not source.random_access
  with caplog.at_level('WARNING'):
    pipeline.TrainIterator(
      source, layout=(('large', 2, 16, (0.2, 1.0)),), constrained=False, canvas=CANVAS,
      batch_size=4, seed=0, process_index=0, process_count=1,
    )
  assert any('array_record' in r.getMessage() and 'tiny_solid_images/train' in r.getMessage()
             for r in caplog.records)


def test_source_errors_are_clear(tmp_path):
  with pytest.raises(ValueError, match=f"image folder '{tmp_path}' holds no"):
    sources.folder_source(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='nowhere'):
    sources.folder_source(str(tmp_path / 'nowhere'))
  (tmp_path / 'a.jpg').write_bytes(b'')
  with pytest.raises(ValueError, match='class sub-folders.*a.jpg'):
    sources.folder_source(str(tmp_path), with_labels=True)
  with pytest.raises(ValueError, match=f"evaluation source '{tmp_path}' has no labels"):
    next(eval_data.eval_batches(sources.folder_source(str(tmp_path)), batch_size=2))
  with pytest.raises(ValueError, match="unknown TFDS dataset 'no_such_dataset_xyz'"):
    sources.open_source('tfds:no_such_dataset_xyz', data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="'mnist' is not prepared.*download=True"):
    sources.tfds_source('mnist', data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="demo data split 'val'"):
    sources.demo_source('val')
  with pytest.raises(ValueError, match='no full batch'):
    _iterator(_solid_source(4)[0])


def test_demo_data_is_a_fixed_split_labelled_by_texture_not_colour():
  from sklearn.neighbors import KNeighborsClassifier

  x_train, y_train = load_demo('train')
  x_test, y_test = load_demo('test')
  assert x_train.shape == (1440, 32, 32, 3) and x_test.shape == (360, 32, 32, 3)
  assert x_train.dtype == np.uint8 and set(y_train) == set(y_test) == set(range(8))
  np.testing.assert_array_equal(load_demo('test')[0], x_test)

  def spectrum(x):  # grey, standardised, Fourier magnitude: the texture, wherever and whatever colour
    g = x.astype(np.float64).mean(-1)
    g = (g - g.mean((1, 2), keepdims=True)) / (g.std((1, 2), keepdims=True) + 1e-6)
    return np.abs(np.fft.fft2(g)).reshape(len(x), -1)

  knn = KNeighborsClassifier(1).fit(spectrum(x_train), y_train)
  assert knn.score(spectrum(x_test), y_test) > 0.9  # chance is 1/8: labels go with their textures
  colours = np.unique(np.concatenate([x_train, x_test]).reshape(-1, 3), axis=0)
  assert len(colours) <= 2 * PALETTE  # few colours: they cannot tell images apart


def test_eval_images_match_torchvision_resize_centre_crop(tmp_path):
  rng = np.random.default_rng(2)
  y, x = np.mgrid[0:37, 0:53]
  smooth = np.stack([x * 4.8, y * 6.9, 128 + 90 * np.sin(x / 4.0)], -1)
  images = {
    'cats/a.png': np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8),
    'dogs/b.png': np.clip(
      smooth.transpose(1, 0, 2) + rng.normal(0, 10, (53, 37, 3)), 0, 255
    ).astype(np.uint8),
    'dogs/c.png': _rgb(rng, 24, 24),
  }
  for name, pixels in images.items():
    (tmp_path / name).parent.mkdir(exist_ok=True)
    Image.fromarray(pixels).save(tmp_path / name)
  (tmp_path / 'dogs' / 'broken.png').write_text('x')
  skipped = []
  batches = list(
    eval_data.eval_batches(str(tmp_path), batch_size=2, resize=24, crop=20, skipped=skipped)
  )
  assert [len(b['label']) for b in batches] == [2, 1]
  images_out = np.concatenate([b['image'] for b in batches])
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in batches]), [0, 1, 1])
  ref_tf = T.Compose([T.Resize(24), T.CenterCrop(20)])
  for out, name in zip(images_out, sorted(images), strict=True):
    ref = np.asarray(ref_tf(Image.fromarray(images[name]))).astype(int)
    diff = np.abs(out.astype(int) - ref)
    assert out.shape == (20, 20, 3) and diff.max() <= 1 and diff.mean() < 0.3, (
      name,
      diff.max(),
      diff.mean(),
    )
  assert skipped == [str(tmp_path / 'dogs' / 'broken.png')]
  with pytest.raises(ValueError, match='centre crop 30'):
    next(eval_data.eval_batches(str(tmp_path), batch_size=2, resize=24, crop=30))


DEVICE_SCRIPT = """
import jax, numpy as np
from revisit_jax import device_batches as device
from revisit_jax.sharding import make_mesh
mesh = make_mesh()
assert len(mesh.devices) == 2
batches = [{"x": np.arange(8 * 3).reshape(8, 3) + k} for k in range(5)]
out = list(device.prefetch_to_device(iter(batches), mesh))
assert len(out) == 5
for k, b in enumerate(out):
    assert b["x"].sharding.spec == jax.sharding.PartitionSpec("data")
    assert [s.data.shape for s in b["x"].addressable_shards] == [(4, 3), (4, 3)]
    np.testing.assert_array_equal(np.asarray(b["x"]), batches[k]["x"])
try:
    device.to_global({"y": np.zeros((3,))}, mesh)
    raise SystemExit("no error for 3 rows on 2 devices")
except ValueError as e:
    assert "batch key 'y'" in str(e), e
print("ok")
"""


def test_device_placement_and_prefetch_on_two_devices():
  """In a fresh process: the host-device count must be set before jax starts."""
  import os
  import subprocess
  import sys

  env = {
    **os.environ,
    'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
    'JAX_PLATFORMS': 'cpu',
  }
  result = subprocess.run(
    [sys.executable, '-c', DEVICE_SCRIPT], env=env, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0 and 'ok' in result.stdout, result.stderr[-2000:]


def test_benchmark_prints_one_json_line(tmp_path, capsys):
  import json

  from input_pipeline import benchmark

  rng = np.random.default_rng(3)
  for k in range(4):
    Image.fromarray(_rgb(rng, 48, 64)).save(tmp_path / f'{k}.jpg')
  args = ['--source', str(tmp_path), '--workers', '1', '--batch', '2', '--seconds', '0.5']
  benchmark.main(args + ['--layout', 'moco', '--parts'])
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 1
  result = json.loads(lines[0])
  assert result['layout'] == 'moco' and result['workers'] == 1
  assert result['cpu_images_per_s'] > 0 and result['cpu_images_per_s_per_core'] > 0
  assert sorted(result['cpu_ms_per_image_parts']) == ['decode_ms', 'with_batching_ms',
                                                      'with_uniforms_ms']
  assert result['cpu_ms_per_image_parts']['decode_ms'] > 0
