"""Prompts as people type them, beyond the grammar of `genvl.world.prompts`: "red bicycle", "draw a cat next to a
chair", "a tulip that is red", "apple, banana, pear", "a car with a dog on its left", "2 pink pigs, digital art".

`read_prompt` reads what such a prompt asks for (a request, as `parse_prompt` gives them) word by word. It reads
only what it understands: every word must be an object, a colour, a count, a relation, a joining word, or one of
a few words that change nothing the world draws (framing such as "draw me", fillers such as "cute", styles such as
"digital art"). Three runs of words are the asker's own and are passed over: words before the last asking word
("my daughter wants a ..."), a purpose ("for my slides"), and comma-separated tags after the objects that say no
colour, number, place or relation ("..., studio lighting, 4k"). A prompt holding any other word or symbol, a word
the world cannot honour (a negation, a vague count, a comparison, a colour the world lacks), or words whose
meaning the reader cannot settle (two object words with nothing between them, "an apple tree"; a colour said after
two objects, "a cat and a dog that are brown"; "its" that is not "to its left") is not read: a wrong reading
draws what the prompt did not ask for, and is worse than none.
"""

import re
import unicodedata

from .prompts import _NOUNS, OPPOSITE, PLACES_RELATION, parse_prompt, request_category
from .sprites import COLOURS

