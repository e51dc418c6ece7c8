"""DAVIS-2017 metrics, label propagation and the eval.davis command."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from scipy import ndimage

import cv2_rules
from eval import davis, davis_metrics as dm
from eval.common import IMAGENET_MEAN, IMAGENET_STD
from fixtures_eval import resnet50_pth  # noqa: F401  (pytest fixture)

CAR_SHADOW = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'davis-car-shadow'


# ---------------------------------------------------------------- metrics, hand-computed

def test_jaccard_hand_cases():
  a = np.zeros((10, 20), bool)
  a[:, :10] = True
  b = np.zeros_like(a)
  b[:, 5:15] = True  # overlap 50 px, union 150 px
  c = np.zeros_like(a)
  c[:, 10:] = True
  empty = np.zeros_like(a)
  assert dm.jaccard(a, a) == 1
  assert dm.jaccard(a, c) == 0
  assert dm.jaccard(a, b) == pytest.approx(1 / 3)
  assert dm.jaccard(empty, empty) == 1
  assert dm.jaccard(a, empty) == 0
  np.testing.assert_allclose(dm.jaccard(np.stack([a, a]), np.stack([b, c])), [1 / 3, 0])


def test_tolerance_is_8px_at_480p():
  assert dm.bound_pix((480, 854)) == 8
  assert dm.bound_pix((100, 100)) == 2  # ceil(0.008 * 141.4)


def half_plane(shift, height=480, width=854, step_row=None, step=0):
  """Foreground = columns < 427 + shift (+ step below step_row)."""
  m = np.zeros((height, width), bool)
  m[:, :427 + shift] = True
  if step_row is not None:
    m[step_row:, :427 + shift + step] = True
  return m


def test_boundary_is_one_column():
  b = dm.boundary_map(half_plane(0))
  assert b.sum() == 480 and b[:, 426].all()


def test_f_measure_tolerance():
  gt = half_plane(0)
  assert dm.f_measure(gt, gt) == 1
  assert dm.f_measure(gt, half_plane(8)) == 1   # boundary 8 px away: within tolerance
  assert dm.f_measure(gt, half_plane(9)) == 0   # 9 px away: no boundary pixel matches
  # Upper half 8 px away (matched), lower half 9 px away (not): the prediction's boundary has
  # 240 + 1 (the step) + 240 pixels of which 240 match; 240 of the 480 ground-truth pixels
  # are matched. P = 240/481, R = 1/2, F = 2PR / (P + R) = 480/961.
  pred = half_plane(8, step_row=240, step=1)
  assert dm.f_measure(gt, pred) == pytest.approx(480 / 961)


def dilation_f_measure(gt, pred, radius):
  """The benchmark's way: dilate each boundary by a disk (skimage.morphology.disk), match."""
  yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
  disk = yy ** 2 + xx ** 2 <= radius ** 2
  gt_b, pred_b = dm.boundary_map(gt), dm.boundary_map(pred)
  precision = (pred_b & ndimage.binary_dilation(gt_b, disk)).sum() / pred_b.sum()
  recall = (gt_b & ndimage.binary_dilation(pred_b, disk)).sum() / gt_b.sum()
  return 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize('radius', [1, 3, 5])
def test_f_measure_equals_disk_dilation(radius):
  rng = np.random.default_rng(radius)
  for _ in range(3):
    gt = ndimage.gaussian_filter(rng.normal(size=(60, 90)), 4) > 0
    pred = ndimage.gaussian_filter(rng.normal(size=(60, 90)), 4) > 0
    assert dm.f_measure(gt, pred, bound_th=radius) == pytest.approx(
        dilation_f_measure(gt, pred, radius))


def test_f_measure_empty_masks():
  empty = np.zeros((480, 854), bool)
  assert dm.f_measure(empty, empty) == 1
  assert dm.f_measure(half_plane(0), empty) == 0
  assert dm.f_measure(empty, half_plane(0)) == 0


def test_statistics_hand_case():
  # Quarters of [1, 1, 0, 0] by the benchmark's bins: first [1, 1], last [0, 0].
  assert dm.statistics([1, 1, 0, 0]) == (0.5, 0.5, 1.0)


