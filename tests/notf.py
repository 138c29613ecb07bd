"""Hides TensorFlow from the current interpreter, for tests of TF-free paths.

Call `install()` before anything imports TensorFlow (typically first thing in a
subprocess); afterwards `import tensorflow` raises ModuleNotFoundError as if
the package were not installed.
"""

import importlib.abc
import sys


class _NoTF(importlib.abc.MetaPathFinder):

  def find_spec(self, name, path=None, target=None):
    if name == 'tensorflow' or name.startswith('tensorflow.'):
      raise ModuleNotFoundError(f"No module named '{name}'", name=name)


def install():
  sys.meta_path.insert(0, _NoTF())