COUNTS = {"a": 1, "an": 1, "one": 1, "single": 1, "the": 1, "two": 2, "three": 3, "four": 4}
COUNTS.update({str(n): n for n in range(1, 5)})
ARTICLES = ("a", "an", "the")
PAIRS = ("couple", "pair")  # "a couple of", "a pair of": two
SHADES = {"grey": "gray", "crimson": "red", "scarlet": "red", "navy": "blue", "violet": "purple"}
NOUN_WORDS = {  # more words for objects than `prompts.SYNONYMS`, singular and plural
    "kitty": ("cat", False),
    "kitties": ("cat", True),
    "kitten": ("cat", False),
    "kittens": ("cat", True),
    "puppy": ("dog", False),
    "puppies": ("dog", True),
    "present": ("gift", False),
    "presents": ("gift", True),
    "lightbulb": ("bulb", False),
    "lightbulbs": ("bulb", True),
    "aeroplane": ("airplane", False),
    "aeroplanes": ("airplane", True),
    "lorry": ("truck", False),
    "lorries": ("truck", True),
}
COMPOUNDS = {
    "light bulb": "lightbulb",
    "gift box": "present",
    "gift boxes": "presents",
    "school bus": "bus",
    "t shirt": "shirt",
    "t shirts": "shirts",
    "lime green": "green",
    "next to": "beside",  # "to" alone does not join: "a key to the house"
    "close to": "beside",
}
SAME_PLURAL = {"fish"}  # "two fish"
SIZES = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large", "huge": "large"}
# words that say nothing the world draws differently: before the first object, inside an object's words, after the
# last object
FRAMING = set(
    "draw generate create make render paint show give get put me us please pls can could would you i i'd i'm "
    "want need like love to see is it possible of an a the with exactly picture pictures pic pics image images "
    "photo photos drawing drawings illustration illustrations icon icons emoji emojis sketch painting cartoon "
    "realistic simple minimalist line art cute nice just hey u do kindly containing contains shows showing "
    "that clipart clip one".split()
)
# words that ask for the picture: whatever the asker says before the last of them is their own ("my daughter wants
# a pink elephant"); what follows must be framing
ASKING = set("want wants need needs like love loves draw make create generate get show do give paint".split())
QUESTIONS = {"who", "why", "when", "what", "which", "whose", "whom", "how"}  # "Who would want a cat?": not asked
FILLERS = set("cute little simple nice lovely happy plain single lone cartoon coloured colored".split())
STYLE = set(
    "digital art style cartoon icon icons emoji drawing illustration sketch watercolor watercolour vector flat "
    "minimalist minimal simple clean cute high quality hd 4k detailed on in a an the white plain background "
    "together row side by please pls it colour color kawaii 3d render ultra photorealistic cinematic".split()
)
# words between two objects that only join them, and the words a relation may come with
JOINING = set("and with plus beside alongside together along side by as well also".split())
RELATION_WORDS = set(
    "is are sitting placed standing floating located positioned just directly the a of to on at side".split()
)
RELATIONS = {
    "left": "left",
    "right": "right",
    "above": "above",
    "over": "above",
    "atop": "above",
    "top": "above",
    "below": "below",
    "under": "below",
    "underneath": "below",
    "beneath": "below",
}
PLACES = {"left": "left", "right": "right", "top": "top", "bottom": "bottom", "centre": "centre", "center": "centre"}
PLACES["middle"] = "centre"
PLACE_WORDS = {"on", "at", "in", "to", "the", "side"}
# words asking for what the world cannot draw (a negation, a vague count, a comparison, a colour it lacks): a prompt
# holding one is not read; "white" only where it is an object's colour ("on a white background" is read)
REFUSED = set(
    "no not without except never none nothing non some several few many lots lot multiple bunch dozen dozens "
    "bigger smaller larger taller shorter than more fewer less black silver gold golden beige cyan magenta "
    "teal turquoise nobody nor cannot hate dont doesnt didnt wont wouldnt cant isnt arent shouldnt havent hasnt".split()
)
# words that say how an object word right before them is drawn, not that it is drawn: "pencil sketch"
MEDIUMS = set("sketch drawing drawings illustration painting art style icon icons background wallpaper design".split())
MEDIUMS |= {"print", "pattern", "shaped", "shape"}
# more words of style tags after the objects ("..., studio lighting, 4k")
TAGS = set("lighting studio concept poster retro trending bright colourful colorful vibrant soft pastel photo".split())
TAGS |= set(
    "product shot sharp focus macro photography detail resolution glossy matte sticker logo badge design print "
    "engraving woodcut linocut vintage aesthetic theme vibes anime comic isometric pixel neon texture".split()
)
# words that say what is drawn: colours, numbers, places, relations
SAID = set(COLOURS) | {w for w, n in COUNTS.items() if n > 1} | set(PLACES) | set(RELATIONS)
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[,&+;:!?.]")
# what a prompt may hold besides letters, digits and spaces: a symbol outside these is not read ("a cat/dog")
_KNOWN = re.compile(r"[a-z0-9\s,&+;:!?.'\"()\-–]*")
STOPS = ".!?;"  # sentence stops part words as a comma does; ":" joins ("For my dog: a red ball" is not read)
_COMPOUNDS = [
    (re.compile(rf"\b{words}\b"), word) for words, word in sorted(COMPOUNDS.items(), key=lambda c: -len(c[0]))
]
# the words an object's noun may follow in its own run of words: "a couple of small red ..."
OBJECT_WORDS = {*COUNTS, *COLOURS, *FILLERS, *SIZES, *PAIRS, "of", "white"}
# the words a relation is said with, beside its own: "is sitting just to the left of it"
RELATION_PHRASE = {*RELATIONS, *RELATION_WORDS, "its", "it"}


def _tokens(text: str) -> list[str]:
    """Words and commas (a dash between words, or a sentence stop, is a comma), lower case, shades as the world's
    colour words, `COMPOUNDS` one word each, "2x" as "2"; None where the text holds a symbol `_KNOWN` lacks."""
    text = text.lower().replace("\u2019", "'")
    if not _KNOWN.fullmatch(text):
        return None
    text = re.sub(r"\s[-–]+\s", " , ", f" {text} ")
    text = re.sub(r"\b([1-4])x\b", r"\1", " ".join(text.replace("-", " ").split()))
    for words, word in _COMPOUNDS:
        text = words.sub(word, text)
    tokens = []
    for token in _TOKEN.findall(text):
        token = "," if token in STOPS else SHADES.get(token, token)
        if token != ":" and not (token == "," and tokens[-1:] == [","]):
            tokens.append(token)
    return tokens


