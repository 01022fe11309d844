"""The checks the pipelines' entry points share on their arguments: a text or a list of texts, an image or a list
of images, a count. Each refuses in one line naming the argument, before any work, what would otherwise fail deep
inside torch or, worse, be read another way (a string is a sequence of characters)."""

import math
import numbers
from pathlib import Path


def text_list(value, name: str) -> list[str]:
    """`value` (a string, or a non-empty list of strings) as a list of strings."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a string or a non-empty list of strings, got {type(value).__name__}")
    return list(value)


def image_list(value, name: str = "images") -> list:
    """`value` (a PIL image, a path, or a non-empty list of them) as a list."""
    from PIL import Image

    if isinstance(value, (str, Path, Image.Image)):
        return [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{name} must be a PIL image, a path, or a non-empty list of them")
    return list(value)


def at_least(value, name: str, least: int = 1) -> int:
    """`value` as an int, refused unless it is an integer of at least `least` (2.0 is not: a count is no float)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


def finite(value, name: str) -> float:
    """`value`, refused unless it is a finite real number (NaN compares false with everything, and so passes range
    checks unseen)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value
