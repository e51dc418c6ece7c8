"""FCN segmentation: label maps, data layouts and errors, the model, the CLI with resume."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image
from torchvision import tv_tensors

import cv2_rules
from eval import segmentation, seg_data
from eval.common import IMAGENET_MEAN, IMAGENET_STD
from eval.metrics import iou_per_class
from fixtures_eval import resnet50_pth, single_thread, write_cityscapes, write_voc12  # noqa: F401

single_thread()

# SPEC.md section 5: trainIds 0-18 are these labelIds, everything else is 255.
SPEC_TRAIN_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
IGNORE_VALUE = 255
TINY = ['--epochs', '1', '--batch_size', '2', '--size', '32', '--workers', '0']


def test_cityscapes_train_ids_match_spec():
  label_ids = np.arange(256, dtype=np.uint8)
  expected = np.full(256, 255)
  expected[SPEC_TRAIN_LABEL_IDS] = np.arange(19)
  np.testing.assert_array_equal(seg_data.cityscapes_train_ids(label_ids), expected)
  assert len(seg_data.CITYSCAPES_CLASSES) == 19


@pytest.mark.parametrize('name, size', [('china.jpg', (512, 512)), ('flower.jpg', (333, 171)),
                                        ('china.jpg', (97, 145))])
def test_resizes_are_the_originals_cv2_resizes_on_photos(name, size):
  """The original's cv2.resize: INTER_CUBIC for the uint8 image (rounded, saturated),
  INTER_NEAREST for the mask (here the photo's brightness in 20 classes)."""
  photo = load_sample_image(name)
  labels = (photo.mean(-1) // 13).astype(np.int64)
  image, mask = seg_data.resize_pair(tv_tensors.Image(torch.tensor(photo).permute(2, 0, 1)),
                                     tv_tensors.Mask(torch.tensor(labels)), size)
  want = np.clip(cv2_rules.resize_cubic(photo, size), 0, 255)
  assert image.dtype == torch.uint8
  # Rounding, plus float32 noise (cv2's own float path is off the float64 rule by as much).
  assert np.abs(image.permute(1, 2, 0).numpy() - want).max() <= 0.5 + 1e-2
  np.testing.assert_array_equal(mask.numpy(), cv2_rules.resize_nearest(labels, size))


def test_voc_augmentation_keeps_mask_values_and_fills_the_border_with_background():
  torch.manual_seed(0)
  image = tv_tensors.Image(torch.full((3, 50, 70), 200, dtype=torch.uint8))
  mask = tv_tensors.Mask(torch.randint(1, 3, (50, 70)) * 7)  # Values 7 and 14 only.
  seen, border = set(), 0
  for _ in range(10):
    out_image, out_mask = seg_data.voc_train_transform(64)(image, mask)
    assert out_image.shape == (3, 64, 64) and out_image.dtype == torch.float32
    assert out_mask.shape == (64, 64)
    seen |= set(out_mask.unique().tolist())
    # Where the affine uncovered the border, the image is black: the mask says background.
    zero = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    black = (out_image - zero[:, None, None]).abs().max(0).values < 1e-4
    assert (out_mask[black] == 0).all()
    border += int(black.sum())
  # Nearest interpolation: no blended values; the uncovered border is background (0), as the
  # original's cv2.warpAffine leaves it, not ignore.
  assert seen <= {0, 7, 14} and 0 in seen and border > 0


@pytest.mark.parametrize('dataset', ['voc', 'cityscapes'])
def test_augmentation_moves_image_and_mask_together(dataset):
  """Left half dark and class 7, right half bright and class 14: after the random flip,
  affine / scale, crop and resize, the mask still says which side each pixel came from."""
  image = torch.full((3, 60, 80), 40, dtype=torch.uint8)
  image[:, :, 40:] = 220
  mask = torch.full((60, 80), 7, dtype=torch.int64)
  mask[:, 40:] = 14
  transform = (seg_data.voc_train_transform(48) if dataset == 'voc'
               else seg_data.cityscapes_train_transform(48, scales=(0.75, 1.0)))
  for seed in range(8):
    torch.manual_seed(seed)
    out_image, out_mask = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
    bright = out_image.mean(0) > 0.5  # normalised: 220 is far above, 40 far below
    for label, side in ((7, ~bright), (14, bright)):
      inside = out_mask == label
      assert side[inside].float().mean() > 0.9, (seed, label)  # all but the edge column


def test_cityscapes_crop_enlarges_small_images_instead_of_padding():
  """The original's RandomCrop scales an image with a side below the crop up (short side to
  crop + 1) rather than padding it."""
  image = tv_tensors.Image(torch.arange(20 * 30, dtype=torch.uint8).reshape(1, 20, 30)
                           .expand(3, 20, 30).clone())
  mask = tv_tensors.Mask(torch.arange(20 * 30).reshape(20, 30) % 19)
  for seed in range(5):
    torch.manual_seed(seed)
    out_image, out_mask = seg_data.CoverCrop(96)(image, mask)
    assert out_image.shape == (3, 96, 96) and out_mask.shape == (96, 96)
    # Scale 96 / 20 = 4.8: the enlarged image is int(4.8 * 20 + 1) x int(4.8 * 30 + 1) =
    # 97 x 145, and the mask is its nearest resize, cropped.
    full = seg_data.resize_pair(image, mask, [97, 145])[1]
    matches = [(t, l) for t in range(2) for l in range(50)
               if torch.equal(full[t:t + 96, l:l + 96], out_mask)]
    assert matches, seed
  torch.manual_seed(0)
  out_image, out_mask = seg_data.cityscapes_train_transform(96)(image, mask)
  assert out_image.shape == (3, 96, 96) and IGNORE_VALUE not in out_mask.unique().tolist()


def test_fcn_has_output_stride_16_and_the_protocol_head(resnet50_pth):  # noqa: F811
  model = segmentation.build_fcn(resnet50_pth, 21, 6, torch.device('cpu')).eval()
  layer4 = model.backbone[-1]
  convs = [m for m in layer4.modules() if isinstance(m, torch.nn.Conv2d)]
  assert all(c.stride == (1, 1) for c in convs)
  # SPEC.md: every layer4 3x3 conv gets dilation 2 (the first block's too).
  assert [(c.dilation, c.padding) for c in convs if c.kernel_size == (3, 3)] == [((2, 2),) * 2] * 3
  head_convs = [m for m in model.head if isinstance(m, torch.nn.Conv2d)]
  assert [(c.out_channels, c.kernel_size, c.dilation, c.bias is None) for c in head_convs] == [
      (256, (3, 3), (6, 6), True), (256, (3, 3), (6, 6), True), (21, (1, 1), (1, 1), True)]
  x = torch.randn(1, 3, 96, 64)
  with torch.no_grad():
    assert model.backbone(x).shape == (1, 2048, 6, 4)
    assert model(x).shape == (1, 21, 96, 64) and model(x).dtype == torch.float32


@pytest.mark.parametrize('dataset', ['voc', 'cityscapes'])
def test_lr_schedule_is_the_originals_per_epoch_one(dataset):
  """The original sets the lr at each epoch's start: VOC x0.1 once the epoch (from 0) exceeds
  30 and again past 40; Cityscapes poly 0.9 over the epoch index."""
  args = segmentation.parse_args(['w.pth', '--dataset', dataset, '--data', 'd', '--workdir', 'w'])
  steps = 3
  opt, sched = segmentation.optimizer_and_schedule(args, torch.nn.Linear(2, 2), steps)
  seen = []
  for _ in range(args.epochs):
    seen.append(sched.get_last_lr()[0])
    for _ in range(steps):
      opt.step()
      sched.step()
  if dataset == 'voc':
    expected = [0.003] * 31 + [0.0003] * 10 + [0.00003] * 4
  else:
    expected = [1e-4 * (1 - e / 150) ** 0.9 for e in range(150)]
  np.testing.assert_allclose(seen, expected, rtol=1e-12)


def test_voc_layout_errors_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match='missing_root'):
    seg_data.VOCSegmentation(tmp_path / 'missing_root', 'val')
  root = write_voc12(tmp_path, n_train=2, n_val=1, n_aug=2)
  (root / 'ImageSets' / 'Segmentation' / 'train_aug.txt').unlink()
  with pytest.raises(FileNotFoundError, match='train_aug.txt'):
    seg_data.VOCSegmentation(root, 'train_aug')
  (root / 'SegmentationClass' / '2008_000000.png').unlink()
  with pytest.raises(FileNotFoundError, match='2008_000000.png'):
    seg_data.VOCSegmentation(root, 'val')
  Image.new('RGB', (128, 128)).save(root / 'SegmentationClass' / '2008_000000.png')
  with pytest.raises(ValueError, match="2008_000000.png: mask mode 'RGB'"):
    seg_data.VOCSegmentation(root, 'val')[0]


def test_cityscapes_layout_errors_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match='leftImg8bit'):
    seg_data.Cityscapes(tmp_path, 'train')
  root = write_cityscapes(tmp_path, per_split=(2, 1))
  mask = next((root / 'gtFine' / 'val').rglob('*_gtFine_labelIds.png'))
  mask.unlink()
  with pytest.raises(FileNotFoundError, match=mask.name):
    seg_data.Cityscapes(root, 'val')


