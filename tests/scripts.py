"""The scripts of `train/` and `examples/`, loaded from their files for the tests that call their `main(argv)` or
read their argument classes: they are no package, and import `genvl` only."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_script(path: str):
    """The module of the script at `path` (relative to the repository, e.g. "train/train_prior.py"), loaded once."""
    name = "script_" + Path(path).with_suffix("").as_posix().replace("/", "_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before running it: dataclasses look their module up while it runs
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]
