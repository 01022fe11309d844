"""Prompts people type: many phrasings true of a scene, what each one asks for, and whether a scene does.

What a prompt asks for is a request (a JSON-ready dict):

    {"category": GenEval's category ("single_object", "colours", "counting", "two_objects", "position",
                 "colour_attribution") or "three_objects",
     "objects": [{"name", "colour" (None: any), "count", "size" (None: any), "place" (None: anywhere)}, ...],
     "relation": None, or where the first object is from the second: "left", "right", "above", "below"}

A prompt describes the whole picture: "a red bicycle" asks for exactly one bicycle, red, and nothing else;
"two cats" for exactly two; "a dog and a car" for one of each in any arrangement (`request_holds`).

Phrasings vary by family (`PHRASINGS`): the framing ("a photo of", ...), the relation's words, the count's form,
"a" or "one", capitals and a closing full stop, and a few synonyms. The families of `HELD_OUT_PHRASINGS` never
appear in training text, so an evaluation can tell memorised phrasings from understood ones.
"""

import random
import re

from .captions import POSITION_PHRASES, article, scene_captions, swapped_captions
from .classic import CLASSIC_STYLE, SINGLE_POSITIONS
from .sprites import ALL_OBJECTS, COLOURS

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
RELATION_WORDS = {
    "left": {"bare": "left of", "to the": "to the left of", "on the": "on the left of"},
    "right": {"bare": "right of", "to the": "to the right of", "on the": "on the right of"},
    "above": {"above": "above", "over": "over"},
    "below": {"below": "below", "under": "under", "beneath": "beneath"},
}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
PLACES_RELATION = {  # (first object's place, second's) in a pair -> where the first is from the second
    ("left", "right"): "left",
    ("right", "left"): "right",
    ("top", "bottom"): "above",
    ("bottom", "top"): "below",
}
PHRASINGS = {  # the ways of varying a phrasing but the relation's words, and their families
    "framing": {
        "none": "",
        "photo": "a photo of",
        "image": "an image of",
        "picture": "a picture of",
        "drawing": "a drawing of",
    },
    "count": {"words": "two", "digits": "2", "exactly": "exactly two"},
    "article": {"a": "a", "one": "one"},
}
HELD_OUT_PHRASINGS = {"framing": ("drawing",), "relation": ("on the",), "count": ("exactly",)}
SYNONYMS = {  # name -> another word people use for it, singular and plural
    "bicycle": ("bike", "bikes"),
    "car": ("automobile", "automobiles"),
    "airplane": ("plane", "planes"),
    "rabbit": ("bunny", "bunnies"),
    "bulb": ("light bulb", "light bulbs"),
}
GENEVAL_LAYOUTS = {  # the categories a scene of each layout can be asked for as
    "single": ("single_object", "colours"),
    "pair_h": ("two_objects", "position", "colour_attribution"),
    "pair_v": ("two_objects", "position", "colour_attribution"),
    "count": ("counting",),
    "row": ("three_objects",),
}


def scene_request(scene: dict, category: str, rng: random.Random | None = None, detail: bool = False) -> dict:
    """A request that the scene meets (`request_holds`), asking for what `category` asks for.

    Colours are asked for in "colours" and "colour_attribution", a relation in "position". With `rng` and
    `detail`, any of colour, size and place (and for a pair, its relation) is also asked for or left out at
    random, as people do ("a bicycle", "a red bicycle", "a large bicycle on the left"); the request's category
    is then the one of what it asks for (`request_category`). With `rng`, a relation is said either way round.
    """
    if category not in GENEVAL_LAYOUTS.get(scene["layout"], ()):
        raise ValueError(f"a {scene['layout']!r} scene cannot be asked for as {category!r}")
    coin = (lambda: rng.random() < 0.5) if detail and rng is not None else (lambda: False)
    objects = scene["objects"]
    coloured = category in ("colours", "colour_attribution")
    if scene["layout"] == "count":
        first = objects[0]
        asked = [_asked(first, count=len(objects), colour=coin())]
    else:
        asked = [_asked(obj, colour=coloured or coin()) for obj in objects]
    if scene["layout"] == "single" and detail and rng is not None:
        if coin():
            asked[0]["size"] = objects[0]["size"] if objects[0]["size"] in ("small", "large") else None
        if coin():
            asked[0]["place"] = objects[0]["position"]
    relation = None
    if category == "position" or (category == "two_objects" and coin()):
        relation = PLACES_RELATION[objects[0]["position"], objects[1]["position"]]
        if rng is not None and rng.random() < 0.5:  # say it the other way round
            asked, relation = asked[::-1], OPPOSITE[relation]
    return {"category": request_category(asked, relation), "objects": asked, "relation": relation}