def test_cityscapes_dataset_maps_label_ids(tmp_path):
  root = write_cityscapes(tmp_path, per_split=(1, 1))
  raw = np.array(Image.open(next((root / 'gtFine' / 'train').rglob('*.png'))))
  _, mask = seg_data.Cityscapes(root, 'train')[0]
  lut = dict(zip(SPEC_TRAIN_LABEL_IDS, range(19)))
  np.testing.assert_array_equal(mask.numpy(), np.vectorize(lambda v: lut.get(v, 255))(raw))


def checkpoint_weights(path):
  return torch.load(path, weights_only=True)['model']


def interrupted_run(argv, monkeypatch, after_checkpoints: int):
  """segmentation.main(argv) stopped by an interruption right after its n-th checkpoint."""
  real_replace, saved = os.replace, []

  def replace_then_crash(src, dst):
    real_replace(src, dst)
    saved.append(dst)
    if len(saved) == after_checkpoints:
      raise KeyboardInterrupt('simulated interruption')

  with monkeypatch.context() as patch:
    patch.setattr(segmentation.os, 'replace', replace_then_crash)
    with pytest.raises(KeyboardInterrupt):
      segmentation.main(argv)


def test_voc_end_to_end_and_resume(tmp_path, resnet50_pth, monkeypatch):  # noqa: F811
  data = write_voc12(tmp_path, n_train=2, n_val=2, n_aug=4)
  common = [str(resnet50_pth), '--dataset', 'voc', '--data', str(data), *TINY, '--epochs', '2']
  # Reference: two uninterrupted epochs.
  segmentation.main(common + ['--workdir', str(tmp_path / 'a'), '--out', str(tmp_path / 'a.json')])
  # The same, interrupted right after the first epoch's checkpoint, then started again.
  interrupted_run(common + ['--workdir', str(tmp_path / 'b')], monkeypatch, after_checkpoints=1)
  loaded = []
  real_transform = seg_data.voc_train_transform

  def counting_transform(size):
    transform = real_transform(size)
    return lambda image, mask: (loaded.append(1), transform(image, mask))[1]

  monkeypatch.setattr(seg_data, 'voc_train_transform', counting_transform)
  segmentation.main(common + ['--workdir', str(tmp_path / 'b'), '--out', str(tmp_path / 'b.json')])
  assert len(loaded) == 4  # Only the second epoch (4 train_aug images) was trained again.
  a, b = (checkpoint_weights(tmp_path / w / 'run0' / 'checkpoint.pt') for w in 'ab')
  for key in a:
    torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
  result = json.loads((tmp_path / 'b.json').read_text())
  assert result == json.loads((tmp_path / 'a.json').read_text())
  assert list(result['iou']) == list(seg_data.VOC_CLASSES)
  assert 0 <= result['miou'] <= 100 and result['miou_std'] == 0


