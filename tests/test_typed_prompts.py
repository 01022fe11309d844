"""Prompts as people type them, beyond the grammar: `genvl.world.typed.read_prompt`."""

import random

import pytest

from genvl.models.safety import named_concepts
from genvl.world.classic import sample_classic_scene
from genvl.world.prompts import classic_caption, parse_prompt, request_holds, training_prompts
from genvl.world.typed import read_prompt


def said(request: dict) -> tuple:
    """The objects (name, colour, count) and relation of a request, the pair's order made one way."""
    objects = [(o["name"], o["colour"], o["count"]) for o in request["objects"]]
    relation = request["relation"]
    if relation and objects[0] > objects[1]:
        objects, relation = (
            objects[::-1],
            {"left": "right", "right": "left", "above": "below", "below": "above"}[relation],
        )
    return sorted(objects), relation


def one(name, colour=None, count=1):
    return (name, colour, count)


@pytest.mark.parametrize(
    "prompt, objects, relation",
    [
        ("red bicycle", [one("bicycle", "red")], None),
        ("Yellow Banana!!", [one("banana", "yellow")], None),
        ("mushroom", [one("mushroom")], None),
        ("please draw me a rocket", [one("rocket")], None),
        ("can you make a picture of two cats?", [one("cat", None, 2)], None),
        ("a tulip that is red", [one("tulip", "red")], None),
        ("a hammer colored grey", [one("hammer", "gray")], None),
        ("a gray-coloured elephant", [one("elephant", "gray")], None),
        ("a crimson heart", [one("heart", "red")], None),
        ("light bulb, yellow", [one("bulb", "yellow")], None),
        ("a couple of umbrellas in purple", [one("umbrella", "purple", 2)], None),
        ("3 hats, grey", [one("hat", "gray", 3)], None),
        ("two fish", [one("fish", None, 2)], None),
        ("the two cats", [one("cat", None, 2)], None),
        ("my son wants a green frog!!", [one("frog", "green")], None),
        ("For my class: three owls, please", [one("owl", None, 3)], None),
        ("draw three owls for my classroom", [one("owl", None, 3)], None),
        ("flat vector icon of a pink pig", [one("pig", "pink")], None),
        ("Cactus. Green.", [one("cactus", "green")], None),
        ("3x red apple", [one("apple", "red", 3)], None),
        ("a blue T-shirt", [one("shirt", "blue")], None),
        ("apple, pear, lemon - product shot", [one("apple"), one("pear"), one("lemon")], None),
        ("red umbrella, studio lighting, 8k", [one("umbrella", "red")], None),
        ("draw a bee a tulip and a sun", [one("bee"), one("tulip"), one("sun")], None),
        ("guitar drum bell", [one("guitar"), one("drum"), one("bell")], None),
        ("a cat, and to the right a dog", [one("cat"), one("dog")], "left"),
        ("a sun and below it a house", [one("house"), one("sun")], "below"),
        ("2 pink pigs, digital art, high quality, 4k", [one("pig", "pink", 2)], None),
        ("a cat next to a chair", [one("cat"), one("chair")], None),
        ("moon & star", [one("moon"), one("star")], None),
        ("apple, banana, pear", [one("apple"), one("banana"), one("pear")], None),
        ("blue bird, yellow sun", [one("bird", "blue"), one("sun", "yellow")], None),
        ("a pear, green, and a lemon, yellow", [one("pear", "green"), one("lemon", "yellow")], None),
        ("a kitty on the left of a chair", [one("cat"), one("chair")], "left"),
        ("a bird on top of a house", [one("bird"), one("house")], "above"),
        ("a yellow bus underneath a blue helicopter", [one("bus", "yellow"), one("helicopter", "blue")], "below"),
        ("a car with a dog on its left", [one("car"), one("dog")], "right"),
        ("a tree, and to its right a house", [one("house"), one("tree")], "right"),
        ("a tree with a bird above it", [one("bird"), one("tree")], "above"),
        ("on the left a pencil, on the right a book", [one("book"), one("pencil")], "right"),
        ("a red ball on the left and a blue drum on the right", [one("ball", "red"), one("drum", "blue")], "left"),
    ],
)
def test_prompts_as_people_type_them_are_read(prompt, objects, relation):
    assert said(read_prompt(prompt)) == said(
        {"objects": [dict(zip(("name", "colour", "count"), o)) for o in objects], "relation": relation}
    )


