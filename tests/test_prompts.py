"""The prompt grammar (`genvl.world.prompts`), its judging (`judge_request`) and the free-form suite."""

import random
import re

import pytest
import torch

from genvl.cli.image import DEFAULT_JUDGE
from genvl.evaluation.free_prompts import evaluate_free_prompts, evaluate_prompts, free_prompt_suite, suite_scores
from genvl.evaluation.judge import GENEVAL_CATEGORIES, detect_images, judge_request
from genvl.io.imagefolder import load_images, read_metadata
from genvl.models.judge import Detection, SceneJudge
from genvl.pipelines.text_to_image import TextToImagePipeline
from genvl.training.data import with_prompts
from genvl.world.captions import parse_caption, scene_captions, scene_facts
from genvl.world.classic import sample_classic_scene
from genvl.world.dataset import write_imagefolder
from genvl.world.prompts import (
    GENEVAL_LAYOUTS,
    classic_caption,
    classic_scene,
    parse_prompt,
    phrase_request,
    request_holds,
    scene_request,
    swapped_scene,
    training_prompts,
)
from genvl.world.scenes import mirror_scene, sample_scene

from .conftest import get_dummy_unclip_components
from .test_bad_input import assert_one_line_error, run

HELD_OUT_WORDS = re.compile(r"\b(drawing|on the (left|right) of|exactly)\b", re.IGNORECASE)


def scenes(count=200, seed=0):
    rng = random.Random(seed)
    return [sample_classic_scene(rng) if i % 2 else sample_scene(rng) for i in range(count)]


def test_every_request_drawn_from_a_scene_holds_of_it_and_of_no_other_kind_of_scene():
    rng = random.Random(1)
    pool = scenes()
    for scene in pool:
        others = [s for s in pool if s["layout"] != scene["layout"] and len(s["objects"]) != len(scene["objects"])]
        for category in GENEVAL_LAYOUTS[scene["layout"]]:
            for detail in (False, True):
                request = scene_request(scene, category, rng, detail=detail)
                assert request_holds(request, scene), (request, scene)
                assert not any(request_holds(request, other) for other in others[:20])
    with pytest.raises(ValueError, match="cannot be asked for as 'counting'"):
        scene_request(pool[1] if pool[1]["layout"] == "single" else sample_classic_scene(random.Random(3)), "counting")


def test_a_request_says_exactly_what_it_asks_for():
    bike = {"name": "bicycle", "colour": "red", "size": "large", "position": "centre", "bbox": [16, 16, 48, 48]}
    dog = {**bike, "name": "dog", "colour": "blue"}
    single = {"layout": "single", "objects": [bike]}
    ask = lambda colour=None, count=1: {  # noqa: E731
        "category": "colours",
        "objects": [{"name": "bicycle", "colour": colour, "count": count, "size": None, "place": None}],
        "relation": None,
    }
    assert request_holds(ask("red"), single) and request_holds(ask(), single)
    assert not request_holds(ask("blue"), single)  # another colour
    assert not request_holds(ask("red", count=2), single)  # "two red bicycles" are not one
    assert not request_holds(ask("red"), {"layout": "pair_h", "objects": [bike, dog]})  # and nothing else
    assert not request_holds(ask("red"), {"layout": "count", "objects": [bike, bike]})  # "a" is exactly one


def test_a_relation_holds_only_the_right_way_round_and_mirrors_with_the_scene():
    rng = random.Random(2)
    pairs = [s for s in scenes(400) if s["layout"] == "pair_h"]
    assert pairs
    for scene in pairs:
        request = scene_request(scene, "position", rng)
        assert request["relation"] in ("left", "right") and request_holds(request, scene)
        assert not request_holds(request, mirror_scene(scene))


