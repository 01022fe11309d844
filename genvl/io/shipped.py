"""Where the files genvl ships live: in a checkout, beside the package (`pipelines/`, `configs/`); installed
from a wheel, under `<prefix>/share/genvl/` (the venv's, the system's or the user's scheme)."""

import site
import sys
import sysconfig
from pathlib import Path


def shipped(kind: str, name: str) -> Path:
    """The shipped `kind/name` (`pipelines/genvl-caption-wide`, `configs/captioner_small.json`), in the checkout
    or where the wheel put it; when neither holds it, the checkout's path, for the error to name."""
    checkout = Path(__file__).resolve().parents[2] / kind / name
    if checkout.exists():
        return checkout
    for prefix in (sys.prefix, sysconfig.get_path("data"), site.USER_BASE):
        installed = Path(prefix or "") / "share" / "genvl" / kind / name
        if prefix and installed.exists():
            return installed
    return checkout
