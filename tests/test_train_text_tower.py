"""genvl/recipes/train_text_tower.py: a text tower trained on the prompt grammar against locked image towers."""

import json
import re

import pytest
import torch
from transformers import CLIPModel

from genvl.io.imagefolder import read_metadata
from genvl.models.clip import ClipArchitecture, build_clip, train_clip_tokenizer
from genvl.world.dataset import write_imagefolder
from genvl.world.prompts import request_holds, scene_request, swapped_scene

from .conftest import TINY_CLIP
from .scripts import recipe

train_text_tower = recipe("train_text_tower")
HELD_OUT_WORDS = re.compile(r"\b(drawing|on the (left|right) of|exactly)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_tower")
    data = write_imagefolder(root / "world", 40, seed=2, split="train", resolution=32, world="classic")
    return root, data


def test_every_training_text_is_true_of_its_scene_and_every_twin_of_the_swapped_scene(world):
    _, data = world
    records = read_metadata(data)
    texts, requests, twins, phrasings = train_text_tower.text_table(records, 6, seed=0)
    assert phrasings.shape == (len(records), 9)  # three captions and six more phrasings each
    for record, row in zip(records, phrasings.tolist()):
        scene, mirrored = record["scene"], swapped_scene(record["scene"])
        for text in row:
            assert request_holds(requests[text], scene) and not HELD_OUT_WORDS.search(texts[text])
            if twins[text] >= 0:
                twin = int(twins[text])
                assert request_holds(requests[twin], mirrored) and not request_holds(requests[twin], scene)
                words = [sorted(re.findall(r"\w+", texts[t].lower())) for t in (twin, text)]
                assert words[0] == words[1] and texts[twin] != texts[text]  # the same words, reordered
    assert (twins >= 0).any()


def test_truth_is_request_holds_for_every_pair(world):
    _, data = world
    records = read_metadata(data)
    scenes = [r["scene"] for r in records]
    texts, requests, _, phrasings = train_text_tower.text_table(records, 4, seed=1)
    truth = train_text_tower.Truth(requests, scenes)
    rows, columns = phrasings[:, 3], torch.arange(len(records))
    expected = torch.tensor([[float(request_holds(requests[t], scenes[c])) for c in columns] for t in rows.tolist()])
    assert torch.equal(truth(rows, columns, scenes), expected)
    # a partial description is true of more scenes than its own: "a cat" of a cat of any colour anywhere
    single = next(scene for scene in scenes if scene["layout"] == "single")
    other = {**single, "objects": [{**single["objects"][0], "colour": "zz", "position": "elsewhere"}]}
    name_only = [scene_request(single, "single_object")]
    match = train_text_tower.Truth(name_only, [single, other])(torch.tensor([0]), torch.arange(2), [single, other])
    assert match.tolist() == [[1.0, 1.0]]
    colour = [scene_request(single, "colours")]
    match = train_text_tower.Truth(colour, [single, other])(torch.tensor([0]), torch.arange(2), [single, other])
    assert match.tolist() == [[1.0, 0.0]]


def test_texts_then_twins_orders_the_gathered_rows():
    gathered = torch.arange(8)  # process 0: texts 0 1, twins 2 3; process 1: texts 4 5, twins 6 7
    assert train_text_tower.texts_then_twins(gathered, 2).tolist() == [0, 1, 4, 5, 2, 3, 6, 7]


def tiny_clip(path, seed):
    torch.manual_seed(seed)
    tokenizer = train_clip_tokenizer(["a red apple", "two blue cars"], 300, 16)
    build_clip(ClipArchitecture(**TINY_CLIP), tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_the_text_tower_trains_against_locked_image_towers(world, tmp_path):
    root, data = world
    (tmp_path / "clip.json").write_text(json.dumps(TINY_CLIP))
    image_tower, order_tower = tiny_clip(tmp_path / "image", 0), tiny_clip(tmp_path / "order", 1)
    out = tmp_path / "run"
    argv = ["--train_data_dir", str(data), "--output_dir", str(out), "--resolution", "32", "--train_batch_size", "8"]
    argv += ["--max_train_steps", "3", "--lr_warmup_steps", "1", "--checkpointing_steps", "2", "--logging_steps", "1"]
    argv += ["--architecture", str(tmp_path / "clip.json"), "--vocab_size", "300", "--prompts_per_scene", "3"]
    losses = train_text_tower.main(argv + ["--image_tower", str(image_tower), "--order_tower", str(order_tower)])
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    trained, order = CLIPModel.from_pretrained(out), CLIPModel.from_pretrained(out / "order_clip")
    locked, order_locked = CLIPModel.from_pretrained(image_tower), CLIPModel.from_pretrained(order_tower)
    for model, source in ((trained, locked), (order, order_locked)):
        for name, weight in source.vision_model.state_dict().items():
            assert torch.equal(model.vision_model.state_dict()[name], weight), name  # the image towers are locked
        assert torch.equal(model.visual_projection.weight, source.visual_projection.weight)
    for name, weight in trained.text_model.state_dict().items():  # one text tower, two projections
        assert torch.equal(order.text_model.state_dict()[name], weight)
    assert not torch.equal(trained.text_projection.weight, order.text_projection.weight)
    assert not torch.equal(
        trained.text_model.embeddings.token_embedding.weight[:20],
        locked.text_model.embeddings.token_embedding.weight[:20],
    )
    (tmp_path / "wide.json").write_text(json.dumps({**TINY_CLIP, "vision_hidden_size": 64}))
    wide = argv + ["--architecture", str(tmp_path / "wide.json"), "--output_dir", str(tmp_path / "bad")]
    with pytest.raises(ValueError, match="--image_tower .* not the one --architecture describes"):
        train_text_tower.main(wide + ["--image_tower", str(image_tower)])


def test_filler_words_go_into_a_text_and_its_twin_at_the_same_place():
    class Args:
        seed, filler_words = 0, 1.0

    strings = ["a dog left of a car", "two cats", "a car left of a dog"]  # rows 0 and 1, then row 0's twin
    out = train_text_tower.with_filler_words(strings, torch.tensor([0]), Args, step=3, first_row=0)
    assert out == train_text_tower.with_filler_words(strings, torch.tensor([0]), Args, step=3, first_row=0)
    added = [set(o.split()) - set(s.split()) for o, s in zip(out, strings)]
    assert all(len(words) == 1 for words in added) and added[0] == added[2]
    assert out[0].split().index(next(iter(added[0]))) == out[2].split().index(next(iter(added[2])))
    Args.filler_words = 0.0
    assert train_text_tower.with_filler_words(strings, torch.tensor([0]), Args, step=3, first_row=0) == strings
