"""Questions as people type them: the reader reads the world's own phrasings (those training never saw too) as
meant, reads other everyday phrasings, leaves unread what it cannot settle, and the pipeline asks what it reads in
training's phrasing."""

import json
import random

import pytest

from genvl.pipelines.caption import CaptionPipeline
from genvl.world.questions import FAMILIES, PREFIXES, SUFFIXES, answerable
from genvl.world.scenes import sample_scene
from genvl.world.sprites import ALL_OBJECTS
from genvl.world.typed_questions import asked_question, read_question

NAME_OF = {plural: name for name, (_, plural) in ALL_OBJECTS.items()}
SIDES = {"to the left of": "left", "to the right of": "right", "above": "above", "below": "below"}


def meant(kind: str, slots: dict) -> dict:
    """The reading a question of `kind` with `slots` (as `genvl.world.questions` fills them) means."""
    if kind == "biggest":
        return {"kind": kind, "name": None, "plural": False, "relation": None}
    if kind == "colour":
        name = NAME_OF.get(slots["name"], slots["name"])  # "what colour are the clocks?" asks of clocks
        return {"kind": kind, "name": name, "plural": slots["is"] == "are", "relation": None}
    if kind == "count":
        return {"kind": kind, "name": NAME_OF[slots["plural"]], "plural": True, "relation": None}
    if kind == "relation":
        return {"kind": kind, "name": slots["name"], "plural": False, "relation": SIDES[slots["relation"]]}
    return {"kind": kind, "name": slots["a_name"].split()[-1], "plural": False, "relation": None}


def test_every_phrasing_of_the_world_reads_as_meant_wrapped_or_not():
    """Every template of every family (training's and both held-out ones), filled from 300 scenes' questions and
    wrapped in each of training's prefixes and suffixes, reads as the question it is, or not at all; training's
    own phrasings all read."""
    rng = random.Random(0)
    read = unread = 0
    for _ in range(300):
        scene = sample_scene(rng)
        for kind, found in answerable(scene).items():
            for slots, _ in found:
                for family, table in FAMILIES.items():
                    for template in table[kind]:
                        for prefix, suffix in ((rng.choice(PREFIXES), rng.choice(SUFFIXES)), ("", "")):
                            text = " ".join(w for w in (prefix, template.format(**slots), suffix) if w)
                            reading = read_question(text)
                            if reading is None:
                                assert family != "seen", text
                                unread += 1
                                continue
                            assert reading == meant(kind, slots), (text, reading)
                            read += 1
    assert read > 10_000 and unread < 0.05 * read, (read, unread)


@pytest.mark.parametrize(
    "text, asked",
    [
        ("What's the colour of the apple", "what colour is the apple?"),
        ("whats the color of those apples pls", "what colour are the apples?"),
        ("The kitten - what color is it?", "what colour is the cat?"),
        ("What is the bike's colour?", "what colour is the bicycle?"),
        ("How many cats do you see?", "how many cats are there?"),
        ("could you count the aeroplanes for me", "how many airplanes are there?"),
        ("number of fish?", "how many fishes are there?"),
        ("left of the car?", "what is to the left of the car?"),
        ("Which thing is on the right side of the dog?", "what is to the right of the dog?"),
        ("what's on top of the horse", "what is above the horse?"),
        ("which object is underneath the lorry", "what is below the truck?"),
        ("any frogs in the picture?", "is there a frog?"),
        ("Is a light bulb present in the image?", "is there a bulb?"),
        ("I'm looking for an owl - is there one?", "is there an owl?"),
        ("yes or no: is there a cat?", "is there a cat?"),
        ("is there at least one duck here", "is there a duck?"),
        ("Of all the objects, which one is the largest?", "what is the biggest object?"),
        ("What object is bigger than all the others?", "what is the biggest object?"),
    ],
)
def test_everyday_phrasings_are_asked_as_training_asked_them(text, asked):
    assert asked_question(text) == asked


def test_a_question_in_trainings_phrasing_is_asked_as_typed():
    assert (
        asked_question("quick question: the apples: how many in the scene?")
        == "quick question: the apples: how many in the scene?"
    )
    assert (
        asked_question("please, what color are the cats in the image?")
        == "please, what color are the cats in the image?"
    )
    assert asked_question("tell me the colour of the cats") == "what colour are the cats?"  # a held-out phrasing


