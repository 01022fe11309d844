"""Does the captioner count and list objects that were placed by hand?

    python examples/groups.py                      # the default captioner, 60 pictures per row
    python examples/groups.py --model pipelines/genvl-caption-small --pictures 100

Each picture is made here, not by `genvl.world.scenes`: two to four copies of one object pasted anywhere in the
frame without touching ("three brown cars"), or three different objects in a row from left to right, each a
little above or below the line ("a purple mushroom, a yellow frog and a brown chair"). Canvases are white, pale,
dark or any colour at all, and pictures are 64, 128 or 256 px across, the objects drawn at that size. A caption
is right when it parses to the picture's objects, colours, counts and order.
"""

import argparse
import json
import random

import numpy as np
from PIL import Image

from genvl.pipelines.caption import CaptionPipeline
from genvl.pipelines.defaults import DEFAULT_CAPTIONER, shipped_pipeline
from genvl.world.captions import NUMBER_WORDS, article, parse_caption
from genvl.world.sprites import ALL_OBJECTS, COLOURS, OBJECTS, sprite

CANVASES = ("white", "pale", "dark", "any colour")
RESOLUTIONS = (64, 128, 256)
APART = 1.05  # copies of a group lie at least this many sizes apart along one axis, so none touches another


def canvas(rng: random.Random, kind: str, resolution: int) -> tuple[Image.Image, list[str]]:
    """A plain canvas of `kind`, and the colour words that stand out from it."""
    ranges = {"white": (255, 255), "pale": (200, 250), "dark": (0, 50), "any colour": (0, 255)}[kind]
    ground = tuple(rng.randint(*ranges) for _ in range(3))
    shown = [c for c in sorted(COLOURS) if np.linalg.norm(np.subtract(COLOURS[c], ground)) >= 100]
    return Image.new("RGB", (resolution, resolution), ground), shown


def group(rng: random.Random, image: Image.Image, shown: list[str]) -> str:
    """Pastes two to four copies of one object where none touches another; returns the caption."""
    resolution = image.width
    size = round(resolution * rng.uniform(0.16, 0.28))
    count, name, colour = rng.randint(2, 4), rng.choice(sorted(OBJECTS)), rng.choice(shown)
    places, tries = [], 0
    while len(places) < count:
        if tries == 200:  # the first copies left no room: place them all again (four always fit, two by two)
            places, tries = [], 0
        x, y = rng.randint(0, resolution - size), rng.randint(0, resolution - size)
        tries += 1
        if all(abs(x - a) >= size * APART or abs(y - b) >= size * APART for a, b in places):
            places.append((x, y))
    drawn = sprite(name, colour, size)
    for place in places:
        image.paste(drawn, place, drawn)
    return f"{NUMBER_WORDS[count]} {colour} {ALL_OBJECTS[name][1]}"


def row(rng: random.Random, image: Image.Image, shown: list[str]) -> str:
    """Pastes three different objects evenly from left to right; returns the caption."""
    resolution = image.width
    size = round(resolution * rng.uniform(0.2, 0.3))
    gap = (resolution - 3 * size) // 4
    line = rng.randint(0, resolution - size)
    names, colours = rng.sample(sorted(OBJECTS), 3), [rng.choice(shown) for _ in range(3)]
    for i, (name, colour) in enumerate(zip(names, colours)):
        y = min(resolution - size, max(0, line + rng.randint(-size // 4, size // 4)))
        drawn = sprite(name, colour, size)
        image.paste(drawn, (gap + i * (gap + size), y), drawn)
    phrases = [f"{article(colour)} {colour} {name}" for name, colour in zip(names, colours)]
    return f"{phrases[0]}, {phrases[1]} and {phrases[2]}"


def picture(rng: random.Random, layout: str, kind: str, resolution: int) -> tuple[Image.Image, str]:
    image, shown = canvas(rng, kind, resolution)
    return image, (group if layout == "group" else row)(rng, image, shown)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help=f"captioner folder (default: {DEFAULT_CAPTIONER})")
    parser.add_argument("--pictures", type=int, default=60, help="pictures per layout, canvas and size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print each row's figures as a JSON line")
    args = parser.parse_args(argv)
    pipe = CaptionPipeline.from_pretrained(args.model or shipped_pipeline(DEFAULT_CAPTIONER))
    if not args.json:
        print("| layout | canvas | px | right | example of a miss |")
        print("| --- | --- | ---: | ---: | --- |")
    rows = []
    for layout in ("group", "row"):
        for kind in CANVASES:
            for resolution in RESOLUTIONS:
                rng = random.Random(f"{args.seed}/{layout}/{kind}/{resolution}")
                drawn = [picture(rng, layout, kind, resolution) for _ in range(args.pictures)]
                captions = [c[0] for c in pipe([image for image, _ in drawn], num_beams=args.beam).captions]
                right = [parse_caption(c) == parse_caption(truth) for c, (_, truth) in zip(captions, drawn)]
                missed = [f"{truth!r} -> {c!r}" for ok, c, (_, truth) in zip(right, captions, drawn) if not ok]
                result = {"layout": layout, "canvas": kind, "resolution": resolution, "pictures": args.pictures}
                rows.append({**result, "right": sum(right) / len(drawn), "missed": missed})
                if args.json:
                    print(json.dumps(rows[-1]), flush=True)
                else:
                    example = missed[0] if missed else ""
                    print(f"| {layout} | {kind} | {resolution} | {rows[-1]['right']:.3f} | {example} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
