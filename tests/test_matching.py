"""Image-text matching: the twins it learns from, the head, its recipe, reranking and the commands."""

import json
import random

import pytest
import torch
from PIL import Image

from genvl.cli import main
from genvl.evaluation.matching import evaluate_matching
from genvl.models.matching import MatchingHead, caption_features
from genvl.pipelines.caption import CaptionPipeline
from genvl.recipes.train_matching import decoded_candidates, hard_negatives
from genvl.recipes.train_matching import main as train_matching
from genvl.world.captions import parse_caption, scene_captions, scene_facts
from genvl.world.classic import sample_classic_scene
from genvl.world.dataset import write_imagefolder
from genvl.world.scenes import sample_scene
from genvl.world.twins import caption_twins, twin_scene

IMAGE = "examples/images/three_green_butterflies.png"


def test_every_twin_states_other_facts_and_each_kind_applies_where_it_should():
    rng = random.Random(0)
    seen = set()
    for i in range(300):
        scene = (sample_scene if i % 2 else sample_classic_scene)(rng)
        for kind, caption in caption_twins(scene, rng, phrasing=i % 3):
            seen.add(kind)
            assert parse_caption(caption) != scene_facts(scene), (kind, caption)
            assert caption not in scene_captions(scene)
        layout = scene["layout"]
        assert (twin_scene(scene, "swap", rng) is not None) == (layout in ("pair_h", "pair_v"))
        assert (twin_scene(scene, "count", rng) is not None) == (layout == "count")
        assert (twin_scene(scene, "place", rng) is not None) == (layout == "single")
    assert seen == {"swap", "colour", "object", "count", "place"}
    with pytest.raises(ValueError, match="unknown twin kind 'size'"):
        twin_scene(scene, "size", rng)


def test_hard_negatives_are_the_most_similar_other_facts():
    image = torch.eye(3)
    text = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 0, 1]])
    # sample 0's own text is excluded; sample 1 states the same facts as sample 0, so it is no negative of it
    assert hard_negatives(image, text, ["a", "a", "b"]).tolist() == [2, 2, 0]
    assert hard_negatives(image, text, ["a", "a", "a"]).tolist() == [-1, -1, -1]


def test_the_head_reads_the_last_caption_position_and_the_token_logprobs(tiny_pipeline_dir):
    pipeline = CaptionPipeline.from_pretrained(tiny_pipeline_dir)
    states = pipeline._encode_rows(list(pipeline.preprocess([IMAGE, IMAGE])))
    features = caption_features(
        pipeline.model, pipeline.tokenizer, states, ["a red apple", "two blue cars on the left"]
    )
    hidden, logprobs, mask = features
    assert hidden.shape[:2] == logprobs.shape == mask.shape and hidden.shape[-1] == 32
    assert bool((logprobs <= 0).all()) and bool((logprobs[mask == 0] == 0).all())
    head = MatchingHead(32, 16)
    logits = head(*features)
    assert logits.shape == (2,)
    # padding past a caption changes nothing
    longer = caption_features(pipeline.model, pipeline.tokenizer, states[:1], ["a red apple"])
    torch.testing.assert_close(head(*longer), logits[:1], rtol=1e-4, atol=1e-4)


def test_decoded_candidates_are_the_beams_labelled_by_the_scene_facts(tiny_pipeline_dir):
    pipeline = CaptionPipeline.from_pretrained(tiny_pipeline_dir)
    rng = random.Random(0)
    scenes = [sample_classic_scene(rng) for _ in range(3)]
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    found = decoded_candidates(pipeline, images, scenes, [0, 2], beams=3, batch_size=1)
    assert sorted(found) == [0, 2]
    for row, candidates in found.items():
        picture = Image.fromarray(images[row].permute(1, 2, 0).numpy())
        beams = pipeline(picture, num_beams=3, num_return_sequences=3).captions[0]
        assert [caption for caption, _ in candidates] == list(dict.fromkeys(beams))
        for caption, label in candidates:
            assert label == float(parse_caption(caption) == scene_facts(scenes[row]))