def _noun(token: str):
    """(object name, plural) of a word for an object, or None."""
    return _NOUNS.get(token) or NOUN_WORDS.get(token)


def object_words(name: str) -> set[str]:
    """Every word or phrase for object `name` that the world's readers take for it, singular and plural: "rabbit",
    "rabbits", "bunny", "bunnies"; "gift", "present", "gift box", ..."""
    words = {word for word, (noun, _) in {**_NOUNS, **NOUN_WORDS}.items() if noun == name}
    return words | {phrase for phrase, word in COMPOUNDS.items() if word in words}


def plain_text(text: str) -> str:
    """`text` as plain letters: compatibility forms as their letters (full-width "ａ", ligatures), accents and
    variation selectors dropped ("réd" is "red"), and so are invisible format characters (a zero-width space)
    and pictographs (emoji), which say nothing the world's words do not."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if unicodedata.category(char) not in ("Mn", "Cf", "So", "Sk"))


def read_prompt(text: str) -> dict | None:
    """The request of `text` (read as `plain_text`): `parse_prompt`'s where the grammar reads it, else the
    word-by-word reading above; None where neither reads it."""
    text = plain_text(text)
    request = parse_prompt(text)
    if request is not None:
        return request
    tokens = _tokens(text)
    if tokens is None or any(t in REFUSED or t.endswith("n't") for t in tokens):
        return None
    nouns = [i for i, t in enumerate(tokens) if _noun(t)]
    if not nouns or len(nouns) > 3:
        return None
    if len(nouns) > 1 and any(tokens[k + 1 : k + 2] and tokens[k + 1] in MEDIUMS for k in nouns):
        return None  # "a cat, pencil sketch": an object word naming how it is drawn
    objects, spans, end = [], [], 0
    for k in nouns:
        start = k
        while start > end and tokens[start - 1] in OBJECT_WORDS:
            start -= 1
        obj = _object(tokens[start:k], *_noun(tokens[k]))
        stop, colour = _colour_after(tokens, k + 1)
        if obj is None or stop is None or (colour and obj["colour"] not in (None, colour)):
            return None
        obj["colour"] = obj["colour"] or colour
        coloured_after = colour is not None
        objects.append(obj)
        spans.append((start, stop))
        end = stop
    if not _parted(tokens, spans):
        return None
    if coloured_after and any(obj["colour"] is None for obj in objects[:-1]):
        return None  # "a cat and a dog that are brown", "a cat and a dog in red": the dog's, or both's?
    return _arranged(tokens, objects, spans)


def _parted(tokens: list[str], spans: list[tuple[int, int]]) -> bool:
    """Whether the objects' words are apart: something stands between each two, or each starts with an article or
    a number ("a rocket a moon"), or there are three bare nouns ("guitar drum bell"); not "an apple tree", "a
    cherry red car", "train a dog"."""
    if all(a[1] != b[0] for a, b in zip(spans, spans[1:])):
        return True
    if all(tokens[a[0]] in COUNTS and tokens[b[0]] in COUNTS for a, b in zip(spans, spans[1:])):
        return True
    return len(spans) == 3 and all(b - a == 1 for a, b in spans)


def _object(words: list[str], name: str, plural: bool) -> dict | None:
    """The object the words before its noun say (count, colour, size), or None where they cannot be one."""
    count, colour, size = None, None, None
    for i, word in enumerate(words):
        if word in PAIRS and words[i + 1 : i + 2] == ["of"]:
            count = 2
        elif word in COUNTS and (count is None or words[i - 1] in ARTICLES):  # "the two cats": two
            count = COUNTS[word]
        elif word in COUNTS and COUNTS[word] != count:
            return None  # "2-3 cats"
        elif word == "of" and words[i - 1 : i] and words[i - 1] in COUNTS:
            return None  # "one of the two cats"
        elif word == "white" or (word in COLOURS and colour not in (None, word)):
            return None
        elif word in COLOURS:
            colour = word
        elif word in SIZES:
            size = SIZES[word]
    if name in SAME_PLURAL:
        plural = count is not None and count > 1
    if count is None and plural:
        return None  # "apples": how many?
    count = count or 1
    if plural and count == 1:
        return None  # "a apples"; "two green car" is two
    return {"name": name, "colour": colour, "count": count, "size": size, "place": None}


