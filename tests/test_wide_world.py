"""The wide world: every caption word true of the geometry, style families held out of training, mirrored
scenes, original colours, backgrounds and native resolutions."""

import json
import math
import random

import numpy as np
import pytest
from PIL import Image

from genvl.cli import main
from genvl.world import parse_caption, render_scene, sample_scene, scene_captions, scene_facts
from genvl.world.backgrounds import BACKGROUND_FAMILIES, background_colours
from genvl.world.classic import sample_classic_scene
from genvl.world.dataset import generate_scenes, scene_id, write_imagefolder
from genvl.world.scenes import (
    HELD_OUT_FAMILIES,
    MIN_COLOUR_DISTANCE,
    SIZE_BANDS,
    held_out,
    mirror_scene,
    place_word,
    size_word,
)
from genvl.world.sprites import COLOURS, glyph, sprite

SCENES = [sample_scene(random.Random(f"wide-{i}")) for i in range(600)]


def centre(obj):
    x0, y0, x1, y1 = obj["bbox"]
    return (x0 + x1) / 2, (y0 + y1) / 2


def test_every_layout_family_and_count_is_drawn():
    assert {s["layout"] for s in SCENES} == {"single", "pair_h", "pair_v", "count", "row"}
    assert {s["style"]["background"] for s in SCENES} == set(BACKGROUND_FAMILIES)
    assert {s["style"]["size"] for s in SCENES} == set(SIZE_BANDS)
    assert {s["style"]["palette"] for s in SCENES} == {"words", "original"}
    assert {len(s["objects"]) for s in SCENES} == {1, 2, 3, 4}
    assert {len(s["objects"]) for s in SCENES if s["layout"] == "count"} == {2, 3, 4}


def test_objects_lie_in_the_frame_in_their_band_and_apart():
    for scene in SCENES:
        low, high = SIZE_BANDS[scene["style"]["size"]]
        for obj in scene["objects"]:
            x0, y0, x1, y1 = obj["bbox"]
            assert -0.01 <= x0 and -0.01 <= y0 and x1 <= 64.01 and y1 <= 64.01
            assert low - 0.01 <= x1 - x0 <= high + 0.01
            assert abs(obj["angle"]) <= 15
        for a, b in zip(scene["objects"], scene["objects"][1:]):
            assert math.dist(centre(a), centre(b)) >= 12


def test_size_place_and_relation_words_are_true_of_the_geometry():
    for scene in SCENES:
        objects = scene["objects"]
        caption = scene_captions(scene)[0]
        if scene["layout"] == "single":
            obj = objects[0]
            length = obj["bbox"][2] - obj["bbox"][0]
            assert obj["size"] == ("small" if length < 19.1 else "large" if length > 34.9 else None)
            assert ("small" in caption.split()) == (obj["size"] == "small")
            assert ("large" in caption.split()) == (obj["size"] == "large")
            assert obj["position"] == place_word(*centre(obj))
        elif scene["layout"] in ("pair_h", "pair_v"):
            (xa, ya), (xb, yb) = map(centre, objects)
            if scene["layout"] == "pair_h":
                assert xb - xa >= 1.6 * abs(yb - ya) and "left of" in caption
            else:
                assert yb - ya >= 1.6 * abs(xb - xa) and "above" in caption
        elif scene["layout"] == "row":
            xs = [centre(o)[0] for o in objects]
            assert xs == sorted(xs) and min(b - a for a, b in zip(xs, xs[1:])) >= 12


def test_place_and_size_words():
    assert [place_word(10, 32), place_word(50, 32), place_word(32, 10), place_word(32, 32)] == [
        "left",
        "right",
        "top",
        "centre",
    ]
    assert place_word(10, 55) == "bottom left" and place_word(55, 5) == "top right"
    assert (size_word(12), size_word(27), size_word(45)) == ("small", None, "large")


def test_every_phrasing_of_scenes_and_their_mirrors_parses_back():
    for scene in SCENES:
        for twin in (scene, mirror_scene(scene)):
            for caption in scene_captions(twin):
                assert parse_caption(caption) == scene_facts(twin), caption


def test_mirrored_scene_swaps_left_and_right_and_renders_flipped():
    swap = {"left": "right", "right": "left", "left centre": "right centre", "right centre": "left centre"}

    def swapped(place):
        if place is None:
            return None
        return " ".join(swap.get(word, word) for word in place.split()) if place not in swap else swap[place]

    changed = 0
    for scene in SCENES[:80]:
        mirrored = mirror_scene(scene)
        facts = {(n, c, k, s, swapped(p)) for n, c, k, s, p in scene_facts(scene)}
        assert facts == set(scene_facts(mirrored))
        changed += facts != set(scene_facts(scene))
        flipped = np.asarray(render_scene(scene).transpose(Image.Transpose.FLIP_LEFT_RIGHT), dtype=float)
        # the same picture up to sub-pixel placement of the sprites
        assert np.abs(flipped - np.asarray(render_scene(mirrored), dtype=float)).mean() < 12
        back = mirror_scene(mirrored)
        assert scene_facts(back) == scene_facts(scene) and scene_id(back) == scene_id(scene)
    assert changed > 20