def moving_squares(frames=6, height=48, width=64, size=8, step=4):
  """Label maps [T, H, W] of two squares moving `step` px a frame, one right, one left."""
  labels = np.zeros((frames, height, width), np.uint8)
  for t in range(frames):
    labels[t, 8:8 + size, step * t:step * t + size] = 1
    labels[t, height // 2:height // 2 + size, width - size - step * t:width - step * t] = 2
  return labels


def test_ground_truth_scores_one_and_ends_are_excluded():
  gt = moving_squares()
  j, f = dm.evaluate_sequence(gt, gt)
  assert j.shape == f.shape == (2, 4)
  assert dm.summarize({'s': (j, f)})['J&F-Mean'] == 1
  pred = gt.copy()
  pred[0] = pred[-1] = 0  # wrong first and last frames do not count
  assert dm.summarize({'s': dm.evaluate_sequence(gt, pred)})['J&F-Mean'] == 1
  pred[2] = 0  # one of the 4 scored frames empty: J and F 0 there
  out = dm.summarize({'s': dm.evaluate_sequence(gt, pred)})
  assert out['J-Mean'] == pytest.approx(0.75) and out['F-Mean'] == pytest.approx(0.75)


def test_void_counts_as_background():
  gt = moving_squares()
  gt_void = gt.copy()
  gt_void[:, :4, :] = dm.VOID
  assert dm.summarize({'s': dm.evaluate_sequence(gt_void, gt)})['J&F-Mean'] == 1


def test_summary_averages_over_objects():
  one = np.ones((1, 5))
  zero = np.zeros((2, 5))
  out = dm.summarize({'a': (one, one), 'b': (zero, zero)})
  assert out['J-Mean'] == pytest.approx(1 / 3)  # 3 objects, not 2 sequences
  assert out['J&F-Mean'] == pytest.approx(1 / 3)
  assert out['per_sequence']['a']['J&F-Mean'] == 1 and out['per_sequence']['b']['J-Mean'] == 0
  assert set(out['per_object']) == {'a_1', 'b_1', 'b_2'}


def test_prediction_with_extra_object_is_refused():
  gt = moving_squares()
  pred = gt.copy()
  pred[1, 0, 0] = 3
  with pytest.raises(ValueError, match='object id 3'):
    dm.evaluate_sequence(gt, pred, 'seq-x')


# ---------------------------------------------------------------- propagation

def reference_propagation(feats, first, temperature, topk, radius, context):
  """Float64 NumPy, one query cell at a time, written from the protocol's description."""
  T, h, w, _ = feats.shape
  labels = np.zeros((T, h, w, first.shape[-1]))
  labels[0] = first
  for t in range(1, T):
    frames = [0] + [max(t - context + i, 0) for i in range(context)]
    for y in range(h):
      for x in range(w):
        cands = []
        for slot, f in enumerate(frames):
          for yy in range(h):
            for xx in range(w):
              if slot > 0 and (yy - y) ** 2 + (xx - x) ** 2 >= radius ** 2:
                continue
              cands.append((feats[f, yy, xx] @ feats[t, y, x] / temperature, f, yy, xx))
        cands.sort(key=lambda c: -c[0])
        top = cands[:topk]
        a = np.array([c[0] for c in top])
        wts = np.exp(a - a.max())
        wts /= wts.sum()
        labels[t, y, x] = sum(wi * labels[f, yy, xx] for wi, (_, f, yy, xx) in zip(wts, top))
  return labels


def test_propagate_matches_float64_reference():
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(6, 4, 5, 8))
  feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
  first = np.eye(3)[rng.integers(0, 3, size=(4, 5))]
  args = dict(temperature=0.1, topk=4, radius=2, context=3)
  want = reference_propagation(feats, first, **args)
  got = davis.propagate(torch.tensor(feats, dtype=torch.float32),
                        torch.tensor(first, dtype=torch.float32), chunk=7, **args)
  np.testing.assert_allclose(got.numpy(), want, atol=1e-4)


def perfect_features(labels, n_classes):
  """One-hot of the true label plus a small position code: what an ideal encoder would give."""
  T, h, w = labels.shape
  ys, xs = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing='ij')
  pos = np.broadcast_to(np.stack([ys, xs], -1), (T, h, w, 2))
  feats = np.concatenate([np.eye(n_classes)[labels], 0.1 * pos], -1)
  return torch.nn.functional.normalize(torch.tensor(feats, dtype=torch.float32), dim=-1)


