"""Questions about a scene and their answers, read from its scene graph, for visual question answering.

Five kinds of question, each asked only where the scene graph makes its answer unambiguous:

    colour    what colour is the X?                a colour word; X painted in one, and the scene's only X,
              what colour are the Xs?              or the scene's several Xs all painted in it
    count     how many Xs are there?               "zero" to "four"; also of objects the scene does not hold
    relation  what is to the left of the Y?        the name of Y's neighbour (pairs and rows of distinct objects)
    exists    is there a Z?                        "yes" or "no", half and half
    biggest   what is the biggest object?          a name; scenes of two or more distinct objects whose largest
                                                   is at least BIGGEST_MARGIN times as long as the next

Each kind has phrasing families: `TRAIN` ones for training, each asked in a wrapping of a few words before or after,
and two held-out families (`HELD_OUT`, `HELD_OUT_2`) that training never sees, so that evaluation can tell a model
that reads the question from one that matched its training templates.
"""

import random

from .captions import NUMBER_WORDS, article, scene_captions
from .sprites import ALL_OBJECTS, COLOURS, OBJECTS

KINDS = ("colour", "count", "relation", "exists", "biggest")
ALWAYS_ASKED = ("count", "exists")  # asked of absent objects too ("zero", "no"), so of every scene
BIGGEST_MARGIN = 1.2  # the biggest object's box side over the next one's, for "biggest" to be asked
ABSENT_COUNT_SHARE = 0.2  # how often a count question asks about an object the scene does not hold
ANSWER_NUMBERS = {0: "zero", **NUMBER_WORDS}
RELATIONS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}

# {name}: an object's name; {a_name}: with its article; {plural}: its plural; {relation}: a RELATIONS phrase.
# A colour question's {name} is a name or a plural, with its verbs agreeing: {is}, {has}, {does} (`COLOUR_VERBS`).
# Training's phrasings are a core question (TRAIN) in a wrapping drawn from PREFIXES and SUFFIXES (`phrase`);
# the held-out families are asked as written. HELD_OUT was the only held-out family until a model's errors on it
# had been read; HELD_OUT_2 was written before the wider training phrasings, which none of its forms repeat.
TRAIN = {
    "colour": [
        "what colour {is} the {name}?",
        "what color {is} the {name}?",
        "which colour {is} the {name}?",
        "what is the colour of the {name}?",
        "the {name} {is} what colour?",
        "in what color {is} the {name} painted?",
        "colour of the {name}?",
        "give the colour of the {name}",
    ],
    "count": [
        "how many {plural} are there?",
        "how many {plural} are in the picture?",
        "what is the number of {plural}?",
        "how many {plural} are shown?",
        "number of {plural}?",
        "the {plural}: how many?",
        "give the count of {plural}",
    ],
    "relation": [
        "what is {relation} the {name}?",
        "which object is {relation} the {name}?",
        "what object lies {relation} the {name}?",
        "{relation} the {name} is which object?",
        "what thing is placed {relation} the {name}?",
        "identify the object {relation} the {name}",
    ],
    "exists": [
        "is there {a_name}?",
        "is there {a_name} in the picture?",
        "does the image contain {a_name}?",
        "does the scene include {a_name}?",
        "is there {a_name} anywhere?",
        "check for {a_name}",
    ],
    "biggest": [
        "what is the biggest object?",
        "which object is the largest?",
        "what is the largest object?",
        "which object is biggest?",
        "the biggest object is what?",
        "what is the object of the largest size?",
        "point out the biggest object",
    ],
}
PREFIXES = ("", "", "", "please", "please,", "i wonder,", "quick question:", "question:", "hey,", "answer this:")
SUFFIXES = ("", "", "", "in the image", "in this picture", "in the scene", "here", "please", "exactly")
HELD_OUT = {
    "colour": ["tell me the colour of the {name}", "the {name} {has} which colour?"],
    "count": ["how many {plural} can you see?", "count the {plural}"],
    "relation": ["what do you see {relation} the {name}?", "name the thing {relation} the {name}"],
    "exists": ["can you see {a_name}?", "do you spot {a_name} here?"],
    "biggest": ["which thing is the biggest?", "name the largest thing in the image"],
}
HELD_OUT_2 = {
    "colour": ["which color {does} the {name} have?", "what colour {has} the {name} got?"],
    "count": ["how many {plural} does the picture show?", "tell me the number of {plural}"],
    "relation": ["which object sits {relation} the {name}?", "{relation} the {name}, what is there?"],
    "exists": ["is {a_name} visible?", "would i find {a_name} in this image?"],
    "biggest": ["what is the biggest thing in the picture?", "which object here is largest?"],
}
# a request for the whole scene, answered by its canonical caption: the recipe's `--describe_share`
DESCRIBE = ("describe the image", "what is in the picture?", "caption this image", "say what the image shows")
FAMILIES = {"seen": TRAIN, "held_out": HELD_OUT, "held_out_2": HELD_OUT_2}
COLOUR_VERBS = {  # a colour question's verbs, about one object or several of one kind
    "one": {"is": "is", "has": "has", "does": "does"},
    "several": {"is": "are", "has": "have", "does": "do"},
}


