"""Questions as people type them, beyond the phrasings a question-answering model was trained on: "What's the
colour of the apple", "how many cats do you see?", "any frogs in the picture?", "left of the car?", "Of all the
objects, which one is the largest?".

`read_question` reads which of the world's five kinds of question (`genvl.world.questions`) a text asks, and about
which object, and `asked_question` phrases that reading as training asked it ("what colour is the apple?"). Like
`genvl.world.typed.read_prompt`, it reads only what it understands, word by word: the object (the only one named,
or none for "biggest"), the words that say the kind ("how many", "colour", "to the left of", "biggest", "is
there"), and words that change nothing the answer depends on (a question's own words, politeness, "in this
picture"). A question holding any other word or symbol, words of two kinds ("what colour is the thing left of the
cat?"), a colour or a number beside the object ("how many red apples?", "is the apple red?": the answer could
differ from the plain question's), or a negation is not read, and is asked as typed: a wrong reading answers a
question that was not asked, which is worse than none.
"""

import re

from .captions import article
from .questions import COLOUR_VERBS, PREFIXES, RELATIONS, SUFFIXES, TRAIN, _plural, wrapped
from .sprites import COLOURS
from .typed import SAME_PLURAL, SHADES, _noun

# words of any question that change nothing its answer depends on
ASKING = set(
    "what which is are the a an this that these those in on of here there you u me i i'd i'm we please pls plz "
    "can could would will tell know like to see say hey so question quick ok okay just now it they them its "
    "one ones object objects thing things item items emoji emojis picture pictures pic pics image images photo "
    "photos scene drawing drawn shown show shows seen pictured name identify give let do does did be been got "
    "for all both looking at wonder wondering answer exactly point out appear appears need want idea state call "
    "hi hello thanks thank cheers".split()
)
# the words that say each kind, beside ASKING; a word of one kind's set in a question read as another kind (or a
# word of no set at all) leaves the question unread
KIND_WORDS = {
    "count": set("how many number count total altogether overall visible contain contains have has spot find".split()),
    "colour": set("colour colours coloured seem seems have has painted same single shared by".split()),
    "relation": set(
        "left right above below over under underneath beneath top side located placed positioned sits sitting "
        "lies lying stands standing directly immediately".split()
    ),
    "biggest": set("biggest largest bigger larger than others other size most".split()),
    "exists": set(
        "any anywhere spot find contain contains include includes have has present visible or not yes no least "
        "whether if check".split()
    ),
}
# the words that alone say a kind: a question with those of two kinds is not read
MARKS = {
    "count": {"many", "number", "count", "total", "altogether"},
    "colour": {"colour", "colours", "coloured"},
    "relation": {"left", "right", "above", "below", "over", "under", "underneath", "beneath", "top"},
    "biggest": {"biggest", "largest", "bigger", "larger"},
}
# a relation's words -> the world's relation; "on top of" is "above"
SIDES = {"left": "left", "right": "right", "above": "above", "over": "above", "top": "above"}
SIDES.update({"below": "below", "under": "below", "underneath": "below", "beneath": "below"})
# words one of which a yes-or-no question about an object holds ("is there", "do you see", "any", "check for")
YES_NO = set("is are does do can could would will have has did any whether if check".split())
CONTRACTIONS = {
    "what's": "what is",
    "color's": "colour is",
    "colour's": "colour is",
    "whats": "what is",
    "where's": "where is",
    "there's": "there is",
    "theres": "there is",
    "that's": "that is",
    "it's": "it is",
    "who's": "who is",
    "r": "are",
    "color": "colour",
    "colors": "colours",
    "colored": "coloured",
}
_KNOWN = re.compile(r"[a-z0-9\s,;:!?.'\"()\-–]*")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _words(text: str) -> list[str] | None:
    """The question's words, lower case, contractions spelt out, "'s" of a possessive split off, shades as the
    world's colour words; None where it holds a symbol `_KNOWN` lacks."""
    text = text.lower().replace("\u2019", "'")
    if not _KNOWN.fullmatch(text):
        return None
    text = re.sub(r"\blight bulb(s?)\b", r"lightbulb\1", text)
    words = []
    for word in _WORD.findall(text):
        word = CONTRACTIONS.get(word, word)
        if word.endswith("'s") and _noun(word[:-2]):  # "the apple's colour"
            word = word[:-2]
        words += [SHADES.get(w, w) for w in word.split()]
    return words


def _negated(words: list[str]) -> bool:
    """Whether a negation is said ("is there no cat?", "isn't there"), but for "... or not" and "yes or no"."""
    return any("n't" in w or w in ("not", "no") and "or" not in words for w in words)