@pytest.mark.parametrize(
    "prompt",
    [
        "a red bicycle in the rain",  # a scene the world cannot draw
        "a wooden chair",  # a material
        "a dog chasing a cat",  # an action
        "a few apples",  # a vague count
        "apples",  # how many?
        "a street without cars",  # a negation
        "a bicycle bigger than a car",  # a comparison
        "a big dog next to a tiny cat",  # sizes of two kinds
        "a black cat",  # a colour the world lacks
        "a white cat on a white background",
        "a red blue car",  # two colours for one object
        "I want a wooden chair",
        "make a giraffe next to a car",  # an object the world lacks
        "a cake for two",
        "a apples",
        # two object words with nothing between them: one thing named by both
        "an apple tree",
        "a cherry red car",
        "train a dog",
        # negations and questions around an asking word
        "Don't draw a cat",
        "don\u2019t draw a cat",
        "Who would want a cat?",
        "draw a giraffe and then draw a cat",
        # what a comma or a symbol holds is not a style tag
        "a cat, a giraffe",
        "apple, banana, kiwi",
        "a cat/dog",
        # 'left', 'right' and 'its' that do not say where
        "a hat left on a chair",
        "a cat right next to a dog",
        "a frog under its umbrella",
        "a dog to the left of its ball",
        # a colour that may be another object's, or several objects'
        "a cat and a dog that are brown",
        "a cat in red hat",
        "apple, orange, pear",
        # an object word naming how something is drawn, a key to something, number ranges
        "a cat, pencil sketch",
        "a key to the house",
        "2-3 cats",
        "one of the two cats",
        "a dog and a dog",
        "hello",
        "",
    ],
)
def test_prompts_asking_what_the_world_cannot_draw_are_not_read(prompt):
    assert read_prompt(prompt) is None
    assert classic_caption(prompt, random.Random(0)) is None  # drawn as typed


def test_the_grammar_reads_first_and_every_training_phrasing_reads_as_it_does():
    rng = random.Random(3)
    for _ in range(200):
        scene = sample_classic_scene(rng)
        for text, _, _ in training_prompts(scene, rng, 3):
            assert read_prompt(text) == parse_prompt(text) is not None


def test_a_typed_prompt_becomes_the_caption_of_a_scene_it_asks_for():
    rng = random.Random(0)
    for prompt in ("red bicycle", "a cat next to a chair", "a tree with a bird above it", "2 pink pigs, digital art"):
        caption = classic_caption(prompt, rng)
        assert caption is not None and request_holds(read_prompt(prompt), _scene_of(caption, rng))


def _scene_of(caption: str, rng: random.Random) -> dict:
    """The classic scene whose canonical caption `caption` is."""
    from genvl.world.prompts import classic_scene

    return classic_scene(parse_prompt(caption), rng)


@pytest.mark.parametrize(
    "typed",
    [
        "a red apple\u200b",
        "🍎 a red apple",
        "ａ ｒｅｄ ａｐｐｌｅ",
        "a réd apple",
        "a red apple ❤️",
        "A red apple\u2060.",
    ],
)
def test_typographic_and_invisible_characters_are_read_past(typed):
    # each was left unread (and drawn as typed) for one character outside plain letters
    assert read_prompt(typed) == read_prompt("a red apple") is not None
    assert named_concepts(typed.replace("apple", "snake").replace("ａｐｐｌｅ", "ｓｎａｋｅ"), ["snake"]) == ["snake"]