@pytest.fixture(scope="module")
def matcher_dir(tmp_path_factory, tiny_pipeline_dir, t2i_dir):
    """The tiny captioner with a matcher trained for a few steps by the recipe."""
    root = tmp_path_factory.mktemp("matching")
    data = write_imagefolder(root / "data", 24, resolution=32, world="classic")
    out = root / "run"
    losses = train_matching(
        [
            "--train_data_dir", str(data), "--output_dir", str(out), "--pretrained_model_name_or_path",
            str(tiny_pipeline_dir), "--clip_model_name_or_path", str(t2i_dir), "--resolution", "32",
            "--train_batch_size", "8", "--max_train_steps", "4", "--checkpointing_steps", "100", "--width", "16",
            "--lr_warmup_steps", "0",
        ]
    )  # fmt: skip
    assert len(losses) == 4 and all(loss > 0 for loss in losses)
    return out, data


def test_a_trained_matcher_scores_reranks_and_is_evaluated(matcher_dir):
    folder, data = matcher_dir
    pipeline = CaptionPipeline.from_pretrained(folder)
    assert isinstance(pipeline.matcher, MatchingHead)
    scores = pipeline.match(IMAGE, ["a red apple", "two blue cars"])
    assert scores.shape == (2,) and bool(((scores > 0) & (scores < 1)).all())
    torch.testing.assert_close(pipeline.match([IMAGE, IMAGE], ["a red apple", "two blue cars"]), scores)
    # rerank=K keeps, of K beams, the one the matcher scores highest
    beams = pipeline(IMAGE, num_beams=3, num_return_sequences=3).captions[0]
    best = pipeline(IMAGE, rerank=3)
    expected = pipeline.match(IMAGE, beams)
    assert best.captions[0] == [beams[int(expected.argmax())]]
    assert best.scores[0][0] == pytest.approx(float(expected.max()), abs=1e-5)
    with pytest.raises(ValueError, match="do not ask for num_return_sequences"):
        pipeline(IMAGE, rerank=2, num_return_sequences=2)
    with pytest.raises(ValueError, match="rerank are for captions"):
        pipeline(IMAGE, question="how many apples?", rerank=2)
    report = evaluate_matching(pipeline, data, limit=6, batch_size=4)
    assert report["images"] == 6 and report["twins"] >= 12
    for name in ("matcher", "likelihood"):
        assert 0 <= report[name]["true_caption_first"] <= 1
        assert report[name]["held_out_family"] is None  # the classic world has no style families


def test_caption_rerank_and_score_itm_on_the_command_line(matcher_dir, tiny_pipeline_dir, capsys):
    folder = str(matcher_dir[0])
    assert main(["caption", IMAGE, "--rerank", "2", "--model", folder, "--json", "--quiet"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["captions"]) == 1 and 0 < record["captions"][0]["score"] < 1
    assert main(["score", IMAGE, "a red apple", "two blue cars", "--itm", "--model", folder, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)["scores"]
    assert set(scores) == {"a red apple", "two blue cars"}
    # a text longer than the decoder reads is said to be cut, as CLIP's scores say it
    long = " ".join(["apple"] * 200)
    assert main(["score", IMAGE, long, "--itm", "--model", folder]) == 0
    assert "tokens long; only its first" in capsys.readouterr().err
    for argv, message in [
        (["caption", IMAGE, "--rerank", "2", "--model", str(tiny_pipeline_dir)], "has none"),
        (["caption", IMAGE, "--rerank", "2", "--num-captions", "2", "--model", folder], "drop --num-captions"),
        (["score", IMAGE, "a red apple", "--itm", "--model", str(tiny_pipeline_dir)], "has none"),
    ]:
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_the_matcher_matches_and_reranks_in_the_pipelines_dtype(dtype):
    # its features were cast to fp32 while its weights were bf16 or fp64: "mixed dtype" inside layer_norm
    from genvl.pipelines.defaults import shipped_pipeline

    image = Image.new("RGB", (64, 64), (240, 240, 240))
    reference = CaptionPipeline.from_pretrained(shipped_pipeline("genvl-caption-wide")).match(image, ["a cat", "x"])
    pipe = CaptionPipeline.from_pretrained(shipped_pipeline("genvl-caption-wide"), dtype=dtype)
    torch.testing.assert_close(pipe.match(image, ["a cat", "x"]), reference, atol=0.02, rtol=0)
    assert len(pipe(image, rerank=2).captions[0]) == 1