def request_category(objects: list[dict], relation: str | None) -> str:
    """The category of a request for these objects in this relation (GenEval's, or "three_objects")."""
    if len(objects) == 1:
        if objects[0]["count"] > 1:
            return "counting"
        return "colours" if objects[0]["colour"] else "single_object"
    if len(objects) > 2:
        return "three_objects"
    if relation is not None:
        return "position"
    return "colour_attribution" if all(obj["colour"] for obj in objects) else "two_objects"


def _asked(obj: dict, count: int = 1, colour: bool = False) -> dict:
    return {
        "name": obj["name"],
        "colour": obj["colour"] if colour else None,
        "count": count,
        "size": None,
        "place": None,
    }


def caption_request(scene: dict) -> dict:
    """What the scene's own captions (`scene_captions`) ask for: every object in its colour, a single object's
    size word and place, a pair's relation, a group's count."""
    objects = scene["objects"]
    if scene["layout"] == "count":
        asked = [_asked(objects[0], count=len(objects), colour=True)]
    else:
        asked = [_asked(obj, colour=True) for obj in objects]
    if scene["layout"] == "single":
        size = objects[0]["size"]
        asked[0].update(size=size if size in ("small", "large") else None, place=objects[0]["position"])
    pair = scene["layout"] in ("pair_h", "pair_v")
    relation = PLACES_RELATION[objects[0]["position"], objects[1]["position"]] if pair else None
    return {"category": request_category(asked, relation), "objects": asked, "relation": relation}


def swapped_scene(scene: dict) -> dict | None:
    """A two-object scene with its objects' places exchanged (what its image shows mirrored across the
    relation's axis), or None for other layouts."""
    if scene["layout"] not in ("pair_h", "pair_v"):
        return None
    first, second = scene["objects"]
    return {**scene, "objects": [{**second, "position": first["position"]}, {**first, "position": second["position"]}]}


def request_key(request: dict) -> tuple:
    """The names and counts a request asks for: a request can only hold of a scene with the same `scene_key`."""
    return tuple(sorted((obj["name"], obj["count"]) for obj in request["objects"]))


def scene_key(scene: dict) -> tuple:
    """The names of a scene's objects and how many of each (see `request_key`)."""
    counts: dict[str, int] = {}
    for obj in scene["objects"]:
        counts[obj["name"]] = counts.get(obj["name"], 0) + 1
    return tuple(sorted(counts.items()))


def request_holds(request: dict, scene: dict) -> bool:
    """Whether a scene is what the request asks for: the same objects in the same numbers and nothing else,
    each of the colour, size and place asked for, and in the relation asked for."""
    found: dict[str, list[dict]] = {}
    for obj in scene["objects"]:
        found.setdefault(obj["name"], []).append(obj)
    asked = request["objects"]
    if sorted(found) != sorted(a["name"] for a in asked):
        return False
    for want in asked:
        have = found[want["name"]]
        if len(have) != want["count"]:
            return False
        for key, field in (("colour", "colour"), ("size", "size"), ("place", "position")):
            if want[key] is not None and any(obj[field] != want[key] for obj in have):
                return False
    if request["relation"] is None:
        return True
    places = tuple(found[a["name"]][0]["position"] for a in asked[:2])
    return PLACES_RELATION.get(places) == request["relation"]


def phrase_request(
    request: dict, rng: random.Random, held_out: bool | None = False, swap: bool = False
) -> tuple[str, dict]:
    """A phrasing of the request, and the family it took in each way of varying that applies to it.

    `held_out`: False draws from the training families only, True takes a held-out family in one way of
    varying that has one for this request (the other ways from the training families), None draws from all.
    `swap` exchanges the first two objects' words and nothing else: from the same state of `rng`, the phrasing
    of the request with those objects exchanged ("a car left of a dog" for "a dog left of a car")."""
    counts = [obj["count"] for obj in request["objects"]]
    kinds = {"framing": PHRASINGS["framing"]}
    if request["relation"] is not None:
        kinds["relation"] = RELATION_WORDS[request["relation"]]
    if max(counts) > 1:
        kinds["count"] = PHRASINGS["count"]
    if min(counts) == 1:
        kinds["article"] = PHRASINGS["article"]
    seen = {kind: [f for f in values if f not in HELD_OUT_PHRASINGS.get(kind, ())] for kind, values in kinds.items()}
    options = {kind: list(values) for kind, values in kinds.items()} if held_out is None else seen
    if held_out:
        unseen = {kind: [f for f in values if f not in seen[kind]] for kind, values in kinds.items()}
        kind = rng.choice([kind for kind, values in unseen.items() if values])
        options = {**options, kind: unseen[kind]}
    chosen = {kind: rng.choice(values) for kind, values in options.items()}
    phrases = [_noun_phrase(obj, chosen, rng) for obj in request["objects"]]
    if swap:
        phrases[:2] = phrases[1::-1]
    if request["relation"] is not None:
        text = f"{phrases[0]} {RELATION_WORDS[request['relation']][chosen['relation']]} {phrases[1]}"
    elif len(phrases) == 1:
        text = phrases[0]
    else:
        text = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    framing = PHRASINGS["framing"][chosen["framing"]]
    text = f"{framing} {text}" if framing else text
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.2:
        text += "."
    return text, chosen


