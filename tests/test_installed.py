"""genvl installed from a wheel, without the checkout: the shipped default pipelines go with it (`.ci/wheel_check`
installs the wheel in a fresh venv and runs `genvl caption` and `genvl generate` from it)."""

import glob
import os
import sys
from pathlib import Path

import pytest

from genvl.io import shipped as shipped_files
from genvl.pipelines import defaults

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_every_file_of_the_shipped_pipelines_and_the_configs():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    packed = {}
    for target, patterns in data_files.items():
        for pattern in patterns:
            for file in glob.glob(str(ROOT / pattern)):
                packed[Path(file).relative_to(ROOT)] = Path(target) / Path(file).name
    shipped = {
        Path(folder, name).relative_to(ROOT) for folder, _, names in os.walk(ROOT / "pipelines") for name in names
    }
    shipped |= {path.relative_to(ROOT) for path in (ROOT / "configs").glob("*.json")}  # the recipes' defaults
    assert shipped and set(packed) == shipped
    assert all(str(target) == f"share/genvl/{source}" for source, target in packed.items())


def test_shipped_pipelines_are_found_in_the_checkout_or_where_the_wheel_put_them(tmp_path, monkeypatch):
    assert defaults.shipped_pipeline("genvl-caption-small") == ROOT / "pipelines" / "genvl-caption-small"
    # installed: the module sits in site-packages, the pipelines under the prefix's share/genvl/pipelines/
    site_packages = tmp_path / "venv" / "lib" / "site-packages" / "genvl" / "io"
    monkeypatch.setattr(shipped_files, "__file__", str(site_packages / "shipped.py"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    missing = defaults.shipped_pipeline("genvl-caption-small")
    assert missing == tmp_path / "venv" / "lib" / "site-packages" / "pipelines" / "genvl-caption-small"  # for errors
    installed = tmp_path / "venv" / "share" / "genvl" / "pipelines" / "genvl-caption-small"
    installed.mkdir(parents=True)
    assert defaults.shipped_pipeline("genvl-caption-small") == installed
    # the configs the training scripts default to are found the same way
    (tmp_path / "venv" / "share" / "genvl" / "configs").mkdir(parents=True)
    (tmp_path / "venv" / "share" / "genvl" / "configs" / "clip_small.json").write_text("{}")
    found = shipped_files.shipped("configs", "clip_small.json")
    assert found == tmp_path / "venv" / "share" / "genvl" / "configs" / "clip_small.json"