def test_perfect_features_carry_the_first_mask():
  gt = moving_squares(frames=8, height=128, width=128, size=32, step=8)
  grid = gt[:, ::8, ::8]  # 16 x 16 cells, aligned with the squares
  soft = davis.propagate(perfect_features(grid, 3), davis.one_hot_labels(gt[0], 3, (16, 16)))
  np.testing.assert_array_equal(soft.argmax(-1).numpy(), grid)
  # Bilinear upsampling then argmax rounds the squares' corners a little.
  pred = davis.to_label_maps(soft, gt.shape[1:])
  out = dm.summarize({'s': dm.evaluate_sequence(gt, pred)})
  assert out['J&F-Mean'] > 0.95
  # Copying the first mask would fail: the squares have moved away from it.
  copy = np.broadcast_to(gt[:1], gt.shape)
  assert dm.summarize({'s': dm.evaluate_sequence(gt, copy)})['J&F-Mean'] < 0.5


@pytest.mark.skipif(not CAR_SHADOW.is_dir(), reason=f'real DAVIS sequence not at {CAR_SHADOW}')
@pytest.mark.parametrize('grid', [(60, 107), (15, 27)])  # native 480p; frames at --scale 0.25
def test_first_frame_labels_are_vos_py_bilinear_resize(grid):
  """code/data/vos.py: cv2.resize(np.float32(onehot), (w, h)) with INTER_LINEAR, kept soft;
  (60, 107) is its ceil(480 / 8) x ceil(854 / 8)."""
  mask = np.array(Image.open(CAR_SHADOW / 'Annotations' / '480p' / 'car-shadow' / '00000.png'))
  one_hot = np.stack([mask == c for c in np.unique(mask)], -1).astype(np.float32)
  want = cv2_rules.resize_linear(one_hot, grid)
  got = davis.one_hot_labels(mask, 2, grid).numpy()
  # float32 noise: a source coordinate near x = 850 is good to ~6e-5 px in float32 (cv2 too).
  np.testing.assert_allclose(got, want, atol=1e-4)
  assert ((want > 0.01) & (want < 0.99)).any()  # soft at the car's outline, not argmaxed


# ---------------------------------------------------------------- Jabri et al.'s steps

def videowalk_features(weights, frames):
  """resnet.py's modify(remove_layers=['layer4']): every layer3 conv at stride 1, up to layer3;
  test.py L2-normalises over channels. [T, h, w, 1024] float64."""
  net = torchvision.models.resnet50()
  net.load_state_dict(torch.load(weights, weights_only=True))
  for m in net.layer3.modules():
    if isinstance(m, torch.nn.Conv2d):
      m.stride = (1, 1)
  trunk = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1,
                              net.layer2, net.layer3).eval()
  x = (frames / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  with torch.no_grad():
    f = trunk(torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2))
  return torch.nn.functional.normalize(f, dim=1).permute(0, 2, 3, 1).double().numpy()


def videowalk_propagation(feats, first, temperature=0.05, topk=10, radius=12, context=20):
  """test.py's loop: the sequence padded with `context` copies of frame 0 (vos.py make_paths);
  the target's keys are frame 0 (long memory) and the `context` padded frames before it;
  affinities key . query, -1e10 at recent-frame cells whose distance is not < radius
  (MaskedAttention), / temperature, top-k, softmax, weighted sum of the keys' soft labels."""
  T, h, w, C = feats.shape
  n = h * w
  feats = feats.reshape(T, n, C)
  ys, xs = np.divmod(np.arange(n), w)
  near = np.sqrt((ys[:, None] - ys) ** 2 + (xs[:, None] - xs) ** 2) < radius  # [key, query]
  padded = [0] * context + list(range(T))
  labels = np.zeros((T, n, first.shape[-1]))
  labels[0] = first.reshape(n, -1)
  for t in range(1, T):
    frames = [0] + padded[t:t + context]
    keys = feats[frames].reshape(-1, C)
    A = keys @ feats[t].T  # [keys, queries]
    A[n:] += np.where(np.tile(near, (context, 1)), 0, -1e10)
    A /= temperature
    ids = np.argsort(-A, axis=0, kind='stable')[:topk]
    weights = np.take_along_axis(A, ids, 0)
    weights = np.exp(weights - weights.max(0))
    weights /= weights.sum(0)
    labels[t] = np.einsum('kq,kqn->qn', weights, labels[frames].reshape(-1, labels.shape[-1])[ids])
  return labels.reshape(T, h, w, -1)


