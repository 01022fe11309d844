"""Does the question-answering model answer about pictures that were made by hand?

    python examples/questions_by_hand.py                   # the shipped genvl-vqa-small, 100 questions per kind
    python examples/questions_by_hand.py --no-rewrite      # every question asked as typed

Each picture is made here, not by `genvl.world.scenes`: one object, two to four copies of one, or two objects
side by side, pasted on a white, pale, dark or any-colour canvas of 64, 128 or 256 px. Each is asked one question
in a phrasing written here ("What's the colour of the owl?", "do you see a cat?", "Count the apples please.",
"What is on the left of the car?"): colour, exists (half of them about an object that is not there), count and
relation. Prints how often each kind is answered right, and how many questions genvl's question reader read.
"""

import argparse
import json
import random

import numpy as np
from PIL import Image

from genvl.pipelines.caption import CaptionPipeline
from genvl.pipelines.defaults import shipped_pipeline
from genvl.world.captions import NUMBER_WORDS
from genvl.world.sprites import ALL_OBJECTS, COLOURS, OBJECTS, sprite
from genvl.world.typed_questions import asked_question

KINDS = ("colour", "exists", "count", "relation")
QUESTIONS = {
    "colour": [
        "What's the colour of the {name}?",
        "what colour does the {name} have",
        "Tell me what color the {name} is.",
    ],
    "exists": [
        "Is there a {name} in this image?",
        "do you see a {name}?",
        "Is a {name} shown?",
        "are there any {plural}?",
    ],
    "count": ["How many {plural} do you see?", "how many {plural} are in this image", "Count the {plural} please."],
    "relation": [
        "What is on the {side} of the {name}?",
        "what's {side} of the {name}",
        "Which object is to the {side} of the {name}?",
    ],
}


def canvas(rng: random.Random) -> tuple[Image.Image, list[str]]:
    """A plain canvas of one of four kinds and sizes, and the colour words that stand out from it."""
    low, high = rng.choice([(255, 255), (200, 250), (0, 50), (0, 255)])  # white, pale, dark, any colour
    ground = tuple(rng.randint(low, high) for _ in range(3))
    shown = [c for c in sorted(COLOURS) if np.linalg.norm(np.subtract(COLOURS[c], ground)) >= 100]
    return Image.new("RGB", (rng.choice([64, 128, 256]),) * 2, ground), shown


def paste(image: Image.Image, name: str, colour: str, size: int, place: tuple[int, int]) -> None:
    drawn = sprite(name, colour, size)
    image.paste(drawn, place, drawn)


def asked(rng: random.Random, kind: str) -> tuple[Image.Image, str, str]:
    """A picture, a question of `kind` about it, and the answer."""
    image, shown = canvas(rng)
    side = image.width
    name = rng.choice(sorted(OBJECTS))
    template = rng.choice(QUESTIONS[kind])
    if kind in ("colour", "exists"):
        size, colour = round(side * rng.uniform(0.2, 0.45)), rng.choice(shown)
        paste(image, name, colour, size, (rng.randint(0, side - size), rng.randint(0, side - size)))
        if kind == "colour":
            return image, template.format(name=name), colour
        other = name if rng.random() < 0.5 else rng.choice([o for o in sorted(OBJECTS) if o != name])
        question = template.format(name=other, plural=ALL_OBJECTS[other][1])
        return image, question, "yes" if other == name else "no"
    if kind == "count":
        size, colour, count = round(side * rng.uniform(0.16, 0.26)), rng.choice(shown), rng.randint(1, 4)
        places, tries = [], 0
        while len(places) < count:
            if tries == 200:  # the first copies left no room: place them all again (four always fit, two by two)
                places, tries = [], 0
            x, y = rng.randint(0, side - size), rng.randint(0, side - size)
            tries += 1
            if all(abs(x - a) >= size * 1.05 or abs(y - b) >= size * 1.05 for a, b in places):
                places.append((x, y))
        for place in places:
            paste(image, name, colour, size, place)
        return image, template.format(plural=ALL_OBJECTS[name][1]), NUMBER_WORDS[count]
    # relation: two objects side by side, one in each half, at about one height
    left, right = rng.sample(sorted(OBJECTS), 2)
    size = round(side * rng.uniform(0.22, 0.35))
    line = rng.randint(0, side - size)
    for obj, x in ((left, rng.randint(0, side // 2 - size)), (right, rng.randint(side // 2 + 2, side - size))):
        y = min(side - size, max(0, line + rng.randint(-size // 4, size // 4)))
        paste(image, obj, rng.choice(shown), size, (x, y))
    if rng.random() < 0.5:
        return image, template.format(side="left", name=right), left
    return image, template.format(side="right", name=left), right


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="question-answering folder (default: genvl-vqa-small)")
    parser.add_argument("--questions", type=int, default=100, help="questions per kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-rewrite", action="store_true", help="ask every question as typed")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    pipe = CaptionPipeline.from_pretrained(args.model or shipped_pipeline("genvl-vqa-small"))
    report = {}
    for kind in KINDS:
        rng = random.Random(f"{args.seed}/{kind}")
        items = [asked(rng, kind) for _ in range(args.questions)]
        questions = [question for _, question, _ in items]
        output = pipe([image for image, _, _ in items], question=questions, rewrite_questions=not args.no_rewrite)
        answers = [text[0].strip() for text in output.captions]
        right = [answer == truth for answer, (_, _, truth) in zip(answers, items)]
        missed = [f"{q!r}: {truth!r} -> {a!r}" for ok, a, (_, q, truth) in zip(right, answers, items) if not ok]
        read = sum(asked_question(question) is not None for question in questions)
        report[kind] = {"questions": len(items), "right": sum(right) / len(items), "read": read, "missed": missed}
    if args.json:
        print(json.dumps(report, indent=2))
        return report
    print("| kind | right | read by the reader | example of a miss |")
    print("| --- | ---: | ---: | --- |")
    for kind, row in report.items():
        example = row["missed"][0] if row["missed"] else ""
        print(f"| {kind} | {row['right']:.3f} | {row['read']} of {row['questions']} | {example} |")
    return report


if __name__ == "__main__":
    main()
