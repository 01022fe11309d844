"""The safety checker: what it flags, how a pipeline and the commands run it, and how it is turned off."""

import json
import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from genvl.cli import main
from genvl.evaluation.safety import evaluate_safety, safety_prompts
from genvl.models.judge import ORIGINAL, SceneJudge
from genvl.models.safety import SafetyChecker, named_concepts
from genvl.pipelines.defaults import shipped_pipeline
from genvl.pipelines.text_to_image import TextToImagePipeline
from genvl.recipes.export_safety_checker import main as export_checker
from genvl.world import render_scene
from genvl.world.classic import sample_classic_scene
from genvl.world.dataset import write_imagefolder
from genvl.world.sprites import COLOURS, OBJECTS

from .conftest import get_dummy_unclip_components
from .test_output_safety import snapshot

FAST = ["--steps", "2", "--quiet"]


def tiny_checker(threshold: float, blocked=("snake",), check_prompts=True) -> SafetyChecker:
    """A random-weight checker: at a threshold near 0 it flags every image, near 1 none (unless its prompt names a
    blocked concept)."""
    torch.manual_seed(0)
    judge = SceneJudge(sorted(OBJECTS), sorted(COLOURS) + [ORIGINAL], channels=(8, 8, 8))
    return SafetyChecker.from_judge(judge, list(blocked), [threshold] * len(blocked), check_prompts)


def pixels(images) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in images]).float() / 127.5 - 1


def scenes_with(name: str, count: int, holding: bool) -> list[dict]:
    rng, scenes = random.Random(5), []
    while len(scenes) < count:
        scene = sample_classic_scene(rng)
        if (name in {obj["name"] for obj in scene["objects"]}) == holding:
            scenes.append(scene)
    return scenes


def test_the_shipped_judge_as_a_checker_flags_renders_of_the_blocked_concept_only():
    judge = SceneJudge.from_pretrained(shipped_pipeline("genvl-judge-small"))
    checker = SafetyChecker.from_judge(judge, ["snake"], [0.2])
    snakes = [render_scene(scene) for scene in scenes_with("snake", 12, True)]
    others = [render_scene(scene) for scene in scenes_with("snake", 24, False)]
    assert checker.check(pixels(snakes)) == [["snake"]] * 12
    assert checker.check(pixels(others)) == [[]] * 24
    scores = checker.concept_scores(pixels(snakes[:2]))
    assert scores.shape == (2, 1) and bool(((scores > 0.2) & (scores <= 1)).all())
    # at another size the images are resized to the detector's
    large = torch.nn.functional.interpolate(pixels(snakes[:2]), size=(128, 128), mode="bilinear")
    assert checker.check(large) == [["snake"], ["snake"]]