def test_original_colours_are_captioned_without_a_colour_word():
    originals = [s for s in SCENES if s["style"]["palette"] == "original"]
    assert originals
    for scene in originals:
        assert all(obj["colour"] is None for obj in scene["objects"])
        assert not set(scene_captions(scene)[0].replace(",", " ").split()) & set(COLOURS)
    kept = np.asarray(sprite("apple", None, 48)).astype(float)
    red = kept[kept[..., 3] > 200][:, :3].mean(0)
    assert red[0] > red[1] + 40  # OpenMoji's apple stays red
    assert parse_caption("an apple at the top left") == [("apple", None, 1, None, "top left")]


def test_colour_words_stand_out_from_their_background():
    for scene in SCENES:
        for obj in scene["objects"]:
            if obj["colour"] is not None:
                ground = background_colours(scene["background"])
                usable = [c for c in COLOURS if min(math.dist(COLOURS[c], g) for g in ground) >= MIN_COLOUR_DISTANCE]
                if usable:
                    assert obj["colour"] in usable


@pytest.mark.parametrize("family", BACKGROUND_FAMILIES)
def test_each_background_family_renders(family):
    scene = sample_scene(random.Random(family), style={"background": family})
    pixels = np.asarray(render_scene(scene, 64), dtype=float)
    assert pixels.shape == (64, 64, 3)
    corner = pixels[:4, :4].mean(axis=(0, 1))
    if family == "white":
        assert corner.min() > 240
    if family == "dark":
        assert corner.max() < 100


def test_high_resolutions_are_drawn_natively():
    scene = sample_scene(random.Random(3), style={"size": "huge", "background": "white"})

    def detail(image):  # what a round trip through 64x64 loses: nearly nothing for an upscaled 64x64 image
        small = image.resize((64, 64), Image.Resampling.BICUBIC)
        back = small.resize(image.size, Image.Resampling.BICUBIC)
        return np.abs(np.asarray(image, dtype=float) - np.asarray(back, dtype=float)).mean()

    for resolution in (128, 224):
        native = render_scene(scene, resolution)
        upscaled = render_scene(scene, 64).resize((resolution, resolution), Image.Resampling.BICUBIC)
        assert native.size == (resolution, resolution)
        assert detail(native) > 2 * detail(upscaled)
    assert glyph("apple", 2).shape[0] > 1.8 * glyph("apple").shape[0]


def test_held_out_families_stay_out_of_train_and_val_only():
    train = list(generate_scenes(300, 0, "train"))
    val = list(generate_scenes(100, 0, "val"))
    test = list(generate_scenes(300, 0, "test"))
    assert not any(held_out(s) for s in train + val)
    kept_out = [s for s in test if held_out(s)]
    assert kept_out
    for key, values in HELD_OUT_FAMILIES.items():
        for value in values:
            assert any(s["style"][key] == value for s in test)
    assert list(generate_scenes(5, 0, "train")) == train[:5]  # deterministic
    with pytest.raises(ValueError, match="kept out of training"):
        next(generate_scenes(1, 0, "train", style={"background": "gradient"}))
    only_dark = list(generate_scenes(20, 0, "test", style={"background": "dark", "size": "huge"}))
    assert {(s["style"]["background"], s["style"]["size"], s["layout"]) for s in only_dark} == {
        ("dark", "huge", "single")
    }


def test_classic_world_is_still_drawn_as_before():
    first = next(generate_scenes(1, 0, "train", world="classic"))
    assert first["style"] == {"world": "classic"} and scene_id(first) == "a3b586c0aafc70d5"
    scene = sample_classic_scene(random.Random(0))
    assert not held_out(scene)
    for caption in scene_captions(scene):
        assert parse_caption(caption) == scene_facts(scene)


def test_data_scenes_cli_fixes_style_families(tmp_path, capsys):
    assert main(["data", "scenes", "--out", str(tmp_path), "--num-images", "12", "--split", "test",
                 "--background", "dark", "--palette", "original", "--quiet"]) == 0  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "test" / "metadata.jsonl").read_text().splitlines()]
    assert {(r["scene"]["style"]["background"], r["scene"]["style"]["palette"]) for r in records} == {
        ("dark", "original")
    }
    manifest = json.loads((tmp_path / "test" / "genvl_dataset.json").read_text())
    assert manifest["world"] == "wide" and manifest["style"] == {"background": "dark", "palette": "original"}
    capsys.readouterr()
    with pytest.raises(SystemExit) as usage:
        main(["data", "scenes", "--out", str(tmp_path), "--num-images", "2", "--world", "classic",
              "--background", "dark"])  # fmt: skip
    assert usage.value.code == 2
    assert "wide world only" in capsys.readouterr().err
    assert main(["data", "scenes", "--out", str(tmp_path), "--num-images", "2", "--background", "gradient"]) == 1
    err = capsys.readouterr().err
    assert "kept out of training" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "train").exists()


def test_written_split_of_the_wide_world_is_deterministic(tmp_path):
    a = write_imagefolder(tmp_path / "a", 6, seed=2, split="val")
    b = write_imagefolder(tmp_path / "b", 6, seed=2, split="val")
    assert (a / "metadata.jsonl").read_text() == (b / "metadata.jsonl").read_text()
    assert all((a / f"{i:06d}.png").read_bytes() == (b / f"{i:06d}.png").read_bytes() for i in range(6))