@pytest.mark.parametrize(
    "text",
    [
        "is the apple red?",  # a colour checked, not asked
        "how many red apples are there?",  # a colour beside the object: the answer may differ
        "is there a white cat?",
        "are there two cats?",
        "is there exactly one cat?",  # a count, asked as a yes or no
        "what colour is the cat on the left?",  # two kinds
        "how many cats are on the left?",
        "what colour is the biggest object?",
        "is there anything to the left of the dog?",
        "which is bigger, the cat or the dog?",  # two objects
        "is the cat above the dog?",
        "is there a cat to the left of the dog?",
        "what colour is the cat's hat?",
        "what is the smallest object?",  # words the world does not ask
        "where is the cat?",
        "what is next to the cat?",
        "what's right next to the cat",
        "how big is the cat?",
        "what is the cat doing?",
        "which cat is the biggest?",
        "is the cat the biggest?",
        "is there no cat?",  # negations
        "isn't there a cat?",
        "which colour isn't the cat?",
        "what is the cat to the left of?",  # the object before its side: the other way round
        "which object is to the left of the cats",  # a relation of several
        "how many objects are there?",  # no object, or none named
        "what is in the picture?",
        "describe the image",
        "many cats?",
        "is there a cat/dog?",  # a symbol
        "",
    ],
)
def test_what_the_reader_cannot_settle_is_asked_as_typed(text):
    assert read_question(text) is None and asked_question(text) is None


def test_the_pipeline_asks_in_trainings_phrasing_only_with_its_question_world(tiny_pipeline_dir, scene_images):
    pipe = CaptionPipeline.from_pretrained(tiny_pipeline_dir)
    images = scene_images[:2]
    typed = ["How many cats do you see?", "where is the cat?"]
    assert pipe.config.question_world is None  # a captioner: questions as typed
    assert pipe(images, question=typed, max_new_tokens=3).questions == [
        "how many cats do you see?",
        "where is the cat?",
    ]
    world = CaptionPipeline(pipe.model, pipe.tokenizer, pipe.image_processor, question_world="genvl")
    out = world(images, question=typed, max_new_tokens=3)
    assert out.questions == ["how many cats are there?", "where is the cat?"]
    same = pipe(images, question=["how many cats are there?", "where is the cat?"], max_new_tokens=3)
    assert out.captions == same.captions
    assert world(images, question=typed, max_new_tokens=3, rewrite_questions=False).questions == [
        "how many cats do you see?",
        "where is the cat?",
    ]
    with pytest.raises(ValueError, match="question_world must be null or one of genvl"):
        CaptionPipeline(pipe.model, pipe.tokenizer, pipe.image_processor, question_world="photos")


def test_the_setting_is_saved_and_the_shipped_model_has_it(tiny_pipeline_dir, tmp_path):
    from genvl.pipelines.defaults import shipped_pipeline

    pipe = CaptionPipeline.from_pretrained(tiny_pipeline_dir)
    CaptionPipeline(pipe.model, pipe.tokenizer, pipe.image_processor, question_world="genvl").save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["question_world"] == "genvl"
    assert CaptionPipeline.from_pretrained(tmp_path).config.question_world == "genvl"
    assert CaptionPipeline.from_pretrained(shipped_pipeline("genvl-vqa-small")).config.question_world == "genvl"
    assert CaptionPipeline.from_pretrained(shipped_pipeline("genvl-caption-wide")).config.question_world is None


def test_genvl_ask_says_what_it_asked(capsys):
    from genvl.cli import main
    from genvl.pipelines.defaults import shipped_pipeline

    image = str(
        shipped_pipeline("genvl-vqa-small").parent.parent / "examples" / "images" / "three_green_butterflies.png"
    )
    assert main(["ask", image, "How many butterflies do you see?", "--json", "--quiet"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["question"] == "how many butterflies do you see?" and record["answer"] == "three"
    assert record["asked"] == "how many butterflies are there?"
    assert main(["ask", image, "How many butterflies do you see?", "--json", "--quiet", "--no-rewrite"]) == 0
    assert json.loads(capsys.readouterr().out)["asked"] == "how many butterflies do you see?"