def videowalk_label_maps(weights, frames, first_mask, size):
  """Label maps [T, H, W] by Jabri et al.'s steps, the soft labels [T, H, W, N] before argmax."""
  feats = videowalk_features(weights, frames)
  one_hot = np.stack([first_mask == c for c in range(first_mask.max() + 1)], -1)
  first = cv2_rules.resize_linear(one_hot.astype(np.float32), feats.shape[1:3])
  soft = np.stack([cv2_rules.resize_linear(s, size)  # test_utils.dump_predictions
                   for s in videowalk_propagation(feats, first)])
  return soft.argmax(-1), soft


def assert_same_up_to_near_ties(pred, want, soft):
  """Label maps equal except where the reference's two best labels are within float noise."""
  differ = pred != want
  top2 = np.sort(soft, -1)[..., -2:]
  assert differ.mean() < 1e-3 and (top2[..., 1] - top2[..., 0])[differ].max(initial=0) < 1e-5


# ---------------------------------------------------------------- the command

def write_davis(root, sequences):
  """A DAVIS-2017 tree: {name: (frames uint8 [T, H, W, 3], labels [T, H, W])}."""
  for name, (frames, labels) in sequences.items():
    for t, (frame, lab) in enumerate(zip(frames, labels)):
      for sub, arr in (('JPEGImages', frame), ('Annotations', lab)):
        path = root / sub / '480p' / name / f'{t:05d}.{"jpg" if sub == "JPEGImages" else "png"}'
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
  (root / 'ImageSets' / '2017').mkdir(parents=True)
  (root / 'ImageSets' / '2017' / 'val.txt').write_text('\n'.join(sequences) + '\n')


@pytest.fixture(scope='module')
def fixture_root(tmp_path_factory):
  root = tmp_path_factory.mktemp('davis')
  rng = np.random.default_rng(0)
  sequences = {}
  for name in ('squares', 'squares-noisy'):
    labels = moving_squares(frames=5, height=64, width=96)
    colours = np.array([[40, 40, 40], [220, 30, 30], [30, 30, 220]], np.uint8)
    frames = colours[labels] + rng.integers(0, 20, labels.shape + (3,), dtype=np.uint8)
    sequences[name] = (frames, labels)
  write_davis(root, sequences)
  return root


def copy_ground_truth(root, dest, sequences):
  for seq in sequences:
    shutil.copytree(root / 'Annotations' / '480p' / seq, dest / seq)


def test_command_on_fixture(resnet50_pth, fixture_root, tmp_path, capsys):  # noqa: F811
  save = tmp_path / 'pred'
  out = davis.main([str(resnet50_pth), '--data', str(fixture_root), '--save_dir', str(save),
                    '--out', str(tmp_path / 'r.json')])
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert printed == json.loads((tmp_path / 'r.json').read_text())
  assert set(out['per_sequence']) == {'squares', 'squares-noisy'}
  assert out['frames'] == 10 and out['fps'] > 0 and out['temperature'] == 0.05
  scores = {}
  for seq in ('squares', 'squares-noisy'):  # the same by Jabri et al.'s steps
    frame_paths, ann_paths = davis.sequence_files(fixture_root, seq)
    gt = davis.read_label_maps(ann_paths)
    want, soft = videowalk_label_maps(resnet50_pth, davis.read_frames(frame_paths).astype(float),
                                      gt[0], gt.shape[1:])
    pred = davis.read_label_maps([save / seq / p.name for p in ann_paths])
    assert_same_up_to_near_ties(pred[1:], want[1:], soft[1:])
    want[0] = gt[0]
    scores[seq] = dm.evaluate_sequence(gt, want)
  assert out['J&F-Mean'] == pytest.approx(dm.summarize(scores)['J&F-Mean'], abs=1e-3)
  png = Image.open(save / 'squares' / '00003.png')
  assert png.mode == 'P' and png.size == (96, 64)
  assert png.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]  # the DAVIS palette
  assert (save / 'overlays' / 'squares.gif').is_file()
  # Scoring the written PNGs gives the same numbers as scoring in memory.
  rescored = davis.main(['--results_path', str(save), '--data', str(fixture_root)])
  assert rescored['J&F-Mean'] == pytest.approx(out['J&F-Mean'])