def test_training_text_never_takes_a_held_out_phrasing_and_held_out_prompts_always_do():
    rng = random.Random(3)
    seen_framings = set()
    for scene in scenes(300):
        for text, request, twin in training_prompts(scene, rng, 4):
            assert not HELD_OUT_WORDS.search(text) and request_holds(request, scene)
        for category in GENEVAL_LAYOUTS[scene["layout"]]:
            request = scene_request(scene, category, rng)
            text, families = phrase_request(request, rng, held_out=False)
            assert not HELD_OUT_WORDS.search(text)
            seen_framings.add(families["framing"])
            text, families = phrase_request(request, rng, held_out=True)
            assert HELD_OUT_WORDS.search(text), text
    assert seen_framings == {"none", "photo", "image", "picture"}


def test_phrasings_say_counts_relations_and_synonyms_as_people_do():
    rng = random.Random(4)
    count = {"layout": "count", "objects": [{"name": "rabbit", "colour": "red", "position": "row"}] * 3}
    request = scene_request(count, "counting")
    texts = {phrase_request(request, rng, held_out=None)[0].lower().rstrip(".") for _ in range(300)}
    for form in ("three rabbits", "3 rabbits", "exactly three rabbits", "three bunnies", "a photo of 3 bunnies"):
        assert form in texts, form
    assert not any("rabbit " in t or t.endswith("rabbit") for t in texts)  # always the plural
    pair = sample_classic_scene(random.Random(0))
    while pair["layout"] != "pair_v":
        pair = sample_classic_scene(rng)
    words = {phrase_request(scene_request(pair, "position", rng), rng)[1]["relation"] for _ in range(200)}
    assert words == {"above", "over", "below", "under", "beneath"}


def detection(name, colour, x, y=32.0, score=0.9):
    return Detection(name=name, colour=colour, x=x, y=y, score=score)


def request(category, *objects, relation=None):
    asked = [{"name": n, "colour": c, "count": k, "size": None, "place": None} for n, c, k in objects]
    return {"category": category, "objects": asked, "relation": relation}


def test_judge_request_applies_genevals_rules_and_the_strict_reading():
    red_bike = request("colours", ("bicycle", "red", 1))
    assert judge_request(red_bike, [detection("bicycle", "red", 30)]) == {"colours": True, "strict": True}
    two = [detection("bicycle", "red", 20), detection("bicycle", "red", 44, score=0.5)]
    assert judge_request(red_bike, two) == {"colours": True, "strict": False}  # GenEval allows a second one
    assert judge_request(red_bike, [detection("bicycle", "blue", 30)]) == {"colours": False, "strict": False}
    with_dog = [detection("bicycle", "red", 20), detection("dog", "red", 44)]
    assert judge_request(red_bike, with_dog) == {"colours": True, "strict": False}
    three_cats = request("counting", ("cat", None, 3))
    cats = [detection("cat", "red", x) for x in (10, 30, 50)]
    assert judge_request(three_cats, cats)["counting"] and not judge_request(three_cats, cats[:2])["counting"]
    assert not judge_request(three_cats, [*cats, detection("cat", "red", 60)])["counting"]  # counts are exact
    left = request("position", ("dog", None, 1), ("car", None, 1), relation="left")
    dog_car = [detection("dog", "red", 15), detection("car", "blue", 45)]
    assert judge_request(left, dog_car) == {"position": True, "strict": True}
    right = request("position", ("dog", None, 1), ("car", None, 1), relation="right")
    assert judge_request(right, dog_car) == {"position": False, "strict": False}
    above = request("position", ("dog", None, 1), ("car", None, 1), relation="above")
    assert judge_request(above, [detection("dog", "red", 30, 10), detection("car", "red", 30, 50)])["position"]


