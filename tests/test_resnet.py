"""The Flax ResNets against torchvision, stage by stage, in eval and train mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from converters.mapping import flax_to_torch, torch_to_flax
from revisit_jax.models import Encoder, ProjectionHead, resnet

STAGES = ('layer1', 'layer2', 'layer3', 'layer4')


def random_torch_resnet(arch, dilation=(False, False, False), seed=0):
  """A torchvision ResNet with random weights and random BN statistics."""
  torch.manual_seed(seed)
  model = getattr(torchvision.models, arch)(replace_stride_with_dilation=list(dilation))
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.running_mean.uniform_(-0.5, 0.5)
      m.running_var.uniform_(0.5, 2.0)
      m.weight.data.uniform_(0.5, 1.5)
      m.bias.data.uniform_(-0.2, 0.2)
      m.num_batches_tracked.fill_(7)
  return model


def torch_stages(model, x):
  """Outputs of every stage and the pooled feature, as NHWC NumPy arrays."""
  outs = {}
  hooks = [getattr(model, n).register_forward_hook(
      lambda mod, inp, out, n=n: outs.__setitem__(n, out.detach().permute(0, 2, 3, 1).numpy()))
      for n in ('maxpool',) + STAGES]
  model.fc = torch.nn.Identity()
  with torch.no_grad():
    pooled = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()  # x's dtype
  for h in hooks:
    h.remove()
  return {'stem': outs.pop('maxpool'), **outs, 'pooled': pooled}


def flax_from_torch(model, arch, dilation, **kwargs):
  flax_model = resnet(arch, replace_stride_with_dilation=dilation, return_stages=True, **kwargs)
  template = jax.eval_shape(flax_model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  state = {k: v.numpy() for k, v in model.state_dict().items() if not k.startswith('fc.')}
  params, stats = torch_to_flax(state, template['params'], template['batch_stats'])
  return flax_model, params, stats


def relative_error(a, b):
  return float(np.abs(np.asarray(a) - b).max() / (np.abs(b).max() + 1e-12))


CASES = [('resnet18', (False, False, False)),
         ('resnet50', (False, False, False)),
         ('resnet50', (False, True, True))]


@pytest.mark.parametrize('arch,dilation', CASES)
def test_eval_mode_matches_torchvision_stage_by_stage(arch, dilation):
  model = random_torch_resnet(arch, dilation).eval()
  x = np.random.RandomState(1).randn(2, 80, 72, 3).astype(np.float32)
  expected = torch_stages(model, x)
  flax_model, params, stats = flax_from_torch(model, arch, dilation)
  got = flax_model.apply({'params': params, 'batch_stats': stats}, x, train=False)
  for name, value in expected.items():
    assert got[name].shape == value.shape, name
    assert relative_error(got[name], value) < 1e-4, name


def test_cifar_stem_matches_torchvision_with_small_image_stem():
  """stem='cifar' is torchvision's ResNet with a 3x3 stride-1 conv1 and no max-pool."""
  model = random_torch_resnet('resnet18')
  model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
  model.maxpool = torch.nn.Identity()
  model.eval()
  x = np.random.RandomState(4).randn(2, 32, 32, 3).astype(np.float32)
  expected = torch_stages(model, x)
  flax_model, params, stats = flax_from_torch(model, 'resnet18', (False, False, False),
                                              stem='cifar')
  got = flax_model.apply({'params': params, 'batch_stats': stats}, x, train=False)
  assert got['stem'].shape == (2, 32, 32, 64)
  for name, value in expected.items():
    assert relative_error(got[name], value) < 1e-4, name


def test_unknown_stem_is_refused():
  with pytest.raises(ValueError, match="stem 'tiny'"):
    resnet('resnet18', stem='tiny').init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize('arch,dilation', [CASES[0], CASES[2]])
