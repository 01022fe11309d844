"""Seeded scenes of 1-3 objects, their scene graphs, and their rendering to RGB images.

A scene graph is a plain dict (JSON-ready):

    {"layout": "single" | "pair_h" | "pair_v" | "count" | "row",
     "background": {...},
     "objects": [{"name", "colour", "size", "position", "bbox"}, ...]}

Geometry is laid out on a 64x64 grid and scaled to the requested resolution.
"""

import random

import numpy as np
from PIL import Image

from .sprites import COLOURS, OBJECTS, sprite

LAYOUTS = ("single", "pair_h", "pair_v", "count", "row")
LAYOUT_WEIGHTS = (0.3, 0.15, 0.15, 0.2, 0.2)
SIZES = {"small": 18, "medium": 24, "large": 32, "group": 20}
SINGLE_POSITIONS = {"left": (18, 32), "right": (46, 32), "top": (32, 18), "bottom": (32, 46), "centre": (32, 32)}
BACKGROUNDS = ("plain", "stripes", "checks", "noise")


def sample_scene(rng: random.Random, names=None, colours=None) -> dict:
    """Draw one scene graph. `names`/`colours` restrict the vocabulary (defaults: all of it)."""
    names = sorted(names or OBJECTS)
    colours = sorted(colours or COLOURS)
    layout = rng.choices(LAYOUTS, weights=LAYOUT_WEIGHTS)[0]
    jitter = lambda: rng.randint(-3, 3)  # noqa: E731
    objects = []
    if layout == "single":
        size = rng.choice(["small", "large"])
        position = rng.choice(sorted(SINGLE_POSITIONS))
        x, y = SINGLE_POSITIONS[position]
        objects.append(_object(rng.choice(names), rng.choice(colours), size, position, x + jitter(), y + jitter()))
    elif layout in ("pair_h", "pair_v"):
        first, second = rng.sample(names, 2)
        places = [("left", 17, 32), ("right", 47, 32)] if layout == "pair_h" else [("top", 32, 17), ("bottom", 32, 47)]
        for name, (position, x, y) in zip((first, second), places):
            objects.append(_object(name, rng.choice(colours), "medium", position, x + jitter(), y + jitter()))
    elif layout == "count":
        name, colour = rng.choice(names), rng.choice(colours)
        count = rng.choice([2, 3])
        xs = [20, 44] if count == 2 else [11, 32, 53]
        y = 32 + rng.randint(-8, 8)
        for x in xs:
            objects.append(_object(name, colour, "group", "row", x + rng.randint(-1, 1), y + rng.randint(-2, 2)))
    else:  # row: three different objects from left to right
        for name, position, x in zip(rng.sample(names, 3), ("left", "centre", "right"), (11, 32, 53)):
            objects.append(_object(name, rng.choice(colours), "group", position, x, 32 + jitter()))
    return {"layout": layout, "background": _background(rng), "objects": objects}


def _object(name, colour, size, position, x, y):
    half = SIZES[size] / 2
    return {
        "name": name,
        "colour": colour,
        "size": size,
        "position": position,
        "bbox": [x - half, y - half, x + half, y + half],
    }


def _background(rng: random.Random) -> dict:
    kind = rng.choice(BACKGROUNDS)
    base = [rng.randint(215, 250) for _ in range(3)]
    other = [max(0, c - rng.randint(12, 28)) for c in base]
    return {"kind": kind, "base": base, "other": other, "period": rng.choice([4, 6, 8]), "seed": rng.randrange(2**31)}


def render_background(background: dict, resolution: int) -> np.ndarray:
    """Pale plain or simply textured background, uint8 array (H, W, 3)."""
    base = np.array(background["base"], dtype=np.uint8)
    other = np.array(background["other"], dtype=np.uint8)
    yy, xx = np.mgrid[:resolution, :resolution]
    period = max(2, background["period"] * resolution // 64)
    if background["kind"] == "stripes":
        mask = (xx + yy) // period % 2 == 1
    elif background["kind"] == "checks":
        mask = (xx // period + yy // period) % 2 == 1
    elif background["kind"] == "noise":
        mask = np.random.default_rng(background["seed"]).random((resolution, resolution)) < 0.3
    else:
        mask = np.zeros((resolution, resolution), dtype=bool)
    return np.where(mask[..., None], other, base).astype(np.uint8)


def render_scene(scene: dict, resolution: int = 64) -> Image.Image:
    """Render a scene graph to an RGB Pillow image of `resolution` x `resolution` pixels."""
    canvas = Image.fromarray(render_background(scene["background"], resolution))
    scale = resolution / 64
    for obj in scene["objects"]:
        x0, y0, x1, y1 = (v * scale for v in obj["bbox"])
        image = sprite(obj["name"], obj["colour"], max(2, round((x1 - x0))))
        # centre the (possibly non-square) sprite in its box
        left = round((x0 + x1) / 2 - image.width / 2)
        top = round((y0 + y1) / 2 - image.height / 2)
        canvas.paste(image, (left, top), image)  # the sprite's alpha is the blend mask
    return canvas
