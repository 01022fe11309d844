"""Seeded scenes of 1-4 objects, their scene graphs, and their rendering to RGB images.

A scene graph is a plain dict (JSON-ready):

    {"layout": "single" | "pair_h" | "pair_v" | "count" | "row",
     "style": {"background": family, "size": band, "palette": "words" | "original"},
     "background": {...},
     "objects": [{"name", "colour", "size", "position", "bbox", "angle", "mirror"}, ...]}

Geometry is laid out on a 64x64 grid and drawn natively at the requested resolution. Every word a caption says
is derived from that geometry: a size word only where the object's size makes it true, a place from where the
object's centre is, a relation from where two objects are. Objects are drawn anywhere in the frame, at any size
of their style's band, turned a little and mirrored; pairs may overlap a little. An object's `colour` is one of
the world's colour words, or None for OpenMoji's original colours (captions then name no colour).

The style families (background family, size band, palette) are scene attributes, so a split can hold whole
families out: `HELD_OUT_FAMILIES` never appear in training scenes.
"""

import math
import random

from PIL import Image

from .backgrounds import BACKGROUND_FAMILIES, background_colours, render_background, sample_background
from .sprites import COLOURS, OBJECTS, sprite

LAYOUTS = ("single", "pair_h", "pair_v", "count", "row")
LAYOUT_WEIGHTS = {"single": 0.3, "pair": 0.3, "count": 0.2, "row": 0.2}
# size bands: the longer side of an object, in 64-unit pixels. A single object is "small" under 19 px and "large"
# over 35; the gaps around both thresholds keep every size word clearly true.
SIZE_BANDS = {
    "tiny": (10, 14),
    "small": (14, 19),
    "medium": (21, 25),
    "mid": (25, 29),
    "big": (29, 33),
    "large": (35, 42),
    "huge": (42, 50),
}
SMALL_BELOW, LARGE_ABOVE = 20, 34
PALETTES = ("words", "original")
HELD_OUT_FAMILIES = {"background": ("gradient",), "size": ("mid",), "palette": ()}
# the largest band each arrangement of objects fits in the frame
LARGEST_BAND = {1: "huge", 2: "mid", 3: "medium", 4: "small"}
ROW_PLACES = {3: ("left", "centre", "right"), 4: ("left", "left centre", "right centre", "right")}
MAX_ANGLE = 15.0  # degrees an object may be turned either way
# a pair's centres lie at least this many times as far apart along its relation's axis as across it
CLEARLY_APART = 1.6
MIN_COLOUR_DISTANCE = 90.0  # RGB distance between a colour-word object and every colour of its background


def families(scene: dict) -> dict:
    """The scene's style families (background, size, palette); empty for scenes of the classic world."""
    return {key: scene.get("style", {}).get(key) for key in HELD_OUT_FAMILIES if key in scene.get("style", {})}


def held_out(scene: dict) -> bool:
    """Whether the scene belongs to a family that training never sees."""
    return any(value in HELD_OUT_FAMILIES[key] for key, value in families(scene).items())


def sample_scene(rng: random.Random, names=None, colours=None, style: dict | None = None) -> dict:
    """Draw one scene graph. `names`/`colours` restrict the vocabulary (defaults: all of it); `style` fixes some of
    the style families (e.g. {"background": "dark"}), the others are drawn."""
    names = sorted(names or OBJECTS)
    colours = sorted(colours or COLOURS)
    style = dict(style or {})
    if style.get("size") not in (None, *SIZE_BANDS):
        raise ValueError(f"unknown size band {style['size']!r}; bands: {', '.join(SIZE_BANDS)}")
    while True:  # an arrangement whose objects fit the frame at the style's size band
        kind = rng.choices(list(LAYOUT_WEIGHTS), weights=list(LAYOUT_WEIGHTS.values()))[0]
        count = {"single": 1, "pair": 2, "count": rng.randint(2, 4), "row": rng.randint(3, 4)}[kind]
        bands = list(SIZE_BANDS)[: list(SIZE_BANDS).index(LARGEST_BAND[count]) + 1]
        if style.get("size") in (None, *bands):
            break
    style.setdefault("background", rng.choice(BACKGROUND_FAMILIES))
    style.setdefault("size", rng.choice(bands))
    style.setdefault("palette", rng.choice(PALETTES))
    if style["palette"] not in PALETTES:
        raise ValueError(f"unknown palette {style['palette']!r}; palettes: {', '.join(PALETTES)}")
    background = sample_background(rng, style["background"])
    while True:
        boxes = _place(rng, count, SIZE_BANDS[style["size"]], ordered=kind == "row", pair=kind == "pair")
        if boxes is not None:
            break
    if kind == "count":
        kinds = [(rng.choice(names), _colour(rng, colours, style, background))] * count
    else:
        kinds = [(name, _colour(rng, colours, style, background)) for name in rng.sample(names, count)]
    objects = [_object(rng, name, colour, box) for (name, colour), box in zip(kinds, boxes)]
    layout = _name_places(kind, objects)
    return {"layout": layout, "style": style, "background": background, "objects": objects}


def _colour(rng: random.Random, colours: list[str], style: dict, background: dict) -> str | None:
    if style["palette"] == "original":
        return None
    ground = background_colours(background)
    usable = [c for c in colours if min(math.dist(COLOURS[c], g) for g in ground) >= MIN_COLOUR_DISTANCE]
    return rng.choice(usable or colours)