def test_the_free_suite_pairs_each_request_with_a_seen_and_a_held_out_phrasing(tmp_path):
    data = write_imagefolder(tmp_path, 120, seed=5, split="test", resolution=64, world="classic")
    records = read_metadata(data)
    rows = free_prompt_suite(records, 6, seed=0)
    assert rows == free_prompt_suite(records, 6, seed=0)  # the same suite on every run
    assert {row["request"]["category"] for row in rows} == set(GENEVAL_CATEGORIES)
    for seen, unseen in zip(rows[::2], rows[1::2]):
        assert seen["request"] is unseen["request"] and (seen["held_out"], unseen["held_out"]) == (False, True)
        assert request_holds(seen["request"], seen["record"]["scene"])
    # the shipped judge finds every request in its own scene's render: the suite's ceiling
    judge = SceneJudge.from_pretrained(DEFAULT_JUDGE).eval()
    real = load_images(data, [row["record"] for row in rows], "file_name", 64)
    judged = [judge_request(row["request"], found) for row, found in zip(rows, detect_images(judge, real))]
    report = suite_scores(rows, judged)
    assert report["all"]["images"] == len(rows) == 2 * report["seen"]["images"]
    assert report["all"]["overall"] >= 0.95 and report["all"]["strict_single_object"] >= 0.95


def test_evaluate_free_prompts_reports_seen_and_held_out_phrasings(tmp_path):
    data = write_imagefolder(tmp_path, 40, seed=6, split="test", resolution=32, world="classic")
    pipeline = TextToImagePipeline(**get_dummy_unclip_components())
    pipeline.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    judge = SceneJudge(object_names=["apple", "car", "cat"], colour_names=["blue", "red"], channels=(8, 8, 16))
    report = evaluate_free_prompts(
        pipeline, judge.eval(), data, 2, 2, batch_size=8, prior_num_inference_steps=2, decoder_num_inference_steps=2
    )
    assert report["images"] == 2 * report["prompts"] and report["generated"]["all"]["images"] == report["images"]
    for group in ("seen", "held_out"):
        assert report["generated"][group]["images"] == report["images"] // 2
        assert 0 <= report["generated"][group]["overall"] <= 1
    assert set(report["examples"]) == set(GENEVAL_CATEGORIES)
    with pytest.raises(ValueError, match="per_category"):
        evaluate_free_prompts(pipeline, judge, data, 0)


def test_parse_prompt_reads_every_phrasing_back_held_out_families_included():
    rng = random.Random(5)

    def key(request):
        return sorted((o["name"], o["colour"], o["count"], o["size"], o["place"]) for o in request["objects"])

    def same(read, request, scene):  # the same objects and details, true and false of the same scenes
        mirrored = swapped_scene(scene)
        return (
            read is not None
            and key(read) == key(request)
            and request_holds(read, scene) == request_holds(request, scene)
            and (mirrored is None or request_holds(read, mirrored) == request_holds(request, mirrored))
        )

    for scene in scenes(300):
        for text, request, _ in training_prompts(scene, rng, 4):
            assert same(parse_prompt(text), request, scene), text
        for category in GENEVAL_LAYOUTS[scene["layout"]]:
            request = scene_request(scene, category, rng)
            text = phrase_request(request, rng, held_out=True)[0]
            assert same(parse_prompt(text), request, scene), text
    assert parse_prompt("A photo of 2 bikes.")["objects"][0] == {
        "name": "bicycle",
        "colour": None,
        "count": 2,
        "size": None,
        "place": None,
    }
    for text in ("a cat on a mat", "two apple", "a apples", "a dog and a dog", "a large dog and a cat", "dogs"):
        assert parse_prompt(text) is None, text


def test_classic_caption_is_the_caption_of_a_classic_scene_the_prompt_asks_for():
    rng = random.Random(11)
    pool = [sample_classic_scene(rng) for _ in range(300)]
    for scene in pool:
        texts = [text for text, _, _ in training_prompts(scene, rng, 4)]
        texts += [
            phrase_request(scene_request(scene, c, rng), rng, held_out=True)[0]
            for c in GENEVAL_LAYOUTS[scene["layout"]]
        ]
        for text in texts:
            request = parse_prompt(text)
            state = rng.getstate()
            drawn = classic_scene(request, rng)
            rng.setstate(state)
            caption = classic_caption(text, rng)
            assert request_holds(request, drawn), (text, drawn)  # what the prompt says, and nothing else
            assert caption == scene_captions(drawn)[0] and parse_caption(caption) == scene_facts(drawn), text
        for caption in scene_captions(scene):  # the world's own captions are read as their canonical one
            assert classic_caption(caption, rng) == scene_captions(scene)[0]


