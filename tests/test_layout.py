"""The imports between the top-level folders go one way (README, Layout).

Every import is read with `ast`, at the top of a module and inside its functions. A module may
import its own folder and the folders before it. An entry point (a module with an
`if __name__ == '__main__':` block) composes: it may also import the folders after its own, but
only in that block or in its `main()`, so importing it as a library pulls in nothing later.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ('configs', 'input_pipeline', 'revisit_jax', 'converters', 'eval')


def modules():
  return sorted(p for folder in ORDER for p in (ROOT / folder).rglob('*.py'))


def is_main_block(node) -> bool:
  test = getattr(node, 'test', None)
  return (isinstance(node, ast.If) and isinstance(test, ast.Compare)
          and isinstance(test.left, ast.Name) and test.left.id == '__name__')


def imports(tree):
  """(imported top-level package, line, whether in `main()` or the __main__ block)."""
  def walk(node, composing):
    for child in ast.iter_child_nodes(node):
      inside = composing or is_main_block(child) or (
          isinstance(child, ast.FunctionDef) and child.name == 'main'
          and node is tree)
      if isinstance(child, ast.Import):
        for alias in child.names:
          yield alias.name.split('.')[0], child.lineno, inside
      elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
        yield child.module.split('.')[0], child.lineno, inside
      yield from walk(child, inside)
  yield from walk(tree, False)


def is_entry_point(tree) -> bool:
  return any(is_main_block(node) for node in tree.body)


def violations(path: Path, root: Path = ROOT) -> list[str]:
  folder = path.relative_to(root).parts[0]
  tree = ast.parse(path.read_text(), str(path))
  entry = is_entry_point(tree)
  out = []
  for package, line, composing in imports(tree):
    if package in ORDER and ORDER.index(package) > ORDER.index(folder):
      if not (entry and composing):
        out.append(f'{path.relative_to(root)}:{line} imports {package} (after {folder})')
  return out


def test_imports_go_one_way():
  found = [v for p in modules() for v in violations(p)]
  assert not found, '\n'.join(found)


@pytest.mark.parametrize('source, entry, bad', [
  ('from converters import mapping\n', False, True),
  ('def f():\n  import eval.common\n', False, True),
  ('def main():\n  import eval.common\n', False, True),  # not an entry point
  ('def main():\n  import eval.common\nif __name__ == "__main__":\n  main()\n', True, False),
  ('def helper():\n  import eval.common\nif __name__ == "__main__":\n  pass\n', True, True),
  ('if __name__ == "__main__":\n  from converters import cli\n', True, False),
  ('from input_pipeline import sources\n', False, False),
])
def test_the_check_sees_violations(tmp_path, source, entry, bad):
  module = tmp_path / 'revisit_jax' / 'probe.py'
  module.parent.mkdir()
  module.write_text(source)
  assert is_entry_point(ast.parse(source)) == entry
  assert bool(violations(module, tmp_path)) == bad


MAX_FUNCTION_LINES = 60  # a function a reader takes in at once (issue 18)


def long_functions(path: Path, root: Path = ROOT) -> list[str]:
  """'file:line name (N lines)' for each function of `path` of MAX_FUNCTION_LINES or more."""
  tree = ast.parse(path.read_text(), str(path))
  return [f'{path.relative_to(root)}:{node.lineno} {node.name} '
          f'({node.end_lineno - node.lineno + 1} lines)'
          for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and node.end_lineno - node.lineno + 1 >= MAX_FUNCTION_LINES]


def test_functions_of_the_library_are_short():
  found = [f for p in sorted((ROOT / 'revisit_jax').rglob('*.py')) for f in long_functions(p)]
  assert not found, '\n'.join(found)


def test_the_length_check_counts_nested_functions(tmp_path):
  module = tmp_path / 'revisit_jax' / 'probe.py'
  module.parent.mkdir()
  inner = 'def outer():\n  def inner():\n' + '    x = 1\n' * 59 + '  return inner\n'
  module.write_text(inner)
  assert [f.split()[1] for f in long_functions(module, tmp_path)] == ['outer', 'inner']
  module.write_text('def short():\n' + '  x = 1\n' * 57 + '  return x\n')
  assert long_functions(module, tmp_path) == []
