"""Shared test set-up.

torchvision must be imported before TensorFlow: the other order crashes in torchvision's
import of triton (a native-library clash), and tests of both halves run in one process.
"""

import pytest
import torchvision  # noqa: F401


@pytest.fixture(scope='session')
def demo_run(tmp_path_factory):
  """(workdir, finished process) of configs/demo.py as it ships, trained once per session in a
  subprocess (the suite's longest step): test_main checks that it learns and writes its curves,
  the evaluation and export tests take its learned weights."""
  from test_main import run
  workdir = tmp_path_factory.mktemp('demo')
  result = run(workdir, cache=tmp_path_factory.mktemp('demo_cache'), fields=[])
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result