@pytest.mark.parametrize(
    "blocked, thresholds, message",
    [
        (["dragon"], [0.5], "blocked concept 'dragon' is not one of"),
        (["snake"], [1.5], "numbers in (0, 1)"),
        (["snake"], [float("nan")], "numbers in (0, 1)"),
        (["snake"], ["0.5"], "numbers in (0, 1)"),
        (["snake", "cat"], [0.5], "one threshold per blocked concept"),
        (["snake", "snake"], [0.5, 0.5], "twice"),
    ],
)
def test_a_checker_refuses_a_config_it_cannot_honour(blocked, thresholds, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SafetyChecker(
            sorted(OBJECTS), sorted(COLOURS), channels=(8, 8, 8), blocked=blocked, blocked_thresholds=thresholds
        )


@pytest.fixture
def checked_dir(tmp_path):
    """A tiny text-to-image pipeline folder whose checker flags every image."""
    path = tmp_path / "t2i"
    TextToImagePipeline(**get_dummy_unclip_components()).save_pretrained(path)
    tiny_checker(1e-9).save_pretrained(path / "safety_checker")
    index = json.loads((path / "model_index.json").read_text())
    index["safety_checker"] = ["genvl.models.safety", "SafetyChecker"]
    (path / "model_index.json").write_text(json.dumps(index))
    return path


def test_a_pipeline_blacks_out_and_reports_flagged_images_unless_loaded_without_its_checker(checked_dir):
    pipeline = TextToImagePipeline.from_pretrained(checked_dir)
    assert isinstance(pipeline.safety_checker, SafetyChecker)
    generator = [torch.Generator().manual_seed(i) for i in range(2)]
    output = pipeline(
        ["a red apple", "a snake"],
        generator=generator,
        output_type="pt",
        prior_num_inference_steps=2,
        decoder_num_inference_steps=2,
    )
    assert output.flagged == [["snake"], ["snake"]]
    assert float(output.images.abs().max()) == 0.0
    images, flagged = pipeline(
        "a snake",
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        prior_num_inference_steps=2,
        decoder_num_inference_steps=2,
        return_dict=False,
    )
    assert flagged == [["snake"]] and images.max() == 0.0
    # turned off at load: the checker's folder is not even read
    (checked_dir / "safety_checker" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="safety_checker"):
        TextToImagePipeline.from_pretrained(checked_dir)
    unchecked = TextToImagePipeline.from_pretrained(checked_dir, safety_checker=None)
    output = unchecked(
        "a snake",
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        prior_num_inference_steps=2,
        decoder_num_inference_steps=2,
    )
    assert output.flagged is None and float(output.images.max()) > 0
    with pytest.raises(ValueError, match="prior is required"):
        TextToImagePipeline.from_pretrained(checked_dir, prior=None)
    with pytest.raises(TypeError, match="no component 'painter'"):
        TextToImagePipeline.from_pretrained(checked_dir, painter=None)


def test_a_checker_that_flags_nothing_leaves_the_images_as_they_were(checked_dir):
    pipeline = TextToImagePipeline.from_pretrained(checked_dir)
    settings = dict(output_type="pt", prior_num_inference_steps=2, decoder_num_inference_steps=2)
    pipeline.safety_checker = tiny_checker(1 - 1e-9)
    checked = pipeline("a red apple", generator=torch.Generator().manual_seed(3), **settings)
    assert checked.flagged == [[]] and float(checked.images.max()) > 0
    pipeline.safety_checker = None
    plain = pipeline("a red apple", generator=torch.Generator().manual_seed(3), **settings)
    assert plain.flagged is None
    torch.testing.assert_close(plain.images, checked.images)


def test_a_prompt_naming_a_blocked_concept_flags_its_images_whatever_they_show(checked_dir, tmp_path, capsys):
    sees_nothing = tiny_checker(1 - 1e-9)  # the image stage flags no image
    sees_nothing.save_pretrained(checked_dir / "safety_checker")
    pipeline = TextToImagePipeline.from_pretrained(checked_dir)
    assert pipeline.safety_checker.config.check_prompts
    prompts = ["a red apple", "two green Snakes, below a cat", "a snakeskin boot", "a snake"]
    settings = dict(output_type="pt", prior_num_inference_steps=2, decoder_num_inference_steps=2)
    output = pipeline(prompts, generator=[torch.Generator().manual_seed(i) for i in range(4)], **settings)
    assert output.flagged == [[], ["snake"], [], ["snake"]]
    peaks = output.images.flatten(1).amax(1)
    assert peaks[1] == peaks[3] == 0 and peaks[0] > 0 and peaks[2] > 0
    frames = pipeline.interpolate("a snake", "a cat", frames=2, generator=torch.Generator().manual_seed(0), **settings)
    assert frames.flagged == [["snake"], ["snake"]]
    start = Image.new("RGB", (32, 32), (200, 30, 30))
    frames = pipeline.interpolate(start, "a cat", frames=2, generator=torch.Generator().manual_seed(0), **settings)
    assert frames.flagged == [[], []]
    with pytest.raises(ValueError, match="got 1 prompts for 2 images"):
        pipeline.run_safety_checker(torch.zeros(2, 3, 32, 32), ["a snake"])
    # the command line's interpolation, which checks its frames batch by batch, reads the prompts too
    out = tmp_path / "frames"
    args = ["interpolate", "a snake", "a cat", "--frames", "2", "--out", str(out), "--json", "--model"]
    assert main([*args, str(checked_dir), *FAST]) == 0
    assert [json.loads(line)["flagged"] for line in capsys.readouterr().out.splitlines()] == [["snake"]] * 2
    # with the prompt stage off (saved in its config), only what an image shows flags it
    tiny_checker(1 - 1e-9, check_prompts=False).save_pretrained(checked_dir / "safety_checker")
    pipeline = TextToImagePipeline.from_pretrained(checked_dir)
    output = pipeline(prompts, generator=[torch.Generator().manual_seed(i) for i in range(4)], **settings)
    assert output.flagged == [[], [], [], []] and bool((output.images.flatten(1).amax(1) > 0).all())


def test_a_prompt_is_checked_as_typed_and_as_drawn(tmp_path, monkeypatch, capsys):
    path = tmp_path / "t2i"
    TextToImagePipeline(**get_dummy_unclip_components(), prompt_world="classic").save_pretrained(path)
    tiny_checker(1 - 1e-9, blocked=("rabbit",)).save_pretrained(path / "safety_checker")  # the image stage sees none
    index = json.loads((path / "model_index.json").read_text())
    index["safety_checker"] = ["genvl.models.safety", "SafetyChecker"]
    (path / "model_index.json").write_text(json.dumps(index))
    pipeline = TextToImagePipeline.from_pretrained(path)
    settings = dict(output_type="pt", prior_num_inference_steps=2, decoder_num_inference_steps=2)
    prompts = ["a bunny", "two bunnies and a dog", "a red apple"]
    for rewrite in (True, False):  # "bunny" is a word the readers take for a rabbit, drawn rewritten or as typed
        generators = [torch.Generator().manual_seed(i) for i in range(3)]
        output = pipeline(prompts, generator=generators, rewrite_prompts=rewrite, **settings)
        assert output.flagged == [["rabbit"], ["rabbit"], []]
        assert output.images[0].amax() == output.images[1].amax() == 0 and output.images[2].amax() > 0
    out = tmp_path / "out"
    assert main(["generate", "a bunny", "--seed", "0", "--out", str(out), "--json", "--model", str(path), *FAST]) == 0
    assert json.loads(capsys.readouterr().out)["flagged"] == ["rabbit"]
    # whatever a rewriting draws is read too: here one that takes "a hare" for a rabbit
    drawn = pipeline.drawn_prompts
    monkeypatch.setattr(pipeline, "drawn_prompts", lambda asked, generator: drawn(["a rabbit"] * len(asked), generator))
    output = pipeline("a hare", generator=torch.Generator().manual_seed(0), **settings)
    assert " rabbit" in output.prompts[0] and output.flagged == [["rabbit"]]
    frames = pipeline.interpolate("a hare", "a cat", frames=2, generator=torch.Generator().manual_seed(0), **settings)
    assert frames.flagged == [["rabbit"], ["rabbit"]]
    assert pipeline(
        "a hare", generator=torch.Generator().manual_seed(0), rewrite_prompts=False, **settings
    ).flagged == [[]]


def test_generate_vary_and_interpolate_black_out_flagged_images_and_say_so(checked_dir, tmp_path, capsys):
    model = ["--model", str(checked_dir)]
    out = tmp_path / "out"
    assert main(["generate", "a snake", "-n", "2", "--seed", "0", "--out", str(out), "--json", *model, *FAST]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["flagged"] for record in records] == [["snake"], ["snake"]]
    with Image.open(records[0]["path"]) as image:
        assert image.getextrema() == ((0, 0), (0, 0), (0, 0))
        assert json.loads(image.text["flagged"]) == ["snake"]
    assert main(["generate", "a snake", "--seed", "0", "--out", str(out), *model, "--steps", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().endswith("\tflagged: snake")
    assert "the safety checker found snake in 1: blacked out" in captured.err
    assert main(["vary", records[0]["path"], "--seed", "1", "--out", str(out), "--json", *model, *FAST]) == 0
    assert {str(json.loads(line)["flagged"]) for line in capsys.readouterr().out.splitlines()} == {"['snake']"}
    assert main(["interpolate", "a snake", "a cat", "--frames", "2", "--out", str(out), "--json", *model, *FAST]) == 0
    assert [json.loads(line)["flagged"] for line in capsys.readouterr().out.splitlines()] == [["snake"]] * 2
    # --no-safety-checker: the images as drawn, nothing flagged
    off = tmp_path / "off"
    assert (
        main(["generate", "a snake", "--seed", "0", "--out", str(off), "--json", "--no-safety-checker", *model, *FAST])
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert "flagged" not in record
    with Image.open(record["path"]) as image:
        assert max(high for _, high in image.getextrema()) > 0


def test_a_folder_without_a_checker_says_its_images_are_not_checked(t2i_dir, tmp_path, capsys):
    assert (
        main(["generate", "a snake", "--seed", "0", "--out", str(tmp_path), "--model", str(t2i_dir), "--steps", "2"])
        == 0
    )
    assert "has no safety checker: the images are not checked" in capsys.readouterr().err


def test_export_adds_a_checker_to_a_pipeline_folder_and_refuses_other_folders(tmp_path):
    path = tmp_path / "t2i"
    TextToImagePipeline(**get_dummy_unclip_components()).save_pretrained(path)
    judge = str(shipped_pipeline("genvl-judge-small"))
    export_checker(["--judge", judge, "--block", "snake", "--threshold", "0.3", "--into", str(path)])
    pipeline = TextToImagePipeline.from_pretrained(path)
    assert pipeline.safety_checker.config.blocked == ["snake"]
    assert pipeline.safety_checker.config.blocked_thresholds == [0.3]
    assert not list(path.glob(".*tmp*"))
    with pytest.raises(FileNotFoundError, match="not a pipeline folder"):
        export_checker(["--judge", judge, "--block", "snake", "--into", str(tmp_path)])
    with pytest.raises(ValueError, match="'dragon' is not one of"):
        export_checker(["--judge", judge, "--block", "dragon", "--output", str(tmp_path / "c")])
    assert not (tmp_path / "c").exists()
    # a checker folder is replaced; a folder that holds anything else, or the judge itself, is refused untouched
    export_checker(["--judge", judge, "--block", "snake", "--output", str(tmp_path / "c")])
    export_checker(["--judge", judge, "--block", "cat", "--output", str(tmp_path / "c")])
    assert SafetyChecker.from_pretrained(tmp_path / "c").config.blocked == ["cat"]
    mine = tmp_path / "mine"
    (mine / "photos").mkdir(parents=True)
    (mine / "config.json").write_text("{}")
    (mine / "notes.txt").write_text("mine")
    copy = tmp_path / "judge"
    shutil.copytree(judge, copy)
    (copy / "README.md").unlink()  # holds a checker's file names, but a judge's config
    (tmp_path / "link").symlink_to(tmp_path / "c")
    checker_files = tmp_path / "extra"
    shutil.copytree(tmp_path / "c", checker_files)
    (checker_files / "notes.txt").write_text("mine")
    for folder, message in (
        (mine, "is not a safety checker folder genvl wrote"),
        (copy, "is the --judge folder"),
        (tmp_path / "link", "is not a safety checker folder genvl wrote"),
        (checker_files, "is not a safety checker folder genvl wrote"),
        (path / "model_index.json", "is not a safety checker folder genvl wrote"),
    ):
        before = snapshot(tmp_path)
        with pytest.raises(FileExistsError, match=message):
            export_checker(["--judge", str(copy), "--block", "snake", "--output", str(folder)])
        assert snapshot(tmp_path) == before
    other = tmp_path / "other"
    TextToImagePipeline(**get_dummy_unclip_components()).save_pretrained(other)
    shutil.copytree(mine, other / "safety_checker")
    index = (other / "model_index.json").read_text()
    with pytest.raises(FileExistsError, match="is not a safety checker folder genvl wrote"):
        export_checker(["--judge", judge, "--block", "snake", "--into", str(other)])
    assert (other / "safety_checker" / "notes.txt").read_text() == "mine"
    assert (other / "model_index.json").read_text() == index


def test_safety_prompts_split_the_scenes_and_turn_through_the_phrasings():
    records = [{"scene": scene, "text": "t", "captions": ["a", "b", "c"]} for scene in scenes_with("snake", 5, True)]
    records += [{"scene": scene, "text": "t", "captions": ["d", "e"]} for scene in scenes_with("snake", 5, False)]
    groups = safety_prompts(records, ["snake"], 4)
    assert [item["prompt"] for item in groups["blocked"]] == ["a", "b", "c", "a"]
    assert [item["prompt"] for item in groups["other"]] == ["d", "e", "d", "e"]
    assert named_concepts("two green snakes", ["snake"]) == named_concepts("A Snake.", ["cat", "snake"]) == ["snake"]
    assert named_concepts("a snakeskin boot, a catalogue", ["snake", "cat"]) == []
    # any word the prompt readers take for the object, as they read it: "bunny" is a rabbit, "t-shirt" a shirt
    assert named_concepts("Two BUNNIES", ["rabbit"]) == named_concepts("a bunny", ["snake", "rabbit"]) == ["rabbit"]
    assert named_concepts("a red T-shirt beside a kitten", ["cat", "shirt", "dog"]) == ["cat", "shirt"]
    assert named_concepts("a light  bulb, a gift box", ["bulb", "gift"]) == ["bulb", "gift"]
    assert named_concepts("a shirtless kittenish rabbiting", ["cat", "shirt", "rabbit"]) == []


def test_eval_safety_reports_flagged_rates_per_group(checked_dir, tmp_path):
    from genvl.pipelines.caption import CaptionPipeline

    folders = [
        write_imagefolder(tmp_path / "snakes", 3, resolution=32, world="classic", require="snake"),
        write_imagefolder(tmp_path / "others", 8, resolution=32, world="classic"),
    ]
    pipeline = TextToImagePipeline.from_pretrained(checked_dir)
    pipeline.set_progress_bar_config(disable=True)
    captioner = CaptionPipeline.from_pretrained(shipped_pipeline("genvl-caption-small"))
    report = evaluate_safety(pipeline, captioner, folders, 3, batch_size=4)
    assert report["images"] == 6 and report["blocked"] == ["snake"]
    assert report["blocked_prompts"]["flagged"] == 1.0 and report["other_prompts"]["flagged"] == 1.0  # flags all
    assert report["blocked_prompts"]["renders"] == {"images": 3, "flagged": 1.0}
    for group, named in (("blocked_prompts", 1.0), ("other_prompts", 0.0)):  # each stage alone
        assert report[group]["image_stage"]["flagged"] == 1.0 and report[group]["prompt_stage"]["flagged"] == named
    assert len(report["false_alarms"]) == 3 and not report["missed"]
    with pytest.raises(ValueError, match="fewer than 4"):
        evaluate_safety(pipeline, captioner, folders[:1], 4)