# the words a colour may follow an object's noun with, longest first: "that is red", "in red", ", red", "red"
_AFTER = (("that", "is"), ("that", "are"), ("which", "is"), ("which", "are"), ("painted", "in"), ("wrapped", "in"))
_AFTER += (("in",), ("coloured",), ("colored",), ("painted",), (",",), ())


def _colour_after(tokens: list[str], i: int):
    """(where an object's words that end at token i stop, and the colour said after its noun: "that is red",
    "in red", "coloured red", ", red"), or (i, None) where none is said."""
    for pattern in _AFTER:
        j = i + len(pattern)
        if tuple(tokens[i:j]) != pattern or j >= len(tokens) or tokens[j] not in (*COLOURS, "white"):
            continue
        if pattern in ((",",), ()) and j + 1 < len(tokens) and tokens[j + 1] not in (",", "and", "&", "+"):
            continue  # "a cake, pink candles": not the cake's colour; "Tulip. Purple." is the tulip's
        if (pattern in ((",",), ()) and tokens[j] == "orange") or (j + 1 < len(tokens) and _noun(tokens[j + 1])):
            return None, None  # "apple, orange, pear": the fruit; "a cat in red hat": the hat's colour
        return (None, None) if tokens[j] == "white" else (j + 1, tokens[j])
    return i, None


def _framing(head: list[str]) -> bool:
    """Whether the words before the first object only frame it: framing and style words, after the asker's own
    words up to the last asking word ("my daughter wants"), or after a purpose ("for my niece")."""
    asking = [i for i, w in enumerate(head) if w in ASKING]
    if asking:
        if {"a", "an", *SAID, *QUESTIONS} & set(head[: asking[-1]]):
            return False  # "draw a giraffe and then draw a cat": the asker asks for more
        head = head[asking[-1] + 1 :]
    elif head[:1] == ["for"]:
        return not SAID & set(head)
    return all(w in FRAMING or w in STYLE for w in head)


def _untagged(words: list[str]) -> list[str]:
    """The words after the last object, less its comma-separated style tags ("..., studio lighting, 4k") and a
    closing purpose ("for my slides"): a tag holds a style word and no colour, number, place, relation, article
    or joining word ("..., a giraffe" and "apple, banana, kiwi" are not tags); a purpose says none of the first
    four."""
    segments = [seg.split() for seg in " ".join(words).split(",")]
    kept = [w for seg in segments[:1] + [seg for seg in segments[1:] if not _tag(seg)] for w in seg]
    if "for" in kept:
        purpose = kept.index("for")
        if not SAID & set(kept[purpose:]):
            kept = kept[:purpose]
    return kept


def _tag(words: list[str]) -> bool:
    """Whether a comma-separated run of words after the objects is a style tag (see `_untagged`)."""
    said = {"a", "an", "and", "with", *SAID} & set(words) or any(w.isdigit() for w in words)  # "5 mice"; not "8k"
    return not said and any(w in STYLE or w in TAGS or re.fullmatch(r"\d+k", w) for w in words)


def _place(words: list[str]) -> str | None:
    """The place a run of words says ("on the left", "at the top", "in the middle") if that is all it says."""
    said = [PLACES[w] for w in words if w in PLACES]
    if len(said) != 1 or any(w not in PLACES and w not in PLACE_WORDS for w in words):
        return None
    return said[0]