def _noun_phrase(obj: dict, chosen: dict, rng: random.Random) -> str:
    name, plural = obj["name"], ALL_OBJECTS[obj["name"]][1]
    if name in SYNONYMS and rng.random() < 0.3:
        name, plural = SYNONYMS[name]
    if obj["count"] > 1:
        number = str(obj["count"]) if chosen["count"] == "digits" else NUMBER_WORDS[obj["count"]]
        words = ["exactly" if chosen["count"] == "exactly" else None, number, obj["colour"], plural]
        return " ".join(word for word in words if word)
    words = " ".join(word for word in (obj["size"], obj["colour"], name) if word)
    first = "one" if chosen["article"] == "one" else article(words)
    place = f" {POSITION_PHRASES[obj['place']]}" if obj["place"] else ""
    return f"{first} {words}{place}"


def training_prompts(scene: dict, rng: random.Random, count: int) -> list[tuple[str, dict, str | None]]:
    """Training text for a scene: its own captions (`scene_captions`) and then `request_prompts`. Each is
    (text, request, twin), as there."""
    swapped = swapped_captions(scene)
    own = [
        (caption, caption_request(scene), swapped[k] if swapped else None)
        for k, caption in enumerate(scene_captions(scene))
    ]
    return own + request_prompts(scene, rng, count)


def request_prompts(scene: dict, rng: random.Random, count: int) -> list[tuple[str, dict, str | None]]:
    """`count` phrasings of requests the scene meets (of each category its layout allows, details drawn at
    random), in the training phrasing families only. Each is (text, request, twin): the twin is the same text
    with the two objects of a relation exchanged, None where there is no relation (or the two look alike)."""
    out = []
    for _ in range(count):
        request = scene_request(scene, rng.choice(GENEVAL_LAYOUTS[scene["layout"]]), rng, detail=True)
        state = rng.getstate()
        text = phrase_request(request, rng)[0]
        twin = None
        if request["relation"] is not None and not _alike(*request["objects"][:2]):
            rng.setstate(state)
            twin = phrase_request(request, rng, swap=True)[0]
        out.append((text, request, twin))
    return out


def _alike(first: dict, second: dict) -> bool:
    return (first["name"], first["colour"]) == (second["name"], second["colour"])


_FRAMINGS = ("there is", "there are", "from left to right,", "a row of", "a group of") + tuple(
    words for words in PHRASINGS["framing"].values() if words
)
_COUNTS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "1": 1,
    **{w: n for n, w in NUMBER_WORDS.items()},
    **{str(n): n for n in NUMBER_WORDS},
}
_RELATIONS = sorted(
    ((words, relation) for relation, variants in RELATION_WORDS.items() for words in variants.values()),
    key=lambda pair: -len(pair[0]),
)


def _nouns() -> dict[str, tuple[str, bool]]:
    """Every word for an object, singular or plural -> (its name, whether plural)."""
    nouns = {}
    for name, (_, plural) in ALL_OBJECTS.items():
        nouns[name], nouns[plural] = (name, False), (name, True)
    for name, (word, plural) in SYNONYMS.items():
        nouns[word], nouns[plural] = (name, False), (name, True)
    return nouns


_NOUNS = _nouns()
_MENTION = re.compile(
    r"\b(?:exactly\s+)?("
    + "|".join(map(re.escape, _COUNTS))
    + r")\s+(?:(small|large)\s+)?(?:("
    + "|".join(COLOURS)
    + r")\s+)?("
    + "|".join(map(re.escape, sorted(_NOUNS, key=len, reverse=True)))
    + r")\b"
)
_PLACE = {phrase: place for place, phrase in POSITION_PHRASES.items()}


