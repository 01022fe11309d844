"""The world's backgrounds: families of plain, patterned, graded and textured grounds, drawn as a small dict
(JSON-ready) and rendered natively at any resolution.

A background dict holds its `kind` (how it is drawn: plain, stripes, checks, noise, gradient, texture), its two
colours `base` and `other`, and what the kind needs (`period` in 64-unit pixels, `angle` in degrees, `cells`,
`seed`). Its family (white, pale, pattern, dark, saturated, gradient, texture) is part of the scene's style.
"""

import colorsys
import math
import random

import numpy as np
from PIL import Image

BACKGROUND_FAMILIES = ("white", "pale", "pattern", "dark", "saturated", "gradient", "texture")
PATTERNS = ("stripes", "checks", "noise")


def sample_background(rng: random.Random, family: str) -> dict:
    """Draw a background of one family."""
    kind, base, other = "plain", None, None
    if family == "white":
        base = [rng.randint(246, 255)] * 3
    elif family in ("pale", "pattern"):  # the pale grounds of the world's first scenes
        base = [rng.randint(215, 250) for _ in range(3)]
        kind = "plain" if family == "pale" else rng.choice(PATTERNS)
        other = [max(0, c - rng.randint(12, 28)) for c in base]
    elif family == "dark":
        base = [rng.randint(8, 64) for _ in range(3)]
        kind = rng.choice(("plain",) + PATTERNS)
        other = [c + rng.randint(12, 28) for c in base]
    elif family == "saturated":
        base = _hsv(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.45, 1.0))
    elif family == "gradient":
        kind, base, other = "gradient", _any_colour(rng), _any_colour(rng)
    elif family == "texture":
        kind, base = "texture", _any_colour(rng)
        other = [min(255, max(0, c + rng.choice((-1, 1)) * rng.randint(30, 80))) for c in base]
    else:
        raise ValueError(f"unknown background family {family!r}; families: {', '.join(BACKGROUND_FAMILIES)}")
    return {
        "kind": kind,
        "base": base,
        "other": other if other is not None else base,
        "period": rng.choice([4, 6, 8]),
        "angle": rng.uniform(0.0, 360.0),
        "cells": rng.randint(3, 10),
        "seed": rng.randrange(2**31),
    }


def _hsv(h: float, s: float, v: float) -> list[int]:
    return [round(c * 255) for c in colorsys.hsv_to_rgb(h, s, v)]


def _any_colour(rng: random.Random) -> list[int]:
    return _hsv(rng.random(), rng.uniform(0.0, 1.0), rng.uniform(0.1, 1.0))


def background_colours(background: dict) -> list[tuple[int, int, int]]:
    """The colours a background is drawn between (a gradient or texture also holds their mixtures)."""
    return [tuple(background["base"]), tuple(background["other"])]


def render_background(background: dict, resolution: int) -> np.ndarray:
    """The background as a uint8 array (H, W, 3), drawn at `resolution` (patterns keep their size in 64-unit
    pixels)."""
    base = np.array(background["base"], dtype=np.float32)
    other = np.array(background["other"], dtype=np.float32)
    yy, xx = np.mgrid[:resolution, :resolution]
    kind = background["kind"]
    period = max(2, background["period"] * resolution // 64)
    if kind == "stripes":
        mix = ((xx + yy) // period % 2 == 1).astype(np.float32)
    elif kind == "checks":
        mix = ((xx // period + yy // period) % 2 == 1).astype(np.float32)
    elif kind == "noise":
        mix = (np.random.default_rng(background["seed"]).random((resolution, resolution)) < 0.3).astype(np.float32)
    elif kind == "gradient":
        angle = math.radians(background.get("angle", 0.0))
        along = (xx - resolution / 2) * math.cos(angle) + (yy - resolution / 2) * math.sin(angle)
        mix = (along / resolution + 0.5).clip(0.0, 1.0)
    elif kind == "texture":
        mix = _value_noise(background["seed"], background["cells"], resolution)
    elif kind == "plain":
        mix = np.zeros((resolution, resolution), dtype=np.float32)
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    pixels = base + (other - base) * mix[..., None]
    if background.get("mirror"):
        pixels = pixels[:, ::-1]
    return (pixels + 0.5).clip(0, 255).astype(np.uint8)


def _value_noise(seed: int, cells: int, resolution: int) -> np.ndarray:
    """Two octaves of smooth value noise in [0, 1]: a coarse grid of random values, upsampled bicubically."""
    rng = np.random.default_rng(seed)
    total = np.zeros((resolution, resolution), dtype=np.float32)
    for octave, weight in ((cells, 0.7), (cells * 3, 0.3)):
        grid = (rng.random((octave, octave)) * 255).astype(np.uint8)
        up = Image.fromarray(grid).resize((resolution, resolution), Image.Resampling.BICUBIC)
        total += weight * np.asarray(up, dtype=np.float32) / 255.0
    return total.clip(0.0, 1.0)