def _arranged(tokens: list[str], objects: list[dict], spans: list[tuple[int, int]]) -> dict | None:
    """The request of the objects read, from the words around them: what comes before the first (framing, or a
    place), between two (joining words, or a relation) and after the last (a place, the relation, or style
    words); None where a word there says anything else."""
    if len({obj["name"] for obj in objects}) != len(objects):
        return None
    head = [t for t in tokens[: spans[0][0]] if t != ","]
    gaps = [[t for t in tokens[a[1] : b[0]] if t not in (",", "&", "+")] for a, b in zip(spans, spans[1:])]
    tail = _untagged(tokens[spans[-1][1] :])
    relation = None
    if len(objects) == 2:
        read = _relation(head, gaps[0], tail)
        if read is None:
            return None
        relation, head, gaps, tail = read[0], read[1], [read[2]], read[3]
    elif len(objects) == 1 and objects[0]["count"] == 1:
        place_words = [w for w in tail if w in PLACES or w in PLACE_WORDS]
        place = _place(place_words)
        if place is not None and {"on", "at", "in", "to"} & set(place_words):  # not "a cat, right?"
            objects[0]["place"] = place
            tail = [w for w in tail if w not in place_words]
    if not _framing(head) or any(w not in STYLE for w in tail):
        return None
    if any(w not in JOINING for gap in gaps for w in gap):
        return None
    if len(objects) > 1 and any(obj["size"] for obj in objects):
        return None  # sizes of two kinds: the world draws a pair at one size
    if objects[0]["count"] > 1:
        objects[0]["size"] = None  # "two little penguins": the world draws a group at one size
    return {"category": request_category(objects, relation), "objects": objects, "relation": relation}


def _relation(head: list[str], gap: list[str], tail: list[str]):
    """(where the first of two objects is from the second, or None, and the head, gap and tail words left to
    judge) from the relation words between them ("to the left of", "on top of", "and to its right"), after the
    second ("with a dog on its left"), or the places said of each ("on the left a pencil, on the right a book",
    "a ball on the left and a drum on the right"); None where the words say a relation in a way not read."""
    joined = [w for w in gap if w in JOINING and w not in PLACE_WORDS]
    between = [w for w in gap if w not in joined]
    for first, second, rest in (
        (_place(head), _place(between), ([], joined, tail)),  # "on the left a pencil, on the right a book"
        (_place(between), _place(tail), (head, joined, [])),  # "a ball on the left and a drum on the right"
    ):
        if first and second:
            relation = PLACES_RELATION.get((first, second))
            return (relation, *rest) if relation else None
    said = [i for i, w in enumerate(gap) if w in RELATIONS]
    if said:
        at, rest = said[0], [w for w in gap if w not in RELATION_PHRASE]
        if len({RELATIONS[gap[i]] for i in said}) != 1 or "it" in gap[:at]:
            return None  # two relations; "it is to the left of"
        if gap[at] in ("left", "right", "top") and gap[at + 1 : at + 2] not in ([], ["of"], ["side"], ["it"]):
            return None  # "left on a chair", "right beside": not where
        by_it = gap[at - 1 : at] == ["its"] or "it" in gap[at + 1 :]  # "to its right", "right of it", "above it"
        if "its" in gap and not by_it:
            return None  # "to the left of its ball", "under its umbrella"
        relation = RELATIONS[gap[at]]
        if by_it or {"and", "with"} & set(gap[:at]):  # "X, and to its right a Y", "X, and below a Y": said of Y
            relation = OPPOSITE[relation]
        return relation, head, rest, tail
    after = {RELATIONS[w] for w in tail if w in RELATIONS}
    if after and ("with" in gap or "its" in tail or "it" in tail):  # "X with a Y on its left": Y is left of X
        if len(after) != 1 or any(w not in RELATION_PHRASE for w in tail):
            return None
        return OPPOSITE[after.pop()], head, gap, []
    return None, head, gap, tail