def test_train_mode_outputs_and_running_statistics_match_torchvision(arch, dilation):
  """Batch statistics amplify float32 rounding layer by layer (torchvision's own float32
  output drifts ~1e-4 from its float64 output at layer4), so the reference here is
  torchvision in float64: the true value both float32 implementations approximate."""
  model = random_torch_resnet(arch, dilation).train()
  x = np.random.RandomState(2).randn(4, 64, 64, 3).astype(np.float32)
  flax_model, params, stats = flax_from_torch(model, arch, dilation)
  expected = torch_stages(model.double(), x.astype(np.float64))  # updates running statistics
  got, updated = flax_model.apply({'params': params, 'batch_stats': stats}, x, train=True,
                                  mutable=['batch_stats'])
  for name, value in expected.items():
    assert relative_error(got[name], value) < 1e-4, name
  torch_state = {k: v.numpy() for k, v in model.state_dict().items()}
  for key, value in flax_to_torch(params, updated['batch_stats']).items():
    if 'running' in key or 'num_batches' in key:
      np.testing.assert_allclose(value, torch_state[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_bn_groups_equal_separate_batches():
  """Two BN groups in one batch give what each half gives alone (per-GPU BN)."""
  model = resnet('resnet18', width=8, bn_groups=2)
  single = resnet('resnet18', width=8)
  x = np.random.RandomState(3).randn(4, 32, 32, 3).astype(np.float32)
  variables = model.init(jax.random.key(0), x)
  both, stats = model.apply(variables, x, train=True, mutable=['batch_stats'])
  halves = [single.apply(variables, x[i:i + 2], train=True, mutable=['batch_stats'])
            for i in (0, 2)]
  np.testing.assert_allclose(both, np.concatenate([h[0] for h in halves]), rtol=1e-5, atol=1e-5)
  mean_of_halves = jax.tree.map(lambda a, b: (a + b) / 2, halves[0][1], halves[1][1])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               stats, mean_of_halves)


def test_projection_head_matches_original_mlp():
  torch.manual_seed(0)
  mlp = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 128))
  head = ProjectionHead()
  params = head.init(jax.random.key(0), jnp.zeros((1, 2048)))['params']
  assert {k: v.shape for k, v in flax_to_torch({'head': params}, {}).items()} == \
      {f'fc.{k}': tuple(v.shape) for k, v in mlp.state_dict().items()}
  state = {f'fc.{k}': v.numpy() for k, v in mlp.state_dict().items()}
  loaded, _ = torch_to_flax(state, {'head': params}, {})
  h = np.random.RandomState(0).randn(3, 2048).astype(np.float32)
  with torch.no_grad():
    expected = mlp(torch.from_numpy(h)).numpy()
  got = head.apply({'params': loaded['head']}, h)
  assert relative_error(got, expected) < 1e-5


def test_bf16_compute_keeps_float32_parameters_and_statistics():
  encoder = Encoder(backbone=resnet('resnet18', width=8, dtype=jnp.bfloat16),
                    head=ProjectionHead(hidden_dim=32, out_dim=16, dtype=jnp.bfloat16))
  x = jnp.zeros((2, 32, 32, 3))
  variables = encoder.init(jax.random.key(0), x)
  (z, h), new = encoder.apply(variables, x, train=True, mutable=['batch_stats'])
  assert z.dtype == jnp.float32 and h.dtype == jnp.float32
  floats = [v for v in jax.tree.leaves((variables['params'], new['batch_stats']))
            if jnp.issubdtype(v.dtype, jnp.floating)]
  assert floats and all(v.dtype == jnp.float32 for v in floats)


def test_torchvision_initialisation_statistics():
  """Conv kernels ~ N(0, 2/fan_out) as torchvision's kaiming_normal_(fan_out)."""
  params = resnet('resnet50').init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  kernel = np.asarray(params['layer3_0']['conv2']['kernel'])  # 3x3x256x256
  fan_out = 3 * 3 * 256
  assert abs(kernel.std() - np.sqrt(2 / fan_out)) / np.sqrt(2 / fan_out) < 0.02


def test_basic_block_refuses_dilation_like_torchvision():
  with pytest.raises(NotImplementedError):
    resnet('resnet18', replace_stride_with_dilation=(False, False, True)).init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize('arch', ['resnet18', 'resnet34', 'resnet50', 'resnet101'])
def test_parameter_names_and_shapes_equal_torchvision(arch):
  shapes = jax.eval_shape(resnet(arch).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  ours = {k: tuple(v.shape) for k, v in
          flax_to_torch(variables['params'], variables['batch_stats']).items()}
  theirs = {k: tuple(v.shape) for k, v in getattr(torchvision.models, arch)().state_dict().items()
            if not k.startswith('fc.')}
  assert ours == theirs


def test_without_layer4_ends_at_layer3():
  model = resnet('resnet50', num_stages=3, return_stages=True)
  out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0],
                       jnp.zeros((1, 64, 64, 3)))
  assert 'layer4' not in out and out['pooled'].shape == (1, 1024)
