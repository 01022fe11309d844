"""Does the captioner say where things are in pictures that are not square?

    python examples/wide_pictures.py                          # the default captioner, 60 pictures per shape
    python examples/wide_pictures.py --model pipelines/genvl-caption-small --pictures 100

People's pictures are 4:3, 16:9, 2:1 or upright. Here objects of the world's categories and colours are pasted
on plain and graded grounds of seven shapes, one object anywhere (its caption says where: the third of the
picture its centre is in) or two apart along one axis (one is to the left of, or above, the other, and clearly
so: as in the world's pairs, their centres lie at least 1.6 times as far apart along that axis as across it). None of
these pictures is a render of the world: the shapes, the grounds and the layouts are built here. Each picture is
captioned twice: padded to a square before the image processor resizes it (with the fill the model's
`pad_fill` names), and squashed to a square by the image processor alone. A caption is right when it parses to
the picture's objects, colours and places (a size word, which a picture of another shape leaves open, is not
scored).
"""

import argparse
import json
import random

import numpy as np
from PIL import Image

from genvl.pipelines.caption import CaptionPipeline
from genvl.pipelines.defaults import DEFAULT_CAPTIONER, shipped_pipeline
from genvl.world.captions import POSITION_PHRASES, article, parse_caption
from genvl.world.scenes import CLEARLY_APART, place_word
from genvl.world.sprites import COLOURS, OBJECTS, sprite

SHAPES = {
    "2:1": (128, 64),
    "16:9": (160, 90),
    "4:3": (96, 72),
    "1:1": (64, 64),
    "3:4": (72, 96),
    "9:16": (90, 160),
    "1:2": (64, 128),
}
GROUNDS = {"white": (255, 255, 255), "pale": (232, 224, 240), "dark": (24, 24, 34), "grey": (140, 140, 140)}


def ground(rng: random.Random, width: int, height: int) -> tuple[Image.Image, tuple[int, int, int]]:
    """A plain ground, or one graded from one of `GROUNDS` to a lighter or darker shade; and its mean colour."""
    colour = np.array(GROUNDS[rng.choice(sorted(GROUNDS))], dtype=np.float32)
    if rng.random() < 0.5:
        return Image.new("RGB", (width, height), tuple(int(c) for c in colour)), tuple(colour)
    other = (colour + rng.choice([-1, 1]) * 40).clip(0, 255)
    across = rng.random() < 0.5
    t = np.linspace(0, 1, width if across else height, dtype=np.float32)
    ramp = colour + (other - colour) * t[:, None]
    pixels = np.broadcast_to(ramp[None] if across else ramp[:, None], (height, width, 3))
    return Image.fromarray(pixels.round().astype(np.uint8)), tuple((colour + other) / 2)


def picture(rng: random.Random, width: int, height: int, layout: str) -> tuple[Image.Image, str]:
    """A picture and the caption that states it (single: "a red apple at the top left"; pair: "a red apple to the
    left of a blue car" or "... above ...")."""
    image, mean = ground(rng, width, height)
    shown = [c for c in sorted(COLOURS) if np.linalg.norm(np.subtract(COLOURS[c], mean)) >= 110]
    short = min(width, height)
    if layout == "single":
        name, colour = rng.choice(sorted(OBJECTS)), rng.choice(shown)
        drawn = sprite(name, colour, round(short * rng.uniform(0.25, 0.45)))
        x, y = rng.randint(0, width - drawn.width), rng.randint(0, height - drawn.height)
        image.paste(drawn, (x, y), drawn)
        where = place_word((x + drawn.width / 2) * 64 / width, (y + drawn.height / 2) * 64 / height)
        return image, f"{article(colour)} {colour} {name} {POSITION_PHRASES[where]}"
    names = rng.sample(sorted(OBJECTS), 2)
    colours = [rng.choice(shown) for _ in names]
    size = round(short * rng.uniform(0.25, 0.38))
    drawn = [sprite(name, colour, size) for name, colour in zip(names, colours)]
    longer = width > height or (width == height and rng.random() < 0.5)  # True: the longer axis is across
    across = longer if rng.random() < 0.75 else not longer  # mostly along the longer axis
    length, other = (width, height) if across else (height, width)
    gap = rng.randint(size // 4, max(size // 4, length - 2 * size))
    first = rng.randint(0, length - 2 * size - gap)
    # the second object lies off the first's line by at most this much, so that the relation is the one a viewer
    # sees, as in the world's own pairs (left of rather than above, or the other way round, only where it is clearly so)
    reach = int((size + gap) / CLEARLY_APART)
    side = rng.randint(0, other - size)
    sides = [side, rng.randint(max(0, side - reach), min(other - size, side + reach))]
    for i, (sprite_image, side) in enumerate(zip(drawn, sides)):
        along = first + i * (size + gap)
        image.paste(sprite_image, (along, side) if across else (side, along), sprite_image)
    relation = "to the left of" if across else "above"
    phrases = [f"{article(c)} {c} {n}" for n, c in zip(names, colours)]
    return image, f"{phrases[0]} {relation} {phrases[1]}"


def facts(caption: str) -> list[tuple] | None:
    """The caption's scene facts without size words."""
    found = parse_caption(caption)
    return None if found is None else sorted((fact[:3] + fact[4:] for fact in found), key=repr)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help=f"captioner folder (default: {DEFAULT_CAPTIONER})")
    parser.add_argument("--pictures", type=int, default=60, help="pictures per shape and layout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print each row's figures as a JSON line")
    args = parser.parse_args(argv)
    pipe = CaptionPipeline.from_pretrained(args.model or shipped_pipeline(DEFAULT_CAPTIONER))
    own = bool(pipe.config.get("pad_to_square", False))
    if not args.json:
        print(f"the model's own setting: {'padded' if own else 'squashed'}")
        print("| shape | layout | padded: right | named | squashed: right | named |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
    rows = []
    for shape, (width, height) in SHAPES.items():
        for layout in ("single", "pair"):
            rng = random.Random(f"{args.seed}/{shape}/{layout}")
            drawn = [picture(rng, width, height, layout) for _ in range(args.pictures)]
            row = {"shape": shape, "layout": layout, "pictures": args.pictures}
            for way, pad in (("padded", True), ("squashed", False)):
                pipe.register_to_config(pad_to_square=pad)
                captions = [c[0] for c in pipe([image for image, _ in drawn], num_beams=args.beam).captions]
                truth = [facts(text) for _, text in drawn]
                found = [facts(caption) for caption in captions]
                named = [f is not None and [x[0] for x in f] == [x[0] for x in t] for f, t in zip(found, truth)]
                row[way] = sum(f == t for f, t in zip(found, truth)) / len(drawn)
                row[f"{way}_named"] = sum(named) / len(drawn)
            pipe.register_to_config(pad_to_square=own)
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                figures = " | ".join(f"{row[k]:.3f}" for k in ("padded", "padded_named", "squashed", "squashed_named"))
                print(f"| {shape} | {layout} | {figures} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
