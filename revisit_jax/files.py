"""Files that are whole or absent: a process killed while writing leaves the previous version.

Each file is written beside its destination under a temporary name, flushed to disk and
renamed onto it (a rename within a folder is atomic), so a reader or a restarted run never
sees half a file.
"""

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def replaced_atomically(path):
  """Yields a temporary path to write `path`'s new contents to; renamed onto `path` when
  the block ends without an error, removed otherwise."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'.{path.name}.tmp')  # a fixed name: a killed write's leftover is reused
  try:
    yield tmp
    with open(tmp, 'rb+') as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def write_text(path, text: str) -> None:
  with replaced_atomically(path) as tmp:
    tmp.write_text(text)
