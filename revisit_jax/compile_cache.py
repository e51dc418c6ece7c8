"""JAX's persistent compilation cache, on by default, so a restarted run skips compiling.

config.train.compilation_cache is a folder, 'off', or 'auto': then $REVISIT_JAX_XLA_CACHE
(a folder or 'off'), else a folder already given to JAX (JAX_COMPILATION_CACHE_DIR), else
$XDG_CACHE_HOME/revisit_jax/xla (~/.cache/revisit_jax/xla): the user's cache, not the
workdir, so every run of a config shares its compiled programs.

The cache skips XLA's compilation only: JAX still traces the Python functions and lowers them
(the cache key is the lowered program). `seconds()` adds up the three, so a run can say
where its start-up went.
"""

import collections
import os
from pathlib import Path

import jax

ENV = 'REVISIT_JAX_XLA_CACHE'
# JAX's duration events (jax._src.dispatch) -> the names `seconds()` reports them under.
EVENTS = {'/jax/core/compile/jaxpr_trace_duration': 'trace_s',
          '/jax/core/compile/jaxpr_to_mlir_module_duration': 'lower_s',
          '/jax/core/compile/backend_compile_duration': 'xla_compile_s'}  # or read from the cache
_spent = collections.Counter()


def _count(event: str, duration: float, **_):
  if event in EVENTS:
    _spent[EVENTS[event]] += duration


jax.monitoring.register_event_duration_secs_listener(_count)


def seconds() -> dict[str, float]:
  """Seconds this process has spent tracing, lowering and compiling (or loading compiled
  programs from the cache) so far."""
  return {name: _spent[name] for name in EVENTS.values()}


def resolve(setting: str) -> str | None:
  """The cache folder `setting` stands for; None when the cache is off."""
  if setting == 'auto':
    setting = os.environ.get(ENV) or jax.config.jax_compilation_cache_dir or str(
        Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'revisit_jax' / 'xla')
  return None if setting == 'off' else str(Path(setting).expanduser())


def enable(setting: str) -> str | None:
  """Points JAX's persistent cache at resolve(setting) (before the first compilation);
  returns the folder, or None with the cache turned off."""
  folder = resolve(setting)
  if folder is None:
    jax.config.update('jax_enable_compilation_cache', False)
  else:
    jax.config.update('jax_enable_compilation_cache', True)
    jax.config.update('jax_compilation_cache_dir', folder)
  return folder
