"""The procedural world: sprites, scenes, captions, parsing and datasets."""

import json
import random

import numpy as np
import pytest

from genvl.world import COLOURS, OBJECTS, parse_caption, render_scene, sample_scene, scene_captions, scene_facts
from genvl.world.captions import swapped_caption
from genvl.world.dataset import generate_scenes, scene_id, write_imagefolder
from genvl.world.sprites import glyph, sprite


def test_vocabulary_size_and_every_glyph_renders():
    assert len(OBJECTS) >= 60 and len(COLOURS) >= 8
    for name in OBJECTS:
        ink = glyph(name)[..., 3] > 0.5
        assert ink.sum() > 500, name  # a real drawing, not an empty box


@pytest.mark.parametrize("colour", sorted(COLOURS))
def test_recoloured_sprite_is_dominated_by_its_colour(colour):
    rgba = np.asarray(sprite("apple", colour, 48)).astype(float)
    visible = rgba[rgba[..., 3] > 200][:, :3]
    bright = visible[visible.sum(1) > 150]  # leave out the dark outline
    mean = bright.mean(0)
    nearest = min(COLOURS, key=lambda c: np.linalg.norm(np.array(COLOURS[c]) - mean))
    assert nearest == colour


def test_every_phrasing_parses_back_to_the_scene():
    rng = random.Random(1)
    layouts = set()
    for _ in range(400):
        scene = sample_scene(rng)
        layouts.add(scene["layout"])
        for caption in scene_captions(scene):
            assert parse_caption(caption) == scene_facts(scene), caption
    assert layouts == {"single", "pair_h", "pair_v", "count", "row"}


@pytest.mark.parametrize(
    "caption",
    [
        "two red apple",
        "a red apples on the left",
        "a red apple",
        "",
        "hello",
        "a red apple to the left of two blue cars",
    ],
)
def test_malformed_captions_do_not_parse(caption):
    assert parse_caption(caption) is None


def test_counts_and_articles():
    scene = {"layout": "count", "objects": [{"name": "cherry", "colour": "orange"}] * 3}
    assert scene_captions(scene)[0] == "three orange cherries"
    single = {"layout": "single", "objects": [{"name": "owl", "colour": "orange", "size": "large", "position": "top"}]}
    assert scene_captions(single)[0] == "a large orange owl at the top"
    assert parse_caption("an orange owl to the left of a red cow") == [
        ("cow", "red", 1, None, "right"),
        ("owl", "orange", 1, None, "left"),
    ]


def test_rendering_is_deterministic_and_resolution_configurable():
    a, b = sample_scene(random.Random(5)), sample_scene(random.Random(5))
    assert a == b
    assert np.array_equal(np.asarray(render_scene(a)), np.asarray(render_scene(b)))
    assert render_scene(a, 128).size == (128, 128)
    assert not np.array_equal(np.asarray(render_scene(a)), np.asarray(render_scene(sample_scene(random.Random(6)))))


def test_splits_never_share_scenes():
    train = {scene_id(s) for s in generate_scenes(600, seed=0, split="train")}
    test = {scene_id(s) for s in generate_scenes(300, seed=0, split="test")}
    val = {scene_id(s) for s in generate_scenes(300, seed=0, split="val")}
    assert not train & test and not train & val and not val & test


def test_imagefolder_is_deterministic(tmp_path):
    first = write_imagefolder(tmp_path / "a", 6, seed=3, split="test", resolution=32)
    second = write_imagefolder(tmp_path / "b", 6, seed=3, split="test", resolution=32)
    records = [json.loads(line) for line in (first / "metadata.jsonl").read_text().splitlines()]
    assert (first / "metadata.jsonl").read_text() == (second / "metadata.jsonl").read_text()
    assert {"file_name", "text", "captions", "scene"} <= set(records[0])
    assert records[0]["text"] == records[0]["captions"][0]
    assert (first / records[0]["file_name"]).read_bytes() == (second / records[0]["file_name"]).read_bytes()
    assert not list(tmp_path.glob("a/.*tmp*"))  # no leftovers of the temporary folder


def test_imagefolder_rendered_by_several_processes_is_the_same(tmp_path):
    one = write_imagefolder(tmp_path / "one", 20, seed=5, split="train", resolution=32)
    two = write_imagefolder(tmp_path / "two", 20, seed=5, split="train", resolution=32, workers=2)
    files = sorted(path.name for path in one.iterdir())
    assert files == sorted(path.name for path in two.iterdir()) and len(files) == 22  # + metadata and manifest
    assert all((one / name).read_bytes() == (two / name).read_bytes() for name in files)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        write_imagefolder(tmp_path / "none", 2, workers=0)
    assert not (tmp_path / "none").exists()


def test_held_out_objects_stay_out_of_default_scenes_and_can_be_required():
    from genvl.world.sprites import HELD_OUT_OBJECTS

    assert HELD_OUT_OBJECTS and not set(HELD_OUT_OBJECTS) & set(OBJECTS)
    held_out = set(HELD_OUT_OBJECTS)
    assert all(not {o["name"] for o in s["objects"]} & held_out for s in generate_scenes(500, seed=0, split="train"))
    scenes = list(generate_scenes(40, seed=0, split="test", require="robot"))
    assert all("robot" in {o["name"] for o in s["objects"]} for s in scenes)
    assert {s["layout"] for s in scenes} == {"single", "pair_h", "pair_v", "count", "row"}
    assert glyph("robot")[..., 3].sum() > 500
    for scene in scenes:  # the parser reads the new object's captions, plurals included
        for caption in scene_captions(scene):
            assert parse_caption(caption) == scene_facts(scene), caption
    with pytest.raises(ValueError, match="unknown object 'robott'; held-out ones: \\['robot'\\]"):
        next(generate_scenes(1, seed=0, split="test", require="robott"))


def test_swapped_caption_exchanges_the_two_objects():
    apple = {"name": "apple", "colour": "red", "size": "medium", "position": "left"}
    car = {"name": "car", "colour": "blue", "size": "medium", "position": "right"}
    assert swapped_caption({"layout": "pair_v", "objects": [apple, car]}) == "a blue car above a red apple"
    assert swapped_caption({"layout": "pair_h", "objects": [car, apple]}) == "a red apple to the left of a blue car"
    assert swapped_caption({"layout": "pair_h", "objects": [apple, dict(apple)]}) is None  # they look alike
    assert swapped_caption({"layout": "single", "objects": [apple]}) is None
