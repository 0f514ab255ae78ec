"""Loading one config file from another, so that configs derive from a base instead of copying it.

`ml_collections.config_flags` loads a config file by path, so the `configs/` folder is not an
importable package when a launcher runs. A derived config loads its base by file name:

    from tempscale_tf.config_files import load_config

    def get_config(arg=None):
        c = load_config("cifar10_fast.py", relative_to=__file__)
        c.epochs = 8
        return c
"""

from __future__ import annotations

import importlib.util
import pathlib


def load_config(name: str, arg=None, relative_to=None):
    """`get_config(arg)` of the config file `name`.

    Args:
      name: a file name or path of a config file (a `.py` file with `get_config(arg=None)`).
      arg: the config argument (the part after `:` on the command line), or None.
      relative_to: a file (usually the caller's `__file__`) whose folder `name` is relative to;
        None: relative to the current directory.

    Raises:
      FileNotFoundError: if the file does not exist.
    """
    path = pathlib.Path(name)
    if relative_to is not None and not path.is_absolute():
        path = pathlib.Path(relative_to).resolve().parent / path
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found")
    spec = importlib.util.spec_from_file_location(f"_tempscale_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