def test_select_best_keeps_the_best_epoch_across_a_resume(tmp_path, resnet50_pth,  # noqa: F811
                                                          monkeypatch):
  """Val mIoU 5, 9, 7 over three epochs, interrupted after the second: epoch 1 is reported."""
  data = write_voc12(tmp_path, n_train=2, n_val=2, n_aug=4)
  args = [str(resnet50_pth), '--dataset', 'voc', '--data', str(data), *TINY, '--epochs', '3',
          '--select', 'best', '--workdir', str(tmp_path / 'w'), '--out', str(tmp_path / 'r.json')]
  scores = iter([5.0, 9.0, 7.0])
  monkeypatch.setattr(segmentation, 'score',
                      lambda *a, **k: {'miou': next(scores),
                                       'iou': dict.fromkeys(seg_data.VOC_CLASSES, 1.0)})
  interrupted_run(args, monkeypatch, after_checkpoints=2)
  segmentation.main(args)
  assert next(scores, None) is None  # every epoch was scored once
  run = json.loads((tmp_path / 'w' / 'run0' / 'result.json').read_text())
  assert (run['epoch'], run['miou']) == (1, 9.0)
  result = json.loads((tmp_path / 'r.json').read_text())
  assert result['select'] == 'best' and result['miou'] == 9.0