def every_answer() -> list[str]:
    """Every answer a question of the world can have: object names, colour words, "zero" to "four", yes, no."""
    return sorted({*ALL_OBJECTS, *COLOURS, *ANSWER_NUMBERS.values(), "yes", "no"})


def answered_kinds(scene: dict) -> set[str]:
    """The kinds of question `scene` answers: those `answerable` finds, and `ALWAYS_ASKED`."""
    return {*answerable(scene), *ALWAYS_ASKED}


def _side(obj: dict) -> float:
    x0, y0, x1, y1 = obj["bbox"]
    return max(x1 - x0, y1 - y0)


def _plural(name: str) -> str:
    return ALL_OBJECTS[name][1]


def answerable(scene: dict) -> dict:
    """{kind: [(slots, answer), ...]}: every question of each kind the scene answers unambiguously, as the
    words to put into a template and the answer (kinds the scene cannot answer are left out)."""
    objects = scene["objects"]
    names = [obj["name"] for obj in objects]
    out = {kind: [] for kind in KINDS}
    for name in sorted(set(names)):
        held = names.count(name)
        colours = {obj["colour"] for obj in objects if obj["name"] == name}
        if len(colours) == 1 and None not in colours:
            number, noun = ("one", name) if held == 1 else ("several", _plural(name))
            out["colour"].append(({"name": noun, **COLOUR_VERBS[number]}, colours.pop()))
        out["count"].append(({"plural": _plural(name)}, ANSWER_NUMBERS[held]))
        out["exists"].append(({"a_name": f"{article(name)} {name}"}, "yes"))
    distinct = len(set(names)) == len(names) > 1
    if distinct and scene["layout"] in ("pair_h", "pair_v", "row"):
        before, after = ("left", "right") if scene["layout"] != "pair_v" else ("above", "below")
        for first, second in zip(objects, objects[1:]):  # objects are ordered left to right, or top to bottom
            out["relation"].append(({"relation": RELATIONS[before], "name": second["name"]}, first["name"]))
            out["relation"].append(({"relation": RELATIONS[after], "name": first["name"]}, second["name"]))
    if distinct:
        biggest, runner_up = sorted(objects, key=_side, reverse=True)[:2]
        if _side(biggest) >= BIGGEST_MARGIN * _side(runner_up):
            out["biggest"].append(({}, biggest["name"]))
    return {kind: found for kind, found in out.items() if found}


def phrase(template: str, slots: dict, rng: random.Random) -> str:
    """A training template with its slots filled, after a prefix and before a suffix drawn from PREFIXES and
    SUFFIXES (most often none)."""
    return wrapped(template, slots, rng.choice(PREFIXES), rng.choice(SUFFIXES))


