"""The world's first scenes, kept as they were: the training data of the shipped text-to-image models
(`genvl data scenes --world classic`). Two single-object sizes (18 and 32 px), five fixed places with +-3 px of
jitter, pale plain or lightly textured backgrounds, and 1-3 objects. `genvl.world.scenes` draws the wider world.
"""

import random

from .sprites import COLOURS, OBJECTS

CLASSIC_LAYOUTS = ("single", "pair_h", "pair_v", "count", "row")
LAYOUT_WEIGHTS = (0.3, 0.15, 0.15, 0.2, 0.2)
SIZES = {"small": 18, "medium": 24, "large": 32, "group": 20}
SINGLE_POSITIONS = {"left": (18, 32), "right": (46, 32), "top": (32, 18), "bottom": (32, 46), "centre": (32, 32)}
BACKGROUNDS = ("plain", "stripes", "checks", "noise")
CLASSIC_STYLE = {"world": "classic"}


def sample_classic_scene(rng: random.Random, names=None, colours=None) -> dict:
    """Draw one scene graph of the first world. `names`/`colours` restrict the vocabulary (defaults: all of it)."""
    names = sorted(names or OBJECTS)
    colours = sorted(colours or COLOURS)
    layout = rng.choices(CLASSIC_LAYOUTS, weights=LAYOUT_WEIGHTS)[0]
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
    return {"layout": layout, "style": CLASSIC_STYLE, "background": _background(rng), "objects": objects}


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