def _place(rng: random.Random, count: int, band: tuple, ordered: bool, pair: bool) -> list | None:
    """Boxes (x0, y0, x1, y1) of `count` objects inside the frame, or None when this draw does not fit.

    Objects overlap by at most 15% of the smaller one's box, and their centres are at least 12 px apart
    (so they fall in different cells of the judge's 8-px grid). A pair is clearly side by side or one above the
    other; a row's objects are clearly apart from left to right. A single object's centre keeps 2 px away from
    the lines that divide the frame into thirds, so its place word is never a coin toss.
    """
    sizes = [rng.uniform(*band) for _ in range(count)]
    centres = []
    for size in sizes:
        for _ in range(50):
            x, y = rng.uniform(size / 2, 64 - size / 2), rng.uniform(size / 2, 64 - size / 2)
            if count == 1 and any(abs(v - line) < 2 for v in (x, y) for line in (64 / 3, 128 / 3)):
                continue
            if all(_apart((x, y, size), other) for other in centres):
                centres.append((x, y, size))
                break
        else:
            return None
    if pair:
        (xa, ya, _), (xb, yb, _) = centres
        dx, dy = abs(xa - xb), abs(ya - yb)
        if max(dx, dy) < CLEARLY_APART * min(dx, dy) or max(dx, dy) < 0.6 * max(sizes):
            return None
    if ordered:
        centres.sort()
        gaps = [b[0] - a[0] for a, b in zip(centres, centres[1:])]
        if min(gaps) < max(12.0, 0.6 * max(sizes)):
            return None
    return [[x - s / 2, y - s / 2, x + s / 2, y + s / 2] for x, y, s in centres]


def _apart(a: tuple, b: tuple) -> bool:
    (xa, ya, sa), (xb, yb, sb) = a, b
    if math.dist((xa, ya), (xb, yb)) < 12:
        return False
    overlap_x = max(0.0, min(xa + sa / 2, xb + sb / 2) - max(xa - sa / 2, xb - sb / 2))
    overlap_y = max(0.0, min(ya + sa / 2, yb + sb / 2) - max(ya - sa / 2, yb - sb / 2))
    return overlap_x * overlap_y <= 0.15 * min(sa, sb) ** 2


def _object(rng: random.Random, name: str, colour: str | None, box: list) -> dict:
    angle = rng.uniform(-MAX_ANGLE, MAX_ANGLE) if rng.random() < 0.5 else 0.0
    return {
        "name": name,
        "colour": colour,
        "size": size_word(box[2] - box[0]),
        "position": None,
        "bbox": [round(v, 2) for v in box],
        "angle": round(angle, 1),
        "mirror": rng.random() < 0.5,
    }


def size_word(size: float) -> str | None:
    """The size word true of a single object `size` px long (64-unit pixels): small, large or none."""
    return "small" if size < SMALL_BELOW else "large" if size > LARGE_ABOVE else None


def place_word(x: float, y: float) -> str:
    """Where a point of the 64-unit frame is: centre, left, right, top, bottom or a corner ("top left")."""
    column = "left" if x < 64 / 3 else "right" if x > 128 / 3 else ""
    row = "top" if y < 64 / 3 else "bottom" if y > 128 / 3 else ""
    return " ".join(word for word in (row, column) if word) or "centre"


def _centre(obj: dict) -> tuple[float, float]:
    x0, y0, x1, y1 = obj["bbox"]
    return (x0 + x1) / 2, (y0 + y1) / 2


def _name_places(kind: str, objects: list[dict]) -> str:
    """Set each object's `position` from the geometry, order the objects as their captions name them, and
    return the scene's layout."""
    if kind == "single":
        objects[0]["position"] = place_word(*_centre(objects[0]))
        return "single"
    if kind == "count":
        return "count"
    if kind == "row":
        objects.sort(key=_centre)
        for obj, place in zip(objects, ROW_PLACES[len(objects)]):
            obj["position"] = place
        return "row"
    (xa, ya), (xb, yb) = map(_centre, objects)
    horizontal = abs(xa - xb) >= abs(ya - yb)
    objects.sort(key=lambda obj: _centre(obj)[0 if horizontal else 1])
    for obj, place in zip(objects, ("left", "right") if horizontal else ("top", "bottom")):
        obj["position"] = place
    return "pair_h" if horizontal else "pair_v"


def mirror_scene(scene: dict) -> dict:
    """The scene mirrored left to right: every object and the background flipped, its left/right words swapped
    (the caption of the mirrored scene is true of the flipped image)."""
    objects = []
    for obj in scene["objects"]:
        x0, y0, x1, y1 = obj["bbox"]
        flipped = {**obj, "bbox": [round(64 - x1, 2), y0, round(64 - x0, 2), y1], "mirror": not obj.get("mirror")}
        flipped["angle"] = -obj.get("angle", 0.0) or 0.0  # never -0.0, so that mirroring twice is the identity
        objects.append(flipped)
    background = {**scene["background"], "mirror": not scene["background"].get("mirror", False)}
    layout = scene["layout"]
    if layout == "single":
        objects[0]["position"] = place_word(*_centre(objects[0]))
    elif layout in ("pair_h", "row"):
        layout = _name_places("pair" if layout == "pair_h" else "row", objects)
    return {**scene, "layout": layout, "background": background, "objects": objects}


def render_scene(scene: dict, resolution: int = 64) -> Image.Image:
    """Render a scene graph to an RGB Pillow image of `resolution` x `resolution` pixels."""
    canvas = Image.fromarray(render_background(scene["background"], resolution))
    scale = resolution / 64
    for obj in scene["objects"]:
        x0, y0, x1, y1 = (v * scale for v in obj["bbox"])
        size = max(2, round(x1 - x0))
        image = sprite(obj["name"], obj["colour"], size, obj.get("angle", 0.0), obj.get("mirror", False))
        # centre the (possibly non-square) sprite in its box
        left = round((x0 + x1) / 2 - image.width / 2)
        top = round((y0 + y1) / 2 - image.height / 2)
        canvas.paste(image, (left, top), image)  # the sprite's alpha is the blend mask
    return canvas
