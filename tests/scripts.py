"""The scripts of `examples/`, loaded from their files, and the recipes of `genvl.recipes`, for the tests that call
their `main(argv)` or read their argument classes."""

import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_script(path: str):
    """The module of the script at `path` (relative to the repository, e.g. "examples/single_objects.py"), loaded
    once: the examples are no package, and import `genvl` only."""
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


def recipe(name: str):
    """The recipe module `genvl.recipes.<name>` (e.g. "train_prior")."""
    return importlib.import_module(f"genvl.recipes.{name}")
