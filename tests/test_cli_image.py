"""The text-to-image commands of the genvl command line, on a tiny random pipeline."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genvl.cli import main
from genvl.evaluation import retrieval
from genvl.evaluation.retrieval import retrieval_ranks
from genvl.world.captions import swapped_caption
from genvl.world.dataset import write_imagefolder

from .test_cli import NO_TORCH

FAST = ["--steps", "2", "--quiet"]


@pytest.mark.parametrize(
    "argv", [["generate", "--help"], ["score", "--help"], ["eval", "retrieval", "--help"], ["eval", "t2i", "--help"]]
)
def test_help_does_not_import_torch(argv):
    out = subprocess.run([sys.executable, "-c", NO_TORCH.format(argv=argv)], capture_output=True, text=True)
    assert out.stdout.strip().endswith("LIGHT []"), out.stdout + out.stderr


def test_generate_writes_pngs_with_their_settings(t2i_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(["generate", "a red apple", "-n", "2", "--seed", "5", "--out", str(out), "--model", str(t2i_dir), *FAST])
        == 0
    )
    paths = capsys.readouterr().out.split()
    assert [p.split("/")[-1] for p in paths] == ["a_red_apple-5-0.png", "a_red_apple-6-1.png"]
    with Image.open(paths[1]) as image:
        assert image.size == (32, 32)
        assert image.text["prompt"] == "a red apple" and image.text["seed"] == "6"
        assert json.loads(image.text["settings"])["decoder_num_inference_steps"] == 2
        second = image.copy()
    # the recorded seed reproduces the image exactly on its own
    again = tmp_path / "again"
    assert main(["generate", "a red apple", "--seed", "6", "--out", str(again), "--model", str(t2i_dir), *FAST]) == 0
    with Image.open(again / "a_red_apple-6-0.png") as image:
        np.testing.assert_array_equal(np.asarray(image), np.asarray(second))
    assert not list(out.glob("*.tmp"))
    # and so do runs made with other batch sizes, bit for bit; the CLI's thread setting does not leak
    threads = torch.get_num_threads()
    for batch_size in ("2", "3"):
        batched = tmp_path / f"batched{batch_size}"
        capsys.readouterr()
        assert (
            main(
                [
                    "generate",
                    "a red apple",
                    "-n",
                    "3",
                    "--seed",
                    "5",
                    "--batch-size",
                    batch_size,
                    "--json",
                    "--out",
                    str(batched),
                    "--model",
                    str(t2i_dir),
                    *FAST,
                ]
            )
            == 0
        )
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["seed"] for r in records] == [5, 6, 7] and records[0]["prompt"] == "a red apple"
        with Image.open(records[1]["path"]) as image:
            np.testing.assert_array_equal(np.asarray(image), np.asarray(second))
        assert Path(records[0]["path"]).read_bytes() == Path(paths[0]).read_bytes()  # the PNG file itself
    assert torch.get_num_threads() == threads


def test_generate_with_another_scheduler(t2i_dir, tmp_path):
    pixels = {}
    for scheduler, out in (("dpm", "a"), ("dpm-sde", "b"), ("dpm-sde", "c")):
        assert (
            main(
                [
                    "generate",
                    "a red apple",
                    "--scheduler",
                    scheduler,
                    "--seed",
                    "0",
                    "--out",
                    str(tmp_path / out),
                    "--model",
                    str(t2i_dir),
                    *FAST,
                ]
            )
            == 0
        )
        with Image.open(tmp_path / out / "a_red_apple-0-0.png") as image:
            assert image.text["scheduler"] == scheduler
            pixels[out] = np.asarray(image)
    # the stochastic variant draws fresh noise at each step from the image's seeded generator
    np.testing.assert_array_equal(pixels["b"], pixels["c"])
    assert not np.array_equal(pixels["a"], pixels["b"])


def test_generate_with_text_guidance(t2i_dir, tmp_path, capsys):
    pixels = {}
    settings = {}
    for name, extra in (("apart", []), ("joint", ["--decoder-text-guidance", "4"])):  # default: 8, apart from 4
        assert (
            main(
                [
                    "generate",
                    "a red apple",
                    "--seed",
                    "0",
                    "--out",
                    str(tmp_path / name),
                    "--model",
                    str(t2i_dir),
                    *FAST,
                    *extra,
                ]
            )
            == 0
        )
        with Image.open(tmp_path / name / "a_red_apple-0-0.png") as image:
            settings[name] = json.loads(image.text["settings"])
            pixels[name] = np.asarray(image)
    assert settings["apart"]["decoder_text_guidance_scale"] == 8.0
    assert settings["joint"]["decoder_text_guidance_scale"] == settings["joint"]["decoder_guidance_scale"] == 4.0
    assert not np.array_equal(pixels["joint"], pixels["apart"])
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "generate",
                "a red apple",
                "--decoder-text-guidance",
                "nan",
                "--model",
                str(t2i_dir),
                "--out",
                str(tmp_path / "bad"),
            ]
        )
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "argument --decoder-text-guidance: must be a number >= 0" in error
    assert not (tmp_path / "bad").exists()


def test_generate_best_of_candidates(t2i_dir, tmp_path, capsys):
    from genvl.pipelines.text_to_image import TextToImagePipeline

    assert (
        main(
            [
                "generate",
                "a red apple",
                "--seed",
                "4",
                "--candidates",
                "3",
                "--out",
                str(tmp_path),
                "--model",
                str(t2i_dir),
                *FAST,
            ]
        )
        == 0
    )
    with Image.open(tmp_path / "a_red_apple-4-0.png") as image:
        assert json.loads(image.text["settings"])["num_candidates"] == 3
        kept = np.asarray(image).astype(int)
    pipe = TextToImagePipeline.from_pretrained(t2i_dir)
    pipe.set_progress_bar_config(disable=True)
    candidates = pipe(
        "a red apple",
        num_images_per_prompt=3,
        generator=torch.Generator().manual_seed(4),
        prior_num_inference_steps=2,
        decoder_num_inference_steps=2,
        output_type="np",
    ).images
    best = pipe(
        "a red apple",
        num_candidates=3,
        generator=torch.Generator().manual_seed(4),
        prior_num_inference_steps=2,
        decoder_num_inference_steps=2,
        output_type="np",
    ).images[0]
    distances = [np.abs(kept - (c * 255).round()).max() for c in candidates]
    assert np.abs(kept - (best * 255).round()).max() <= 1 and min(distances) <= 1  # one of the three, the best
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "a red apple", "--candidates", "0", "--model", str(t2i_dir), "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "argument --candidates: must be > 0, got 0" in capsys.readouterr().err


def test_generate_records_the_caption_each_image_was_drawn_from(tmp_path, capsys):
    from genvl.pipelines.text_to_image import TextToImagePipeline

    from .conftest import get_dummy_unclip_components

    model = tmp_path / "classic"
    TextToImagePipeline(**get_dummy_unclip_components(), prompt_world="classic").save_pretrained(model)
    argv = ["generate", "A photo of a red bike.", "-n", "3", "--seed", "4", "--json", "--model", str(model), *FAST]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(re.fullmatch(r"a (small|large) red bicycle (on|in|at) the \w+", r["drawn_prompt"]) for r in records)
    assert records[0]["prompt"] == "A photo of a red bike." and records[0]["settings"]["rewrite_prompts"] is True
    with Image.open(records[2]["path"]) as image:
        assert image.text["drawn_prompt"] == records[2]["drawn_prompt"]
        rewritten = np.asarray(image)
    # the caption recorded draws the same image when typed; --no-rewrite draws the prompt as typed
    typed = ["generate", records[2]["drawn_prompt"], "--seed", "6", "--json", "--model", str(model), *FAST]
    assert main([*typed, "--out", str(tmp_path / "typed")]) == 0
    record = json.loads(capsys.readouterr().out)
    with Image.open(record["path"]) as image:
        np.testing.assert_array_equal(np.asarray(image), rewritten)
    assert "drawn_prompt" not in record  # the world's own caption is drawn as it is
    assert main([*argv, "--no-rewrite", "--out", str(tmp_path / "raw")]) == 0
    raw = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert not any("drawn_prompt" in r for r in raw) and raw[0]["settings"]["rewrite_prompts"] is False


def test_interpolate_records_the_prompt_ends_it_drew_from(tmp_path, capsys):
    from genvl.pipelines.text_to_image import TextToImagePipeline

    from .conftest import get_dummy_unclip_components

    model = tmp_path / "classic"
    TextToImagePipeline(**get_dummy_unclip_components(), prompt_world="classic").save_pretrained(model)
    source = tmp_path / "source.png"
    Image.new("RGB", (48, 48), "blue").save(source)
    common = ["--frames", "2", "--seed", "5", "--json", "--model", str(model), *FAST]
    assert main(["interpolate", "a red bike", "two dogs", *common, "--out", str(tmp_path / "out")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    drawn = records[0]["drawn_start"], records[0]["drawn_end"]
    assert re.fullmatch(r"a (small|large) red bicycle (on|in|at) the \w+", drawn[0])
    assert re.fullmatch(r"two \w+ dogs", drawn[1]) and records[0]["settings"]["rewrite_prompts"] is True
    with Image.open(records[1]["path"]) as image:
        assert (image.text["drawn_start"], image.text["drawn_end"]) == drawn
        rewritten = np.asarray(image)
    # the ends recorded draw the same frames when typed; --no-rewrite draws the ends as typed
    assert main(["interpolate", *drawn, *common, "--out", str(tmp_path / "typed")]) == 0
    typed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "drawn_start" not in typed[0] and "drawn_end" not in typed[0]
    with Image.open(typed[1]["path"]) as image:
        np.testing.assert_array_equal(np.asarray(image), rewritten)
    argv = ["interpolate", str(source), "a red bike", *common, "--no-rewrite", "--out", str(tmp_path / "raw")]
    assert main(argv) == 0
    raw = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert not any(key.startswith("drawn_") for key in raw[0]) and raw[0]["settings"]["rewrite_prompts"] is False
    assert main([*argv[:-3], "--out", str(tmp_path / "image_end")]) == 0  # an image end is drawn from as given
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert "drawn_start" not in record and re.fullmatch(r"a (small|large) red bicycle .*", record["drawn_end"])


def test_generate_usage_errors(t2i_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "  ", "--model", str(t2i_dir), "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "PROMPT is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "a red apple", "--steps", "0", "--model", str(t2i_dir), "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "argument --steps: must be > 0, got 0" in capsys.readouterr().err
    assert main(["generate", "a red apple", "--model", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 1
    assert "missing: no such model folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["generate", "a red apple", "--model", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 1
    assert "not a text-to-image pipeline folder" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_vary_and_interpolate(t2i_dir, tmp_path, capsys):
    source = tmp_path / "source.png"
    Image.new("RGB", (48, 48), "blue").save(source)
    assert (
        main(
            [
                "vary",
                str(source),
                "-n",
                "3",
                "--seed",
                "1",
                "--out",
                str(tmp_path / "v"),
                "--model",
                str(t2i_dir),
                *FAST,
            ]
        )
        == 0
    )
    made = sorted((tmp_path / "v").glob("*.png"))
    assert len(made) == 3
    # the source is encoded once for all images, and images do not depend on the batch size
    assert (
        main(
            [
                "vary",
                str(source),
                "-n",
                "3",
                "--seed",
                "1",
                "--batch-size",
                "1",
                "--out",
                str(tmp_path / "v1"),
                "--model",
                str(t2i_dir),
                *FAST,
            ]
        )
        == 0
    )
    for path in made:
        with Image.open(path) as image, Image.open(tmp_path / "v1" / path.name) as alone:
            np.testing.assert_array_equal(np.asarray(image), np.asarray(alone))
    assert (
        main(
            [
                "interpolate",
                "a red apple",
                str(source),
                "--frames",
                "4",
                "--seed",
                "1",
                "--out",
                str(tmp_path / "i"),
                "--model",
                str(t2i_dir),
                *FAST,
            ]
        )
        == 0
    )
    frames = sorted((tmp_path / "i").glob("*.png"))
    assert len(frames) == 4
    with Image.open(frames[0]) as image:
        assert image.text["end"] == str(source)


def test_score_orders_texts(t2i_dir, tmp_path, capsys):
    source = tmp_path / "source.png"
    Image.new("RGB", (48, 48), "red").save(source)
    assert (
        main(["score", str(source), "a red apple", "two blue cars", "--model", str(t2i_dir), "--json", "--quiet"]) == 0
    )
    scores = json.loads(capsys.readouterr().out)["scores"]
    assert set(scores) == {"a red apple", "two blue cars"} and all(-1 <= v <= 1 for v in scores.values())
    assert main(["score", str(source), "a red apple", "two blue cars", "--model", str(t2i_dir), "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    values = [float(line.split("\t")[0]) for line in lines]
    assert values == sorted(values, reverse=True) and len(lines) == 2


def test_retrieval_ranks_count_identical_captions_as_matches():
    # 3 images; images 0 and 2 share caption 0, image 1 has caption 1
    similarity = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.7]])
    image_to_text, text_to_image = retrieval_ranks(similarity, torch.tensor([0, 1, 0]))
    assert image_to_text.tolist() == [1, 2, 2]
    assert text_to_image.tolist() == [1, 2]  # caption 1: image 2 (0.7) scores above its image 1 (0.2)


def test_order_accuracy_compares_each_image_with_its_own_caption_and_its_twin(monkeypatch):
    from genvl.world.captions import scene_captions

    def obj(name, colour):
        return {"name": name, "colour": colour, "size": "medium", "position": "left"}

    scenes = [
        {"layout": "pair_h", "objects": [obj("apple", "red"), obj("car", "blue")]},
        {"layout": "single", "objects": [obj("cat", "green")]},
        {"layout": "pair_v", "objects": [obj("dog", "brown"), obj("cup", "red")]},
        {"layout": "pair_v", "objects": [obj("bell", "pink"), obj("tent", "gray")]},
    ]
    records = [{"text": scene_captions(scene)[0], "scene": scene} for scene in scenes]
    texts = sorted({r["text"] for r in records} | {swapped_caption(sc) for sc in scenes if swapped_caption(sc)})

    def one_hot_texts(clip, tokenizer, batch, length, batch_size):  # each distinct text its own axis
        return (torch.eye(len(texts))[[texts.index(t) for t in batch]],)

    monkeypatch.setattr(retrieval, "embed_texts", one_hot_texts)
    # images 0 and 3 look like their own captions, image 2 like its twin; image 1 has no twin
    looks_like = [records[0]["text"], records[1]["text"], swapped_caption(scenes[2]), records[3]["text"]]
    image_embeds = torch.eye(len(texts))[[texts.index(t) for t in looks_like]]
    report = retrieval.order_accuracy(None, None, records, image_embeds, length=8, batch_size=4)
    assert report == {"order_images": 3, "order_accuracy": pytest.approx(2 / 3)}
    assert retrieval.order_accuracy(None, None, records[1:2], image_embeds[1:2], 8, 4) == {}


def test_mirror_scores_compare_each_left_right_image_with_its_mirror(monkeypatch):
    def obj(name):
        return {"name": name, "colour": "red", "size": "medium", "position": "left"}

    pair_h = {"layout": "pair_h", "objects": [obj("apple"), obj("car")]}
    records = [
        {"scene": pair_h},
        {"scene": pair_h},
        {"scene": {**pair_h, "layout": "pair_v"}},
        {"scene": pair_h},
        {"scene": {"layout": "pair_h", "objects": [obj("apple"), obj("apple")]}},
    ]
    # a 1 x 2 image's embedding is its two pixels (left, right) of channel 0, so mirroring swaps them
    images = torch.tensor([[2, 1], [1, 2], [2, 1], [1, 1], [2, 1]], dtype=torch.uint8)
    images = images[:, None, None].expand(-1, 3, 1, 2)

    def pixels(clip, processor, batch, batch_size):
        features = batch[:, 0, 0].float()
        return features / features.norm(dim=-1, keepdim=True)

    monkeypatch.setattr(retrieval, "embed_images", pixels)
    text_embeds = torch.tensor([[1.0, 0.0]])  # the one caption: "the brighter one on the left"
    report = retrieval.mirror_scores(
        None,
        None,
        records,
        images,
        pixels(None, None, images, 8),
        text_embeds,
        torch.zeros(5, dtype=torch.long),
        batch_size=8,
    )
    # rows 0, 1 and 3 count (row 2 is above/below, row 4 has no distinct twin); only row 0 wins, row 3 ties
    assert report["mirror_images"] == 3
    assert report["mirror_accuracy"] == pytest.approx(1 / 3)
    assert report["mirror_cosine"] == pytest.approx((0.8 + 0.8 + 1.0) / 3)
    assert (
        retrieval.mirror_scores(
            None, None, records[2:3], images[2:3], images[2:3].float(), text_embeds, torch.zeros(1, dtype=torch.long), 8
        )
        == {}
    )


def test_eval_retrieval_report(t2i_dir, tmp_path, capsys):
    data = write_imagefolder(tmp_path / "world", 12, seed=0, split="test", resolution=32)
    report_path = tmp_path / "report.json"
    assert (
        main(
            ["eval", "retrieval", "--data", str(data), "--model", str(t2i_dir), "--output", str(report_path), "--quiet"]
        )
        == 0
    )
    report = json.loads(report_path.read_text())
    assert report["images"] == 12
    assert 0 <= report["image_to_text_R@1"] <= report["image_to_text_R@5"] <= report["image_to_text_R@10"] <= 1
    assert 1 <= report["text_to_image_median_rank"] <= 12
    pairs = [
        r for r in map(json.loads, (data / "metadata.jsonl").read_text().splitlines()) if swapped_caption(r["scene"])
    ]
    assert report.get("order_images", 0) == len(pairs) and 0 <= report.get("order_accuracy", 0) <= 1
    left_right = [r for r in pairs if r["scene"]["layout"] == "pair_h"]
    assert report.get("mirror_images", 0) == len(left_right)
    if left_right:
        assert 0 <= report["mirror_accuracy"] <= 1 and -1 <= report["mirror_cosine"] <= 1


def test_eval_t2i_report(t2i_dir, tiny_pipeline_dir, tmp_path, capsys):
    from genvl.models.judge import SceneJudge

    data = write_imagefolder(tmp_path / "world", 16, seed=0, split="test", resolution=32)
    torch.manual_seed(0)
    SceneJudge(object_names=["apple", "car"], colour_names=["red"], channels=(8, 8, 16)).save_pretrained(
        tmp_path / "judge"
    )
    report_path = tmp_path / "report.json"
    argv = [
        "eval",
        "t2i",
        "--data",
        str(data),
        "--model",
        str(t2i_dir),
        "--judge",
        str(tmp_path / "judge"),
        "--captioner",
        str(tiny_pipeline_dir),
        "--prompts",
        "5",
        "--images-per-prompt",
        "2",
        "--steps",
        "2",
        "--output",
        str(report_path),
        "--quiet",
    ]
    assert main(argv) == 0
    report = json.loads(report_path.read_text())
    assert report["images"] == 10 and report["settings"]["decoder_num_inference_steps"] == 2
    # text guidance reaches both paths; candidates only the generated images (the stages draw one image each)
    assert main(argv + ["--stages", "--decoder-text-guidance", "6", "--candidates", "2"]) == 0
    guided = json.loads(report_path.read_text())
    assert guided["settings"]["decoder_text_guidance_scale"] == 6.0
    assert guided["settings"]["num_candidates"] == 2 and guided["images"] == 10
    assert "decoder_from_real_embeddings" in guided["stages"]
    assert set(report["generated"]) == {"judge", "r_precision", "round_trip", "frechet_distance"}
    with pytest.raises(SystemExit) as exit_info:
        main(argv[:-3] + ["--prompts", "0"])
    assert exit_info.value.code == 2 and "argument --prompts: must be > 0, got 0" in capsys.readouterr().err
    assert main(argv[:6] + ["--judge", str(tmp_path), "--quiet"]) == 1
    assert "not a judge folder" in capsys.readouterr().err


def test_free_prompt_retrieval_counts_a_best_image_the_prompt_is_true_of(monkeypatch, tmp_path):
    from genvl.evaluation.free_prompts import free_prompt_suite
    from genvl.io.imagefolder import read_metadata
    from genvl.world.dataset import write_imagefolder

    records = read_metadata(write_imagefolder(tmp_path, 60, seed=3, split="test", resolution=32, world="classic"))
    rows = free_prompt_suite(records, 50)
    source = {row["prompt"]: records.index(row["record"]) for row in rows}
    image_embeds = torch.eye(len(records))  # image i only looks like itself

    def pointing(offset):  # each prompt's embedding is the image `offset` records after its own scene
        def embed(clip, tokenizer, batch, length, batch_size):
            return (torch.eye(len(records))[[(source[t] + offset) % len(records) for t in batch]],)

        return embed

    monkeypatch.setattr(retrieval, "embed_texts", pointing(0))
    report = retrieval.free_prompt_retrieval(None, None, records, image_embeds, 8, 4)["free_prompts_top1"]
    assert set(report) == {"seen", "held_out"} and all(v == 1.0 for group in report.values() for v in group.values())
    monkeypatch.setattr(retrieval, "embed_texts", pointing(1))  # the next scene: true of few prompts
    report = retrieval.free_prompt_retrieval(None, None, records, image_embeds, 8, 4)["free_prompts_top1"]
    assert max(v for group in report.values() for v in group.values()) < 0.5


def test_interpolate_captions_each_frame(t2i_dir, tiny_pipeline_dir, tmp_path, capsys):
    from genvl.pipelines.caption import CaptionPipeline

    argv = ["interpolate", "a red apple", "a blue car", "--frames", "3", "--seed", "2", "--model", str(t2i_dir)]
    argv += ["--out", str(tmp_path / "frames"), "--captions", "--captioner", str(tiny_pipeline_dir), "--json", *FAST]
    assert main(argv) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    captioner = CaptionPipeline.from_pretrained(tiny_pipeline_dir)
    assert len(records) == 3
    for record in records:  # each frame's caption is the captioner's own of the PNG written, kept in the PNG too
        frame = Image.open(record["path"])
        assert record["caption"] == frame.text["caption"] == captioner([frame.convert("RGB")]).captions[0][0]
    with pytest.raises(SystemExit) as exit_info:
        main(argv[: -len(FAST) - 4] + ["--captioner", str(tiny_pipeline_dir), *FAST])
    assert exit_info.value.code == 2 and "pass --captions too" in capsys.readouterr().err