def _object(word: str):
    """(object name, plural) of a word for an object, or None; "present" is a word of "is a cat present?"."""
    return None if word in KIND_WORDS["exists"] else _noun(word)


def read_question(text: str) -> dict | None:
    """{"kind", "name", "plural", "relation"} of the question `text` asks (see the module's docstring): "name" the
    object asked about (None for "biggest"), "plural" whether it was named in the plural, "relation" the side for
    a relation ("left", "right", "above", "below"); None where the reader cannot tell. Where the whole text does
    not read, its one sentence (or part after a colon or dash) that does is the question, if the others name no
    object and say no kind: the asker's own words ("Hi, I can't see the image well. What colour is the cat?")."""
    words = _words(text) if isinstance(text, str) else None
    reading = _read(words)
    if reading is not None or words is None:
        return reading
    parts = [_words(part) for part in re.split(r"[.!?;:]+\s|[.!?;:]+$|\s[-–]+\s", text) if part.strip()]
    readings = [reading for reading in map(_read, parts) if reading is not None]
    if len(readings) == 1 and sum(map(_says_something, parts)) == 1:
        return readings[0]
    return None


def _says_something(words: list[str]) -> bool:
    """Whether words name an object or say a kind of question."""
    return any(_object(w) or any(w in marks for marks in MARKS.values()) for w in words)


def _read(words: list[str] | None) -> dict | None:
    """`read_question`'s reading of one run of words."""
    if not words or _negated(words) or any(w in COLOURS or w == "white" or w.isdigit() for w in words):
        return None
    kinds = [kind for kind, marks in MARKS.items() if marks & set(words)] or ["exists"]
    nouns = [(i, found) for i, found in enumerate(map(_object, words)) if found]
    kind = kinds[0]
    if len(kinds) > 1 or ("how" in words) != ("many" in words) or len(nouns) != (kind != "biggest"):
        return None  # two kinds, "how" that is not "how many", or not the one object a kind asks about
    allowed = ASKING | KIND_WORDS[kind]
    if any(w not in allowed for i, w in enumerate(words) if not nouns or i != nouns[0][0]):
        return None
    if kind == "biggest":
        return {"kind": kind, "name": None, "plural": False, "relation": None}
    at, (name, plural) = nouns[0]
    plural = plural or (words[at] in SAME_PLURAL and "are" in words)
    if kind == "relation":
        sides = [i for i, w in enumerate(words) if w in SIDES]
        if len(sides) != 1 or plural or sides[0] > at and "it" not in words[sides[0] + 1 : sides[0] + 3]:
            return None  # two sides, or the object named before its side ("which is the cat left of?") but as "it"
        return {"kind": kind, "name": name, "plural": False, "relation": SIDES[words[sides[0]]]}
    if kind == "exists" and (not YES_NO & set(words) or {"what", "which"} & set(words)):
        return None  # a statement, or a wh- question about the object, not "is there ...?"
    if kind == "exists" and any(w == "one" and words[i - 1 : i] != ["least"] for i, w in enumerate(words[:at])):
        return None  # "is there exactly one cat?" asks a count; "at least one cat" does not
    return {"kind": kind, "name": name, "plural": plural, "relation": None}


def asked_question(text: str) -> str | None:
    """The question `text` asks, phrased as the world's training questions first phrase its kind ("what colour
    is the apple?", "how many cats are there?", "is there a frog?"), or as typed where it already is one of
    training's phrasings (a core question in a wrapping: `questions.phrase`); None where `read_question` cannot
    read it."""
    read = read_question(text)
    if read is None:
        return None
    kind, name = read["kind"], read["name"]
    if kind == "colour":
        number = "several" if read["plural"] else "one"
        slots = {"name": _plural(name) if read["plural"] else name, **COLOUR_VERBS[number]}
    elif kind == "relation":
        slots = {"relation": RELATIONS[read["relation"]], "name": name}
    else:  # biggest takes no slot
        slots = {"plural": name and _plural(name), "a_name": name and f"{article(name)} {name}"}
    typed = _said(text)
    for template in TRAIN[kind]:
        if any(_said(wrapped(template, slots, a, b)) == typed for a in PREFIXES for b in SUFFIXES):
            return text
    return TRAIN[kind][0].format(**slots)


def _said(question: str) -> str:
    """A question as compared with training's phrasings: lower case, spaces collapsed, no closing "?", "." or "!"."""
    return " ".join(question.lower().split()).rstrip(" ?.!")
