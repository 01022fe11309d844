"""Does the captioner name an object drawn some other way than the world's renderer draws it?

    python examples/single_objects.py --per-style 50 --beam 3   # the default captioner
    python examples/single_objects.py --model pipelines/genvl-caption-small --per-style 50 --beam 3

Each image is one object's sprite pasted by hand on a plain canvas: white, pale, dark, mid grey or a saturated
primary, at sizes and places chosen here, in colour words or OpenMoji's own colours, at 64 or 128 px. None of it
goes through `genvl.world.scenes`, so a captioner that learnt the world's templates rather than its objects
fails here. Prints, per style, how often the caption names the object, names it in its colour word, and
repeats a word three times in a row.
"""

import argparse
import json
import random

import numpy as np
from PIL import Image

from genvl.evaluation.captioning import is_degenerate
from genvl.pipelines.caption import CaptionPipeline
from genvl.pipelines.defaults import DEFAULT_CAPTIONER, shipped_pipeline
from genvl.world.sprites import COLOURS, OBJECTS, sprite

# style -> (canvas, size range in px of a 64-px image, anywhere in the frame, colour words, resolution)
STYLES = {
    "pale, 30-34 px, centred": ("pale", (30, 34), False, True, 64),
    "white, 40-50 px, centred": ("white", (40, 50), False, True, 64),
    "white, 12-16 px, anywhere": ("white", (12, 16), True, True, 64),
    "pale, 22-26 px, anywhere": ("pale", (22, 26), True, True, 64),
    "dark, 16-40 px, anywhere": ("dark", (16, 40), True, True, 64),
    "saturated, 16-40 px, anywhere": ("saturated", (16, 40), True, True, 64),
    "mid grey, 16-40 px, anywhere": ("grey", (16, 40), True, True, 64),
    "own colours on white, 16-40 px": ("white", (16, 40), True, False, 64),
    "own colours on dark, 16-40 px": ("dark", (16, 40), True, False, 64),
    "white, 20-30 px, 128-px image": ("white", (20, 30), True, True, 128),
}


def canvas_colour(kind: str, rng: random.Random) -> tuple:
    if kind == "white":
        return (255, 255, 255)
    if kind == "pale":
        return tuple(rng.randint(215, 250) for _ in range(3))
    if kind == "dark":
        return tuple(rng.randint(0, 50) for _ in range(3))
    if kind == "grey":
        return (128, 128, 128)
    colour = [0, 0, 0]  # saturated: one channel full, another anywhere
    colour[rng.randrange(3)] = 255
    colour[rng.randrange(3)] = rng.randint(0, 255)
    return tuple(colour)


def draw(style: str, rng: random.Random) -> tuple[Image.Image, str, str | None]:
    """One image of `style`, the object's name, and its colour word (None: its own colours)."""
    kind, (low, high), anywhere, colour_words, resolution = STYLES[style]
    ground = canvas_colour(kind, rng)
    image = Image.new("RGB", (resolution, resolution), ground)
    name = rng.choice(sorted(OBJECTS))
    colour = None
    if colour_words:  # a colour word that stands out from the canvas
        colours = [c for c in sorted(COLOURS) if np.linalg.norm(np.subtract(COLOURS[c], ground)) >= 100]
        colour = rng.choice(colours)
    drawn = sprite(name, colour, round(rng.uniform(low, high) * resolution / 64))
    if anywhere:
        x, y = rng.randint(0, resolution - drawn.width), rng.randint(0, resolution - drawn.height)
    else:
        x, y = (resolution - drawn.width) // 2, (resolution - drawn.height) // 2
    image.paste(drawn, (x, y), drawn)
    return image, name, colour


def names(caption: str, name: str) -> bool:
    words = caption.lower().replace(",", " ").split()
    return name in words or OBJECTS[name][1] in words


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(shipped_pipeline(DEFAULT_CAPTIONER)), help="a captioner folder")
    parser.add_argument("--per-style", type=int, default=50, help="images per style")
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    pipeline = CaptionPipeline.from_pretrained(args.model)
    report = {}
    for style in STYLES:
        rng = random.Random(style)
        drawn = [draw(style, rng) for _ in range(args.per_style)]
        captions = [c[0] for c in pipeline([image for image, _, _ in drawn], num_beams=args.beam).captions]
        coloured = [(c, name, colour) for c, (_, name, colour) in zip(captions, drawn) if colour is not None]
        report[style] = {
            "images": len(drawn),
            "named": sum(names(c, name) for c, (_, name, _) in zip(captions, drawn)) / len(drawn),
            "named_in_colour": (
                sum(names(c, name) and colour in c.split() for c, name, colour in coloured) / len(coloured)
                if coloured
                else None
            ),
            "degenerate": sum(map(is_degenerate, captions)),
            "example": captions[0],
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return report
    print(f"{'style':<32} {'named':>6} {'+colour':>7} {'degenerate':>10}  example")
    for style, row in report.items():
        colour = "-" if row["named_in_colour"] is None else f"{row['named_in_colour']:.2f}"
        print(f"{style:<32} {row['named']:>6.2f} {colour:>7} {row['degenerate']:>10}  {row['example']!r}")
    return report


if __name__ == "__main__":
    main()
