"""Hides TensorFlow from the current interpreter, for tests of TF-free paths.

Call `install()` before anything imports TensorFlow (first thing in a subprocess). Afterwards the
interpreter behaves as if the package were not installed: `importlib.util.find_spec('tensorflow')`
returns None (libraries such as etils and TFDS probe this way) and `import tensorflow` raises
ModuleNotFoundError.
"""

import importlib.machinery
import sys


def _hidden(name: str) -> bool:
  return name == 'tensorflow' or name.startswith('tensorflow.')


class _PathFinderWithoutTF(importlib.machinery.PathFinder):
  """The standard path finder, blind to the tensorflow package."""

  @classmethod
  def find_spec(cls, fullname, path=None, target=None):
    if _hidden(fullname):
      return None
    return super().find_spec(fullname, path, target)


def install():
  if any(_hidden(name) for name in sys.modules):
    raise RuntimeError('tensorflow is already imported; call notf.install() first')
  sys.meta_path[:] = [_PathFinderWithoutTF if finder is importlib.machinery.PathFinder else finder
                      for finder in sys.meta_path]