def test_cityscapes_end_to_end_two_runs(tmp_path, resnet50_pth, capsys):  # noqa: F811
  data = write_cityscapes(tmp_path / 'cityscapes', per_split=(2, 1))
  out = tmp_path / 'city.json'
  segmentation.main([str(resnet50_pth), '--dataset', 'cityscapes', '--data', str(data), *TINY,
                     '--runs', '2', '--workdir', str(tmp_path / 'w'), '--out', str(out)])
  result = json.loads(out.read_text())
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
  runs = [json.loads((tmp_path / 'w' / f'run{r}' / 'result.json').read_text()) for r in (0, 1)]
  assert [r['seed'] for r in runs] == [0, 1]
  assert result['miou_runs'] == [r['miou'] for r in runs]
  assert result['miou'] == pytest.approx(np.mean(result['miou_runs']))
  assert result['miou_std'] == pytest.approx(np.std(result['miou_runs']))
  assert list(result['iou']) == list(seg_data.CITYSCAPES_CLASSES)


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process_evaluation(tmp_path, resnet50_pth):  # noqa: F811
  data = write_cityscapes(tmp_path / 'cityscapes', per_split=(4, 3))
  workdir, out = tmp_path / 'w', tmp_path / 'ddp.json'
  subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                  '-m', 'eval.segmentation', str(resnet50_pth), '--dataset', 'cityscapes',
                  '--data', str(data), *TINY, '--batch_size', '4', '--workdir', str(workdir),
                  '--out', str(out)],
                 check=True, timeout=300, cwd=Path(__file__).parents[1],
                 env={**os.environ, 'OMP_NUM_THREADS': '1'})
  # Rank 0's checkpoint, evaluated in this process on the whole val set, gives the same mIoU:
  # the val shards are disjoint and complete, and every rank scored rank 0's weights.
  model = segmentation.build_fcn(resnet50_pth, 19, 1, torch.device('cpu'))
  model.load_state_dict(checkpoint_weights(workdir / 'run0' / 'checkpoint.pt'))
  val = seg_data.Cityscapes(data, 'val', seg_data.full_resolution())
  confusion = segmentation.evaluate(model, val, 19, torch.device('cpu'))
  assert confusion.sum() > 0
  assert json.loads(out.read_text())['miou'] == pytest.approx(
      np.nanmean(iou_per_class(confusion)) * 100, abs=1e-9)