def parse_prompt(text: str) -> dict | None:
    """What a prompt of the grammar asks for (a request, as `scene_request` gives them), or None if it is not
    one: any framing, relation words, count form, article, capitals, full stop and synonym of `PHRASINGS`,
    held-out families included, and the world's own captions."""
    text = " ".join(text.lower().strip().rstrip(".!").split())
    for framing in sorted(_FRAMINGS, key=len, reverse=True):
        if text.startswith(framing + " "):
            text = text[len(framing) + 1 :]
            break
    place = None
    for phrase in sorted(_PLACE, key=len, reverse=True):  # "on the left, a red shirt"
        if text.startswith(phrase + ", "):
            place, text = _PLACE[phrase], text[len(phrase) + 2 :]
            break
    mentions = list(_MENTION.finditer(text))
    if not mentions or mentions[0].start() != 0:
        return None
    objects = []
    for m in mentions:
        count, size, colour, noun = m.groups()
        name, plural = _NOUNS[noun]
        if plural != (_COUNTS[count] > 1):
            return None  # "two apple", "a apples"
        objects.append({"name": name, "colour": colour, "count": _COUNTS[count], "size": size, "place": None})
    between = [text[a.end() : b.start()].strip() for a, b in zip(mentions, mentions[1:])]
    tail = text[mentions[-1].end() :].strip()
    relation = None
    if len(objects) == 2 and between[0] not in ("and", ","):
        relation = dict(_RELATIONS).get(between[0])
        if relation is None:
            return None
    elif any(words not in (",", "and", ", and", "beside") for words in between):
        return None
    if tail or place:
        if len(objects) != 1 or objects[0]["count"] != 1 or (tail and place) or (tail and tail not in _PLACE):
            return None
        objects[0]["place"] = place or _PLACE[tail]
    if len({obj["name"] for obj in objects}) != len(objects) or (
        any(obj["size"] for obj in objects) and (len(objects) > 1 or objects[0]["count"] > 1)
    ):
        return None
    return {"category": request_category(objects, relation), "objects": objects, "relation": relation}


def classic_scene(request: dict, rng: random.Random) -> dict | None:
    """A scene of the classic world (`genvl.world.classic`, the shipped text-to-image stack's training data) that
    meets the request (`request_holds`), with what the request leaves open (colours, a single object's size and
    place, a pair's relation) drawn with `rng`, and three objects in a row in the order named; None where no
    classic scene meets it (four of a kind, four objects, a place in a corner, two groups)."""
    objects = request["objects"]

    def drawn(obj: dict, size: str, position: str) -> dict:
        return {
            "name": obj["name"],
            "colour": obj["colour"] or rng.choice(list(COLOURS)),
            "size": size,
            "position": position,
        }

    if len(objects) == 1 and objects[0]["count"] == 1:
        size = objects[0]["size"] or rng.choice(("small", "large"))
        place = objects[0]["place"] or rng.choice(sorted(SINGLE_POSITIONS))
        if place not in SINGLE_POSITIONS:
            return None
        return {"layout": "single", "style": CLASSIC_STYLE, "objects": [drawn(objects[0], size, place)]}
    if len(objects) == 1:
        if objects[0]["count"] not in (2, 3):
            return None
        one = drawn(objects[0], "group", "row")
        return {"layout": "count", "style": CLASSIC_STYLE, "objects": [one] * objects[0]["count"]}
    if any(obj["count"] != 1 for obj in objects) or len(objects) > 3:
        return None
    if len(objects) == 3:  # a row, in the order named: left to right, as the world's own captions say it
        placed = zip(objects, ("left", "centre", "right"))
        return {"layout": "row", "style": CLASSIC_STYLE, "objects": [drawn(obj, "group", p) for obj, p in placed]}
    relation = request["relation"] or rng.choice(sorted(OPPOSITE))
    places = next(places for places, said in PLACES_RELATION.items() if said == relation)
    pair = sorted(zip(places, objects), key=lambda placed: placed[0] in ("right", "bottom"))  # left or top first
    layout = "pair_h" if relation in ("left", "right") else "pair_v"
    return {"layout": layout, "style": CLASSIC_STYLE, "objects": [drawn(obj, "medium", p) for p, obj in pair]}


def classic_caption(prompt: str, rng: random.Random) -> str | None:
    """The canonical caption (`scene_captions`) of a classic scene that the prompt asks for (`parse_prompt`,
    `classic_scene`), or None where the prompt is not one of the grammar or no classic scene meets it: what a
    stack whose text side learnt the classic captions reads best. "a red bicycle" may become "a large red
    bicycle on the left", "a dog and a car" "a blue car above a green dog". Prompts outside the grammar are read
    word by word (`genvl.world.typed.read_prompt`)."""
    from .typed import read_prompt  # it builds on this module

    request = read_prompt(prompt)
    scene = classic_scene(request, rng) if request is not None else None
    return scene_captions(scene)[0] if scene is not None else None