def wrapped(template: str, slots: dict, prefix: str, suffix: str) -> str:
    """A training template with its slots filled, after `prefix` and before `suffix` (either may be "")."""
    core = template.format(**slots).rstrip("?")
    return " ".join(word for word in (prefix, core, suffix) if word) + ("?" if template.endswith("?") else "")


def describe(scene: dict, rng: random.Random) -> dict:
    """A request for the whole scene (one of DESCRIBE), answered by the scene's canonical caption, in `ask`'s
    shape with kind "describe"."""
    template = rng.choice(DESCRIBE)
    answer = scene_captions(scene)[0]
    return {
        "kind": "describe",
        "question": template,
        "answer": answer,
        "family": "seen",
        "slots": {},
        "template": template,
    }


def ask(scene: dict, rng: random.Random, family: str = "seen", kind: str | None = None) -> dict | None:
    """One question about `scene`: {"kind", "question", "answer", "family", "slots" (the words put into the
    template), "template"}, of `kind` (default: a kind drawn evenly from those the scene answers), in a phrasing
    drawn from `family` (a key of FAMILIES; "seen" ones wrapped by `phrase`); None if the scene cannot answer a
    question of `kind`."""
    found = answerable(scene)
    kinds = sorted(found)
    if kind is None:
        kind = rng.choice(kinds)
    if kind not in found and kind not in ALWAYS_ASKED:
        return None
    names = {obj["name"] for obj in scene["objects"]}
    if kind in ALWAYS_ASKED and (kind not in found or rng.random() < (ABSENT_COUNT_SHARE if kind == "count" else 0.5)):
        absent = rng.choice(sorted(set(OBJECTS) - names))  # a question the scene answers in the negative
        if kind == "count":
            slots, answer = {"plural": _plural(absent)}, "zero"
        else:
            slots, answer = {"a_name": f"{article(absent)} {absent}"}, "no"
    else:
        slots, answer = rng.choice(found[kind])
    template = rng.choice(FAMILIES[family][kind])
    question = phrase(template, slots, rng) if family == "seen" else template.format(**slots)
    return {
        "kind": kind,
        "question": question,
        "answer": answer,
        "family": family,
        "slots": slots,
        "template": template,
    }


def question_set(records: list[dict], count: int, seed: int) -> list[dict]:
    """`count` questions about the scenes of `records` (imagefolder records with a `scene`), the kinds in turn
    and each kind's phrasing families in turn, so that every kind and family is measured on as many questions,
    and the count questions' answers in turn from "zero" to "four" (most objects are alone in their scene: a
    model that always said "one" would otherwise pass); each question carries its record's index as "record".
    A kind no scene answers (the classic world has no "biggest") is left out, and so is a count no scene holds.
    Drawn from `seed` alone."""
    offered = [answerable(record["scene"]) for record in records]
    kinds = [kind for kind in KINDS if kind in ALWAYS_ASKED or any(kind in found for found in offered)]
    held = {answer for found in offered for _, answer in found.get("count", [])} | {ANSWER_NUMBERS[0]}
    numbers = [word for word in ANSWER_NUMBERS.values() if word in held]
    rng = random.Random(f"questions/{seed}")
    order = list(range(len(records)))
    out, turn = [], 0
    while len(out) < count:
        rng.shuffle(order)
        progress = len(out)
        for index in order:
            if len(out) == count:
                break
            kind = kinds[turn % len(kinds)]
            family = list(FAMILIES)[(turn // len(kinds)) % len(FAMILIES)]
            item = ask(records[index]["scene"], rng, family, kind)
            wanted = numbers[(turn // len(kinds)) % len(numbers)] if kind == "count" else None
            if item is not None and wanted in (None, item["answer"]):
                out.append({**item, "record": index})
                turn += 1
        if len(out) == progress:
            kind = kinds[turn % len(kinds)]
            raise ValueError(f"no scene of the {len(records)} records answers a question of kind {kind!r}")
    return out
