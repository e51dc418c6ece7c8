"""Runs many command lines as `python -m MODULE ARG...` would, each in its own process forked
from this one once the slow imports (torch, JAX, TensorFlow, orbax) are done, so a test can
try every command on every bad input in seconds each instead of a fresh interpreter each.

  python tests/commands_child.py CASES.json RESULTS.json [JOBS]

CASES.json holds [[module, arg, ...], ...]; RESULTS.json gets, in the same order,
{"status": exit status, "stdout": ..., "stderr": ..., "seconds": ...}. JOBS (default 2) run
at a time. Run it from the repository root.
"""

import json
import os
import runpy
import shutil
import sys
import tempfile
import time
import traceback

# torchvision before TensorFlow (see conftest.py); none of these starts a JAX backend.
import torchvision  # noqa: F401  isort: skip
import flax  # noqa: F401
import jax  # noqa: F401
import ml_collections  # noqa: F401
import optax  # noqa: F401
import orbax.checkpoint  # noqa: F401
import sklearn  # noqa: F401
import tensorflow  # noqa: F401
import torch  # noqa: F401

TIMEOUT_S = 300


def exit_status(code) -> int:
  """What the interpreter exits with for SystemExit(code) (a message is printed first)."""
  if code is None:
    return 0
  if isinstance(code, int):
    return code
  print(code, file=sys.stderr)
  return 1


def child(argv: list[str], out: str, err: str):
  """In the forked process: python -m argv[0] argv[1:], output into the files out and err."""
  status = 1
  try:
    os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
    os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    sys.argv = list(argv)
    try:
      runpy.run_module(argv[0], run_name='__main__', alter_sys=True)
      status = 0
    except SystemExit as e:
      status = exit_status(e.code)
    except BaseException:  # noqa: BLE001  what the interpreter prints for an uncaught error
      traceback.print_exc()
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def start(argv: list[str], out: str, err: str) -> int:
  pid = os.fork()
  if pid == 0:
    child(argv, out, err)
  return pid


def finish(pid: int, started: float, out: str, err: str) -> dict:
  """Waits for the case's process (killed after TIMEOUT_S) and reads what it printed."""
  while True:
    done, wait_status = os.waitpid(pid, os.WNOHANG)
    if done:
      break
    if time.monotonic() > started + TIMEOUT_S:
      os.kill(pid, 9)
      _, wait_status = os.waitpid(pid, 0)
      break
    time.sleep(0.02)
  with open(out) as f_out, open(err) as f_err:
    return {'status': os.waitstatus_to_exitcode(wait_status), 'stdout': f_out.read(),
            'stderr': f_err.read(), 'seconds': round(time.monotonic() - started, 2)}


def main(cases_file: str, results_file: str, jobs: str = '2'):
  """Runs the cases, `jobs` at a time."""
  sys.path[0] = os.getcwd()  # what `python -m` puts first
  with open(cases_file) as f:
    cases = json.load(f)
  scratch = tempfile.mkdtemp()  # not TemporaryDirectory: its exit hook would run in children
  results, running = [None] * len(cases), {}
  try:
    for i, argv in enumerate(cases):
      while len(running) >= int(jobs):
        j, *args = running.pop(next(iter(running)))
        results[j] = finish(*args)
      files = (os.path.join(scratch, f'{i}.out'), os.path.join(scratch, f'{i}.err'))
      running[i] = (i, start(argv, *files), time.monotonic(), *files)
    for j, *args in running.values():
      results[j] = finish(*args)
  finally:
    shutil.rmtree(scratch)
  with open(results_file, 'w') as f:
    json.dump(results, f)


if __name__ == '__main__':
  main(*sys.argv[1:])