def test_ground_truth_as_results_scores_one(fixture_root, tmp_path):
  copy_ground_truth(fixture_root, tmp_path, ['squares', 'squares-noisy'])
  out = davis.main(['--results_path', str(tmp_path), '--data', str(fixture_root)])
  assert out['J&F-Mean'] == 1 and out['J-Mean'] == 1 and out['F-Mean'] == 1


def test_bad_input_names_the_path(fixture_root, tmp_path, resnet50_pth):  # noqa: F811
  missing = tmp_path / 'nowhere'
  with pytest.raises(FileNotFoundError, match='nowhere'):
    davis.main([str(resnet50_pth), '--data', str(missing)])
  (tmp_path / 'flat').mkdir()
  with pytest.raises(FileNotFoundError, match='JPEGImages/480p.*expected the DAVIS-2017 layout'):
    davis.main([str(resnet50_pth), '--data', str(tmp_path / 'flat')])
  with pytest.raises(FileNotFoundError, match='no-such-seq'):
    davis.main([str(resnet50_pth), '--data', str(fixture_root), '--sequences', 'no-such-seq'])
  results = tmp_path / 'results'
  copy_ground_truth(fixture_root, results, ['squares'])
  (results / 'squares' / '00002.png').unlink()
  with pytest.raises(FileNotFoundError, match='00002.png'):
    davis.main(['--results_path', str(results), '--data', str(fixture_root),
                '--sequences', 'squares'])


@pytest.mark.skipif(not CAR_SHADOW.is_dir(), reason=f'real DAVIS sequence not at {CAR_SHADOW}')
def test_real_sequence(resnet50_pth, tmp_path):  # noqa: F811
  save = tmp_path / 'pred'
  out = davis.main([str(resnet50_pth), '--data', str(CAR_SHADOW), '--max_frames', '6',
                    '--scale', '0.25', '--save_dir', str(save)])
  assert list(out['per_sequence']) == ['car-shadow']
  annotation = CAR_SHADOW / 'Annotations' / '480p' / 'car-shadow' / '00000.png'
  real_palette = Image.open(annotation).getpalette()
  for t in range(6):
    png = Image.open(save / 'car-shadow' / f'{t:05d}.png')
    assert png.mode == 'P' and png.size == (854, 480) and png.getpalette() == real_palette
  # The same frames by Jabri et al.'s steps: the same label maps and scores.
  frame_paths, ann_paths = davis.sequence_files(CAR_SHADOW, 'car-shadow', 6)
  gt = davis.read_label_maps(ann_paths)
  frames = davis.read_frames(frame_paths, 0.25).astype(float)
  want, soft = videowalk_label_maps(resnet50_pth, frames, gt[0], gt.shape[1:])
  pred = davis.read_label_maps([save / 'car-shadow' / p.name for p in ann_paths])
  assert_same_up_to_near_ties(pred[1:], want[1:], soft[1:])
  want[0] = gt[0]
  expected = dm.summarize({'car-shadow': dm.evaluate_sequence(gt, want)})
  assert out['J&F-Mean'] == pytest.approx(expected['J&F-Mean'], abs=1e-3)
  assert 0.05 < out['J&F-Mean'] < 0.95  # neither everything nor nothing right
  copy_ground_truth(CAR_SHADOW, tmp_path / 'gt', ['car-shadow'])
  exact = davis.main(['--results_path', str(tmp_path / 'gt'), '--data', str(CAR_SHADOW)])
  assert exact['J&F-Mean'] == 1


def test_defaults_are_the_reference_davis_command():
  """ajabri/videowalk README: --topk 10 --videoLen 20 --radius 12 --temperature 0.05."""
  args = davis.parse_args(['w.pth', '--data', 'd'])
  assert (args.topk, args.context, args.radius, args.temperature) == (10, 20, 12, 0.05)


def test_layer3_features_have_stride_8_and_1024_channels(resnet50_pth):  # noqa: F811
  """SPEC.md: layer3 output with layer3's stride set to 1 (stride 8, 1024-d); torchvision's
  own layer3 would give stride 16."""
  net = davis.layer3_extractor(resnet50_pth, torch.device('cpu'))
  with torch.no_grad():
    assert net(torch.zeros(1, 3, 64, 96)).shape == (1, 1024, 8, 12)