def test_classic_caption_draws_what_a_prompt_leaves_open_and_keeps_what_it_says():
    drawn = {classic_caption("a red bicycle", random.Random(seed)) for seed in range(40)}
    assert len(drawn) > 5 and all(text.startswith(("a large red bicycle ", "a small red bicycle ")) for text in drawn)
    assert len({classic_caption("A photo of a bike.", random.Random(seed)).split()[2] for seed in range(40)}) > 3
    pairs = {classic_caption("a dog and a car", random.Random(seed)) for seed in range(40)}
    assert {"above", "below"} & {word for text in pairs for word in text.split()} and any("left" in t for t in pairs)
    below = classic_caption("a red dog beneath a blue car", random.Random(0))
    assert below == "a blue car above a red dog"
    assert classic_caption("exactly 3 green cats", random.Random(0)) == "three green cats"
    row = classic_caption("a cat, a dog and a cow", random.Random(0))
    assert re.findall(r"cat|dog|cow", row) == ["cat", "dog", "cow"]  # named left to right
    # no classic scene holds four of a kind, a corner, four objects or two groups; and other text is not read
    for text in ("four cats", "a bike at the top left", "a cat, a dog, a cow and a pig", "two cats and a dog", "hi"):
        assert classic_caption(text, random.Random(0)) is None, text


def test_evaluate_prompts_judges_each_prompt_over_its_seeds(tmp_path):
    pipeline = TextToImagePipeline(**get_dummy_unclip_components())
    pipeline.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    judge = SceneJudge(object_names=["apple", "car", "cat"], colour_names=["blue", "red"], channels=(8, 8, 16))
    steps = dict(prior_num_inference_steps=2, decoder_num_inference_steps=2)
    report = evaluate_prompts(pipeline, judge.eval(), ["a red car", "two cats"], 3, batch_size=8, seed=4, **steps)
    first, second = report["prompts"]
    assert first["request"]["category"] == "colours" and second["request"]["category"] == "counting"
    assert (
        first["images"] == 3 and first["seeds"] == [4, 6] and 0 <= first["colours"] <= 1 and 0 <= first["strict"] <= 1
    )
    with pytest.raises(ValueError, match="'a cat on a mat' is not one the world's words can read"):
        evaluate_prompts(pipeline, judge, ["a cat on a mat"], 1)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--prompt", "a cat on a mat"], "not a prompt the world's words can read"),
        (["--prompt", "a red car", "--data", "data/world/test"], "either --data"),
        ([], "either --data"),
        (["--suite", "free", "--data", "data/world/test", "--stages"], "drop --stages"),
    ],
)
def test_eval_t2i_prompt_usage_errors_come_before_any_model_loads(argv, fragment, tmp_path, capsys):
    code, _, err = run(["eval", "t2i", "--model", str(tmp_path / "no_such_model"), *argv], capsys)
    assert code == 2
    assert_one_line_error(err, fragment)


def test_with_prompts_adds_true_prompts_from_the_training_families_only(tmp_path):
    records = read_metadata(write_imagefolder(tmp_path, 30, seed=8, split="train", resolution=32, world="classic"))
    extended = with_prompts(records, 3, 0, "text")
    assert with_prompts(records, 3, 0, "text") == extended and with_prompts(records, 0, 0, "text") is records
    for record, before in zip(extended, records):
        assert record["captions"][:3] == before["captions"] and len(record["captions"]) == 6
        for text in record["captions"][3:]:
            assert not HELD_OUT_WORDS.search(text) and request_holds(parse_prompt(text), record["scene"]), text
    with pytest.raises(ValueError, match="needs a scene graph"):
        with_prompts([{"file_name": "a.png", "text": "a cat"}], 1, 0, "text")
