"""Captions generated from scene graphs, and the parser that reads a caption back into a scene graph.

The first phrasing of each scene is the canonical one (the `text` column); the others are extra references
for the caption metrics. `parse_caption` accepts every phrasing produced here.
"""

import random
import re

from .scenes import ROW_PLACES
from .sprites import ALL_OBJECTS, COLOURS

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
WORD_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
    **{f"{row} {column}": f"at the {row} {column}" for row in ("top", "bottom") for column in ("left", "right")},
}
PLURALS = {plural: name for name, (_, plural) in ALL_OBJECTS.items()}


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(obj: dict, with_size: bool = False) -> str:
    """ "a large red apple", "a red apple", "an apple": the size word only if asked and true, the colour word
    only for objects painted in one (None: OpenMoji's original colours)."""
    words = [obj["size"] if with_size else None, obj["colour"], obj["name"]]
    words = [word for word in words if word]
    return f"{article(words[0])} {' '.join(words)}"


def _listed(phrases: list[str]) -> str:
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def scene_captions(scene: dict, rng: random.Random | None = None) -> list[str]:
    """All phrasings of a scene; the first is canonical. `rng` shuffles the non-canonical ones."""
    objects = scene["objects"]
    layout = scene["layout"]
    if layout == "single":
        phrase = _noun_phrase(objects[0], with_size=True)
        where = POSITION_PHRASES[objects[0]["position"]]
        captions = [f"{phrase} {where}", f"there is {phrase} {where}", f"{where}, {phrase}"]
    elif layout in ("pair_h", "pair_v"):
        first, second = (_noun_phrase(o) for o in objects)
        forward, backward = ("to the left of", "to the right of") if layout == "pair_h" else ("above", "below")
        captions = [
            f"{first} {forward} {second}",
            f"{second} {backward} {first}",
            f"there is {first} {forward} {second}",
        ]
    elif layout == "count":
        obj = objects[0]
        words = [NUMBER_WORDS[len(objects)], obj["colour"], ALL_OBJECTS[obj["name"]][1]]
        group = " ".join(word for word in words if word)
        classic = scene.get("style", {}).get("world") == "classic"  # whose groups were always rows
        captions = [group, f"there are {group}", f"{'a row' if classic else 'a group'} of {group}"]
    elif layout == "row":
        first, *rest = (_noun_phrase(o) for o in objects)
        every = _listed([first, *rest])
        captions = [every, f"from left to right, {every}", f"{first} beside {_listed(rest)}"]
    else:
        raise ValueError(f"unknown scene layout {layout!r}")
    if rng is not None:
        rest = captions[1:]
        rng.shuffle(rest)
        captions = captions[:1] + rest
    return captions


def repeated_word_bans(tokenizer) -> list[list[int]]:
    """`bad_words_ids` for a captioner of the world: each of its nouns, colours, counts and sizes, and its articles,
    written twice in a row (" gift gift"). No caption of the world does that, and a captioner that starts to
    ("a gift gift gift", "ball ball ball ...") writes the next most likely token instead."""
    words = {*ALL_OBJECTS, *PLURALS, *COLOURS, *NUMBER_WORDS.values(), "small", "large", "a", "an", "and"}
    bans = []
    for word in sorted(words):
        ids = tokenizer(" " + word, add_special_tokens=False).input_ids
        bans.append(ids + ids)
    return bans


def swapped_captions(scene: dict) -> list[str] | None:
    """The phrasings of a two-object scene with the objects' places exchanged, in `scene_captions`' order, or
    None for other layouts and for two objects that look alike (same name and colour)."""
    if scene.get("layout") not in ("pair_h", "pair_v"):
        return None
    first, second = scene["objects"]
    if (first["name"], first["colour"]) == (second["name"], second["colour"]):
        return None
    return scene_captions({**scene, "objects": [second, first]})


def swapped_caption(scene: dict) -> str | None:
    """The canonical caption of the scene with its two objects exchanged (see `swapped_captions`), or None."""
    twins = swapped_captions(scene)
    return twins[0] if twins else None


_NAMES = sorted(list(ALL_OBJECTS) + list(PLURALS), key=len, reverse=True)
_COUNT, _SIZE = r"(a|an|one|two|three|four)\s+", r"(?:(small|large)\s+)?"
_MENTION = re.compile(r"\b" + _COUNT + _SIZE + r"(?:(" + "|".join(COLOURS) + r")\s+)?(" + "|".join(_NAMES) + r")\b")
_PLACE = re.compile(r"\b(" + "|".join(sorted(POSITION_PHRASES.values(), key=len, reverse=True)) + r")\b")
PLACES = {phrase: place for place, phrase in POSITION_PHRASES.items()}


def _sorted(facts) -> list[tuple]:
    """Facts in a fixed order; None (no colour, size or place) sorts before any word."""
    return sorted(facts, key=lambda fact: tuple((value is not None, value) for value in fact))


def scene_facts(scene: dict) -> list[tuple]:
    """The comparable content of a scene graph: sorted (name, colour, count, size, position) tuples.

    Size is only part of the facts for single-object scenes, the only ones whose captions state it (None where
    no size word is true); colour is None for OpenMoji's original colours; count groups carry no position.
    """
    objects = scene["objects"]
    layout = scene["layout"]
    if layout == "count":
        obj = objects[0]
        return [(obj["name"], obj["colour"], len(objects), None, None)]
    size = objects[0]["size"] if layout == "single" else None
    return _sorted((o["name"], o["colour"], 1, size, o["position"]) for o in objects)


def parse_caption(text: str) -> list[tuple] | None:
    """Read a caption back into scene facts (as `scene_facts` gives them), or None if it does not parse."""
    text = " ".join(text.lower().replace(",", " , ").split())
    mentions = []
    for m in _MENTION.finditer(text):
        count, size, colour, noun = m.groups()
        name = PLURALS.get(noun, noun)
        number = WORD_NUMBERS[count]
        if (number > 1) != (noun in PLURALS):
            return None  # "two red apple" or "a red apples"
        mentions.append((name, colour, number, size))
    if len(mentions) == 1:
        name, colour, number, size = mentions[0]
        if number > 1:
            return [(name, colour, number, None, None)]
        where = _PLACE.findall(text)
        if len(where) != 1:
            return None
        return [(name, colour, 1, size, PLACES[where[0]])]
    if len(mentions) == 2:
        relations = {
            "to the left of": ("left", "right"),
            "to the right of": ("right", "left"),
            "above": ("top", "bottom"),
            "below": ("bottom", "top"),
        }
        found = [places for phrase, places in relations.items() if phrase in text]
        if len(found) != 1 or any(m[2] != 1 or m[3] is not None for m in mentions):
            return None
        return _sorted((m[0], m[1], 1, None, place) for m, place in zip(mentions, found[0]))
    if len(mentions) in ROW_PLACES:
        if any(m[2] != 1 or m[3] is not None for m in mentions):
            return None
        return _sorted((m[0], m[1], 1, None, place) for m, place in zip(mentions, ROW_PLACES[len(mentions)]))
    return None
