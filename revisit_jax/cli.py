"""How every command ends on an expected error: `error: ...` on one line of stderr, exit status 2.

Expected errors are those the user fixes from the message: OSError (a path that is missing,
unreadable or of the wrong kind), ValueError (a value, a file's contents or a config that does
not fit; the project raises these naming the value) and command-line errors (absl flags,
argparse). Any other exception is a bug and keeps its traceback; REVISIT_JAX_TRACEBACK=1 shows
the traceback of the expected ones too.

  if __name__ == '__main__':
    cli.run(main)        # an argparse command: main(argv=None)
    cli.run_absl(main)   # an absl command: main(argv), flags parsed by absl
"""

import argparse
import os
import sys

from absl import app, flags, logging

EXIT_STATUS = 2  # what argparse and most Unix tools return for bad usage
EXPECTED = (OSError, ValueError, flags.Error, app.UsageError)


def one_line(error) -> str:
  """The exception's message with its line breaks and runs of spaces folded."""
  return ' '.join(str(error).split()) or type(error).__name__


def fail(message: str):
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(EXIT_STATUS)


def guarded(main, *args):
  """main(*args), with an expected error reported in one line."""
  try:
    return main(*args)
  except EXPECTED as e:
    if os.environ.get('REVISIT_JAX_TRACEBACK'):
      raise
    fail(one_line(e))


def _argparse_error(parser, message):
  fail(f'{parser.prog}: {message} (see --help)')


def run(main, argv=None):
  """Runs an argparse command; its usage errors become one line too (argparse prints the
  usage summary first otherwise)."""
  original = argparse.ArgumentParser.error
  argparse.ArgumentParser.error = _argparse_error
  try:
    return guarded(main, argv)
  finally:
    argparse.ArgumentParser.error = original


def parse_absl_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag or --config.FIELD reported in one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(one_line(e))
  except (AttributeError, KeyError) as e:  # ml_collections on a field the config lacks
    while isinstance(e, BaseException) and e.args:  # the KeyError inside the AttributeError
      e = e.args[0]
    given = [a for a in argv[1:] if a.startswith('--config.')]
    fail(f'unknown config field in {" ".join(given)}: {one_line(e)}')


def run_absl(main):
  """Runs an absl command (flags defined at import, main(argv)). Without --verbosity it logs
  warnings and errors only: orbax's INFO lines would bury the command's own output."""
  def quiet_main(argv):
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)
    return guarded(main, argv)

  app.run(quiet_main, flags_parser=parse_absl_flags)
