"""The text-to-image judge (targets, detection decoding, GenEval-style checks) and the scores of eval t2i."""

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers.configuration_utils import FrozenDict

from genvl.cli.image import DEFAULT_JUDGE
from genvl.evaluation.judge import (
    category_accuracy,
    detection_report,
    detection_report_for_folder,
    detection_scores,
    judge_scene,
    match_detections,
)
from genvl.evaluation.retrieval import mirror_rows
from genvl.evaluation.text_to_image import (
    autoencoder_round_trip,
    evaluate_text_to_image,
    frechet_distance,
    image_round_trip,
    judge_images,
    names_all_objects,
    r_precision,
    select_prompts,
    stage_scores,
)
from genvl.io.imagefolder import load_images, read_metadata
from genvl.models.clip import embed_images
from genvl.models.judge import ORIGINAL, Detection, SceneJudge, suppress_near
from genvl.pipelines.caption import CaptionPipeline
from genvl.pipelines.text_to_image import TextToImagePipeline
from genvl.world.dataset import write_imagefolder
from genvl.world.scenes import render_scene, sample_scene

from .conftest import get_dummy_unclip_components

NAMES, COLOURS = ["apple", "car", "cat"], ["blue", "red"]


def obj(name, colour, x, y, size=20):
    return {
        "name": name,
        "colour": colour,
        "size": "group",
        "position": "row",
        "bbox": [x - size / 2, y - size / 2, x + size / 2, y + size / 2],
    }


@pytest.fixture
def judge():
    torch.manual_seed(0)
    return SceneJudge(object_names=NAMES, colour_names=COLOURS, channels=(8, 8, 16)).eval()


def test_targets_mark_the_centre_cell_of_every_object(judge):
    scene = {"layout": "pair_h", "objects": [obj("cat", "red", 17, 33), obj("apple", "blue", 47, 30)]}
    targets = judge.targets([scene])
    assert targets["objectness"].sum() == 2
    assert targets["objectness"][0, 4, 2] == 1 and targets["objectness"][0, 3, 5] == 1
    assert targets["objects"][0, 4, 2] == NAMES.index("cat") and targets["colours"][0, 3, 5] == COLOURS.index("blue")
    assert torch.allclose(targets["offsets"][0, 4, 2], torch.tensor([17 / 8 - 2, 33 / 8 - 4]))
    assert (targets["objects"] == -100).sum() == 62


def test_detect_keeps_local_maxima_above_the_threshold(judge, monkeypatch):
    def fake_forward(images):
        out = {
            "objectness": torch.full((1, 8, 8), -9.0),
            "objects": torch.zeros(1, 8, 8, 3),
            "colours": torch.zeros(1, 8, 8, 2),
            "offsets": torch.zeros(1, 8, 8, 2),
        }
        out["objectness"][0, 4, 2] = 3.0  # a detection
        out["objectness"][0, 4, 3] = 2.0  # its weaker neighbour: suppressed
        out["objectness"][0, 1, 6] = -1.0  # below the threshold
        out["objects"][0, 4, 2, 2] = 5.0
        out["colours"][0, 4, 2, 1] = 5.0
        return out

    monkeypatch.setattr(judge, "forward", fake_forward)
    (detections,) = judge.detect(torch.zeros(1, 3, 32, 32))
    assert len(detections) == 1
    d = detections[0]
    assert (d.name, d.colour) == ("cat", "red") and d.x == pytest.approx(20.0) and d.y == pytest.approx(36.0)


def test_detect_runs_on_any_image_size(judge):
    assert len(judge.detect(torch.zeros(3, 3, 48, 48))) == 3


def det(name, colour, x, y):
    return Detection(name, colour, x, y, 0.9)


def test_targets_give_an_original_colour_its_own_class():
    judge = SceneJudge(object_names=NAMES, colour_names=COLOURS + [ORIGINAL], channels=(8, 8, 16))
    scene = {"layout": "pair_h", "objects": [obj("cat", None, 17, 33), obj("apple", "red", 47, 30)]}
    targets = judge.targets([scene])
    assert targets["colours"][0, 4, 2] == 2 and targets["colours"][0, 3, 5] == COLOURS.index("red")
    assert judge.head.out_channels == 1 + 3 + 3 + 2


def test_a_judge_without_the_original_class_leaves_such_colours_out_of_the_loss(judge):
    scene = {"layout": "pair_h", "objects": [obj("cat", None, 17, 33), obj("apple", "red", 47, 30)]}
    targets = judge.targets([scene])
    assert targets["colours"][0, 4, 2] == -100 and targets["colours"][0, 3, 5] == COLOURS.index("red")
    assert targets["objects"][0, 4, 2] == NAMES.index("cat")  # what and where it is are still learnt
    only_original = judge.targets([{"layout": "single", "objects": [obj("cat", None, 17, 33)]}])
    assert torch.isfinite(judge.loss(judge(torch.zeros(1, 3, 64, 64)), only_original))
    with pytest.raises(ValueError, match="'green' is not one of the judge's"):
        judge.targets([{"layout": "single", "objects": [obj("cat", "green", 17, 33)]}])


def test_the_colour_loss_is_the_mean_over_the_coloured_objects(judge):
    coloured = {"layout": "pair_h", "objects": [obj("cat", "blue", 17, 33), obj("apple", "red", 47, 30)]}
    half = {"layout": "pair_h", "objects": [obj("cat", "blue", 17, 33), obj("apple", None, 47, 30)]}
    with torch.no_grad():
        outputs = judge(torch.zeros(1, 3, 64, 64))
    colours = outputs["colours"][0]
    both = torch.nn.functional.cross_entropy(colours[[4, 3], [2, 5]], torch.tensor([0, 1]))
    one = torch.nn.functional.cross_entropy(colours[[4], [2]], torch.tensor([0]))
    # the two losses differ by their colour terms only
    difference = judge.loss(outputs, judge.targets([coloured])) - judge.loss(outputs, judge.targets([half]))
    assert float(difference) == pytest.approx(float(both - one), abs=1e-5)


def _fake_outputs(cells):
    """Raw outputs of one 8x8 image whose cells {(i, j): (objectness logit, object, colour, (dx, dy))} stand out."""
    out = {
        "objectness": torch.full((1, 8, 8), -9.0),
        "objects": torch.zeros(1, 8, 8, 3),
        "colours": torch.zeros(1, 8, 8, 3),
        "offsets": torch.zeros(1, 8, 8, 2),
    }
    for (i, j), (logit, name, colour, offset) in cells.items():
        out["objectness"][0, i, j] = logit
        out["objects"][0, i, j, name] = 5.0
        out["colours"][0, i, j, colour] = 5.0
        out["offsets"][0, i, j] = torch.logit(torch.tensor(offset))
    return lambda images: out


def test_suppression_by_distance_keeps_objects_in_neighbouring_cells(monkeypatch):
    judge = SceneJudge(object_names=NAMES, colour_names=COLOURS + [ORIGINAL], channels=(8, 8, 16)).eval()
    # two objects 12 px apart, in neighbouring cells, and a weaker duplicate 5 px from the first one
    cells = {(4, 2): (3.0, 2, 2, (0.25, 0.5)), (4, 3): (2.0, 0, 1, (0.75, 0.5)), (3, 2): (1.0, 2, 2, (0.25, 0.875))}
    monkeypatch.setattr(judge, "forward", _fake_outputs(cells))
    (peaks,) = judge.detect(torch.zeros(1, 3, 64, 64))
    assert [(d.name, d.colour) for d in peaks] == [("cat", ORIGINAL)]  # the 3x3 maximum alone
    judge.register_to_config(nms_distance=6.0)
    (kept,) = judge.detect(torch.zeros(1, 3, 64, 64))
    assert [(d.name, d.colour) for d in kept] == [("cat", ORIGINAL), ("apple", "red")]
    assert [(d.x, d.y) for d in kept] == [pytest.approx((18, 36)), pytest.approx((30, 36))]
    # a threshold keeps those of the lower threshold's detections that score above it
    (strong,) = judge.detect(torch.zeros(1, 3, 64, 64), threshold=0.9)
    assert strong == [d for d in kept if d.score > 0.9] and len(strong) == 1


def test_suppress_near_keeps_the_strongest_of_close_detections_in_their_order():
    found = [
        Detection("cat", "red", 10, 10, 0.5),
        Detection("cat", "red", 14, 10, 0.8),
        Detection("car", "red", 20, 10, 0.6),
    ]
    assert suppress_near(found, 6.0) == [found[1], found[2]]
    assert suppress_near(found, 4.0) == found  # 4 px apart is not within 4 px
    assert suppress_near([], 6.0) == []


def test_judge_scene_compares_colour_none_with_the_original_colour():
    single = {"layout": "single", "objects": [obj("cat", None, 32, 32)]}
    assert judge_scene(single, [det("cat", ORIGINAL, 30, 30)]) == {"single_object": True, "colours": True}
    assert judge_scene(single, [det("cat", "red", 30, 30)]) == {"single_object": True, "colours": False}
    pair = {"layout": "pair_h", "objects": [obj("cat", None, 17, 32), obj("car", "blue", 47, 32)]}
    good = judge_scene(pair, [det("cat", ORIGINAL, 17, 32), det("car", "blue", 47, 32)])
    assert good == {"two_objects": True, "position": True, "colour_attribution": True}
    assert not judge_scene(pair, [det("cat", "blue", 17, 32), det("car", "blue", 47, 32)])["colour_attribution"]


def styled(objects, background="white", size="medium", palette="words", layout="single"):
    return {"layout": layout, "style": {"background": background, "size": size, "palette": palette}, "objects": objects}


def test_match_detections_pairs_the_closest_within_the_radius():
    objects = [obj("cat", "red", 20, 20, size=10), obj("car", "red", 44, 20, size=30)]
    # radius: 6 px for the 10-px cat, 15 px for the 30-px car; the closest pairs first
    found = [
        det("cat", "red", 26.5, 20),
        det("car", "red", 30, 20),
        det("car", "red", 40, 20),
        det("cat", "red", 23, 20),
    ]
    assert match_detections(objects, found) == [(0, 3), (1, 2)]
    assert match_detections(objects, found[:2]) == [(1, 1)]  # 6.5 px is too far from the cat
    assert match_detections(objects, []) == []


def test_detection_scores_count_hits_misses_extras_and_colours():
    perfect = styled([obj("apple", "red", 20, 20)])
    missed_and_extra = styled(
        [obj("cat", "red", 16, 32), obj("car", "blue", 48, 32)], layout="pair_h", background="dark", size="small"
    )
    wrong_colour = styled([obj("dog", None, 32, 32, size=40)], background="gradient", size="large", palette="original")
    wrong_name = styled([obj("cow", None, 32, 32)], palette="original")
    scenes = [perfect, missed_and_extra, wrong_colour, wrong_name]
    detections = [
        [det("apple", "red", 21, 19)],
        [det("cat", "red", 16, 30), det("bee", "red", 60, 60)],  # the car missed, a bee that is not there
        [det("dog", "blue", 45, 32)],  # 13 px off, within half of 40 px: found, in the wrong colour
        [det("pig", ORIGINAL, 32, 32)],  # in the right place, but not a cow
    ]
    report = detection_scores(scenes, detections)
    overall = report["overall"]
    assert {
        k: overall[k] for k in ("images", "objects", "detections", "matched", "true_positives", "colour_correct")
    } == {
        "images": 4,
        "objects": 5,
        "detections": 5,
        "matched": 4,
        "true_positives": 3,
        "colour_correct": 2,
    }
    assert overall["precision"] == overall["recall"] == overall["f1"] == pytest.approx(3 / 5)
    assert overall["colour_accuracy"] == pytest.approx(2 / 3)

    assert set(report["by_family"]) == {"background", "size", "palette"}
    backgrounds = report["by_family"]["background"]
    assert set(backgrounds) == {"white", "dark", "gradient"}
    assert backgrounds["white"]["precision"] == backgrounds["white"]["recall"] == pytest.approx(1 / 2)
    assert backgrounds["white"]["colour_accuracy"] == 1.0
    dark = backgrounds["dark"]
    assert (dark["precision"], dark["recall"], dark["f1"]) == (0.5, 0.5, 0.5)
    words, original = report["by_family"]["palette"]["words"], report["by_family"]["palette"]["original"]
    assert (words["objects"], words["true_positives"], words["colour_accuracy"]) == (3, 2, 1.0)
    assert (original["objects"], original["true_positives"], original["colour_accuracy"]) == (2, 1, 0.0)
    # gradient backgrounds are held out of training
    assert report["held_out_family"]["images"] == 1 and report["held_out_family"]["colour_accuracy"] == 0.0
    assert report["in_family"]["images"] == 3 and report["in_family"]["recall"] == pytest.approx(2 / 4)

    perfect_only = detection_scores([perfect], detections[:1])
    assert perfect_only["overall"]["f1"] == perfect_only["overall"]["colour_accuracy"] == 1.0
    empty = perfect_only["held_out_family"]
    assert empty["images"] == 0 and empty["precision"] is empty["recall"] is empty["f1"] is None
    nothing_found = detection_scores([perfect], [[]])["overall"]
    assert (nothing_found["precision"], nothing_found["recall"], nothing_found["f1"]) == (None, 0.0, 0.0)
    classic = detection_scores([{"layout": "single", "objects": [obj("cat", "red", 20, 20)]}], [[]])
    assert classic["by_family"] == {} and classic["in_family"]["images"] == 1


class _ListedJudge:
    """A judge whose detections are given in advance, image by image."""

    config = FrozenDict(image_size=64, threshold=0.3, nms_distance=6.0)

    def __init__(self, detections):
        self.detections, self.calls = list(detections), []

    def detect(self, images, threshold=None):
        self.calls.append((len(images), threshold))
        found, self.detections = self.detections[: len(images)], self.detections[len(images) :]
        return found


def test_detection_report_detects_batch_by_batch():
    scenes = [styled([obj("apple", "red", 20, 20)]), styled([obj("cat", None, 40, 40)], palette="original")]
    scenes.append(styled([obj("car", "blue", 30, 30)], background="dark"))
    found = [[det("apple", "red", 20, 20)], [det("cat", ORIGINAL, 41, 40)], [det("car", "red", 30, 30)]]
    judge = _ListedJudge(found)
    report = detection_report(judge, torch.zeros(3, 3, 64, 64, dtype=torch.uint8), scenes, batch_size=2)
    assert judge.calls == [(2, 0.3), (1, 0.3)]
    assert report["threshold"] == 0.3 and report["nms_distance"] == 6.0
    assert report["overall"] == detection_scores(scenes, found)["overall"]
    assert report["overall"]["f1"] == 1.0 and report["overall"]["colour_accuracy"] == pytest.approx(2 / 3)
    judge = _ListedJudge(found)
    assert (
        detection_report(judge, torch.zeros(3, 3, 64, 64, dtype=torch.uint8), scenes, threshold=0.7)["threshold"] == 0.7
    )
    assert judge.calls == [(3, 0.7)]


def test_detection_report_for_folder_reads_the_renders_and_their_scenes(judge, tmp_path):
    data = write_imagefolder(tmp_path, 6, seed=2, split="val", resolution=32)
    records = read_metadata(data)
    report = detection_report_for_folder(judge, data, batch_size=4, threshold=0.0)
    assert report["data"] == str(data) and report["threshold"] == 0.0
    assert report["overall"]["images"] == 6
    assert report["overall"]["objects"] == sum(len(r["scene"]["objects"]) for r in records)
    families = report["by_family"]
    assert sum(group["images"] for group in families["background"].values()) == 6
    assert set(families["palette"]) == {r["scene"]["style"]["palette"] for r in records}
    assert report["held_out_family"]["images"] == 0  # validation renders hold no held-out family


def test_a_saved_judge_of_colour_words_only_still_loads_and_reads_a_wide_scene(tmp_path):
    # the first world's judges: no "original" colour class, no size head, 3x3 local maxima (no nms_distance)
    torch.manual_seed(0)
    SceneJudge(object_names=NAMES, colour_names=COLOURS, channels=(8, 8, 16), threshold=0.0).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("nms_distance", "predict_size"):
        config.pop(key, None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    judge = SceneJudge.from_pretrained(tmp_path).eval()
    assert ORIGINAL not in judge.config.colour_names and judge.config.nms_distance is None
    scene = sample_scene(random.Random(3), names=NAMES, style={"palette": "original", "size": "big"})
    image = torch.from_numpy(np.array(render_scene(scene, 64))).permute(2, 0, 1)[None]
    (found,) = judge.detect(image.float() / 127.5 - 1)
    assert found and all(d.colour in COLOURS for d in found)
    assert scene["layout"] == "single" and scene["objects"][0]["colour"] is None
    # it never names the colour "original", so it fails every object in OpenMoji's colours on colour
    assert set(judge_scene(scene, found)) == {"single_object", "colours"} and not judge_scene(scene, found)["colours"]
    assert (judge.targets([scene])["colours"] == -100).all()


def test_the_shipped_judge_names_the_original_colours():
    judge = SceneJudge.from_pretrained(DEFAULT_JUDGE).eval()
    assert judge.config.colour_names[-1] == ORIGINAL and judge.config.predict_size
    scene = sample_scene(random.Random(3), style={"palette": "original", "size": "big", "background": "white"})
    image = torch.from_numpy(np.array(render_scene(scene, 64))).permute(2, 0, 1)[None]
    (found,) = judge.detect(image.float() / 127.5 - 1)
    assert judge_scene(scene, found) == {"single_object": True, "colours": True}


def test_judge_scene_checks_each_category():
    single = {"layout": "single", "objects": [obj("cat", "red", 32, 32)]}
    assert judge_scene(single, [det("cat", "red", 30, 30)]) == {"single_object": True, "colours": True}
    assert judge_scene(single, [det("cat", "blue", 30, 30)]) == {"single_object": True, "colours": False}
    assert judge_scene(single, [det("car", "red", 30, 30)]) == {"single_object": False, "colours": False}

    pair = {"layout": "pair_h", "objects": [obj("cat", "red", 17, 32), obj("car", "blue", 47, 32)]}
    good = judge_scene(pair, [det("cat", "red", 17, 32), det("car", "blue", 47, 32)])
    assert good == {"two_objects": True, "position": True, "colour_attribution": True}
    swapped = judge_scene(pair, [det("cat", "blue", 47, 32), det("car", "red", 17, 32)])
    assert swapped == {"two_objects": True, "position": False, "colour_attribution": False}
    vertical = dict(pair, layout="pair_v")
    assert judge_scene(vertical, [det("cat", "red", 40, 10), det("car", "blue", 10, 50)])["position"]
    assert not judge_scene(pair, [det("cat", "red", 17, 32)])["two_objects"]

    count = {"layout": "count", "objects": [obj("apple", "red", x, 32) for x in (11, 32, 53)]}
    assert judge_scene(count, [det("apple", "red", x, 32) for x in (11, 32, 53)]) == {"counting": True}
    assert judge_scene(count, [det("apple", "red", x, 32) for x in (11, 53)]) == {"counting": False}
    assert judge_scene(count, [det("apple", "red", x, 32) for x in (5, 20, 40, 60)]) == {"counting": False}


def test_category_accuracy_averages_geneval_categories_only():
    report = category_accuracy(
        [{"single_object": True, "colours": False}, {"single_object": False, "colours": False}, {"three_objects": True}]
    )
    assert report["single_object"] == 0.5 and report["colours"] == 0.0 and report["three_objects"] == 1.0
    assert report["overall"] == 0.25


def test_frechet_distance_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # diagonal Gaussians: |mu_a - mu_b|^2 + sum (sigma_a - sigma_b)^2
    b = torch.randn(20000, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0]) + 1.0
    assert frechet_distance(a, b) == pytest.approx(3.0 + 0 + 1 + 4, rel=0.05)


def test_r_precision():
    g = torch.Generator().manual_seed(0)
    texts = torch.nn.functional.normalize(torch.randn(120, 16, generator=g), dim=-1)
    rows = list(range(120))
    assert r_precision(texts, texts, rows) == 1.0
    assert r_precision(-texts, texts, rows) == 0.0
    noise = torch.nn.functional.normalize(torch.randn(120, 16, generator=g), dim=-1)
    assert r_precision(noise, texts, rows) < 0.2


def test_names_all_objects_accepts_plurals():
    scene = {"objects": [obj("cherry", "red", 11, 32), obj("cherry", "red", 32, 32)]}
    assert names_all_objects("two red cherries", scene)
    assert not names_all_objects("two red apples", scene)


def test_select_prompts_spreads_over_layouts_without_repeats():
    rng = random.Random(0)
    records = []
    for i in range(400):
        scene = sample_scene(rng)
        records.append({"text": f"caption {i % 300}", "scene": scene})
    chosen = select_prompts(records, 50)
    assert len(chosen) == 50 and len({r["text"] for r in chosen}) == 50
    layouts = [r["scene"]["layout"] for r in chosen]
    assert all(layouts.count(layout) == 10 for layout in set(layouts))


def test_evaluate_text_to_image_reports_every_score(judge, tmp_path, tiny_pipeline_dir):
    # the text-to-image models are trained on, and judged on the prompts of, the classic world
    data = write_imagefolder(tmp_path, 24, seed=1, split="test", resolution=32, world="classic")
    pipeline = TextToImagePipeline(**get_dummy_unclip_components())
    pipeline.set_progress_bar_config(disable=True)
    captioner = CaptionPipeline.from_pretrained(tiny_pipeline_dir)
    report = evaluate_text_to_image(
        pipeline,
        judge,
        data,
        captioner=captioner,
        num_prompts=10,
        images_per_prompt=2,
        batch_size=8,
        stages=True,
        prior_num_inference_steps=2,
        decoder_num_inference_steps=2,
    )
    assert report["images"] == 20 and report["prompts"] == 10 and report["reference_images"] == 14
    trip = report["image_round_trip"]  # render -> caption -> image, judged against the render's scene graph
    assert 0 <= trip["caption_exact"] <= 1 and 0 <= trip["judge"]["overall"] <= 1 and len(trip["examples"]) == 5
    # a captioner that states each render's own caption is exact every time; one that swaps them, never
    chosen = select_prompts(read_metadata(data), 10)
    real, scenes = load_images(data, chosen, "file_name", 32), [r["scene"] for r in chosen]
    texts = [r["text"] for r in chosen]
    for said, exact in ((texts, 1.0), (texts[1:] + texts[:1], 0.0)):
        says = iter(said)
        captioner = lambda images, says=says: SimpleNamespace(captions=[[next(says)] for _ in images])  # noqa: E731
        trip = image_round_trip(pipeline, captioner, judge, real, scenes, 4, 0, decoder_num_inference_steps=2)
        assert trip["caption_exact"] == exact and [e["caption"] for e in trip["examples"]] == said[:5]
    for side in ("generated", "real_renders"):
        scores = report[side]
        assert 0 <= scores["r_precision"] <= 1 and 0 <= scores["round_trip"] <= 1
        assert scores["frechet_distance"] >= 0 and 0 <= scores["judge"]["overall"] <= 1
    records = select_prompts(read_metadata(data), 10)
    if "count" in {r["scene"]["layout"] for r in records}:
        assert "counting" in report["generated"]["judge"]
    stages = report["stages"]  # the prompts include two left/right pairs, whose renders are mirrored for the prior
    assert stages["prior_mirror_prompts"] == len(mirror_rows(records)) == 2
    assert 0 <= stages["prior_mirror_accuracy"] <= 1
    with pytest.raises(ValueError, match="num_prompts"):
        evaluate_text_to_image(pipeline, judge, data, num_prompts=1)


def test_stage_scores_line_up_prompts_and_renders(judge, tmp_path):
    data = write_imagefolder(tmp_path, 12, seed=1, split="test", resolution=32, world="classic")
    pipeline = TextToImagePipeline(**get_dummy_unclip_components())
    pipeline.set_progress_bar_config(disable=True)
    records = select_prompts(read_metadata(data), 6)
    real = load_images(data, records, "file_name", pipeline.clip.config.vision_config.image_size)
    real_embeds = embed_images(pipeline.clip, pipeline.image_processor, real)
    args = dict(
        prompts=[r["text"] for r in records],
        scenes=[r["scene"] for r in records],
        batch_size=4,
        prior_num_inference_steps=2,
        decoder_num_inference_steps=2,
    )
    decoded, run_decoder = [], pipeline.run_decoder

    def recording_decoder(embeds, text, *rest, **kwargs):
        negative, prompt = text.negatives().states, text.prompts().states
        decoded.append((len(embeds), torch.equal(negative, prompt)))
        return run_decoder(embeds, text, *rest, **kwargs)

    pipeline.run_decoder = recording_decoder
    scores = stage_scores(pipeline, judge, real_embeds=real_embeds, **args)
    del pipeline.run_decoder
    assert -1 <= scores["prior_cosine_to_real"] < 0.99
    assert 0 <= scores["decoder_from_real_embeddings"]["overall"] <= 1
    assert 0 <= scores["decoder_from_real_embeddings_without_prompt"]["overall"] <= 1
    # each batch is drawn twice from the same embeddings: with its prompts, then with the empty prompt only
    assert decoded == [(4, False), (4, True), (2, False), (2, True)]
    # a prior that returns each prompt's own render embedding scores 1 on both of its counts
    # and is closer to each left/right render than to its mirror; a prior that returns the mirrors scores 0 there
    rows = mirror_rows(records)
    assert rows, "the six prompts spread over the layouts include a left/right pair"
    mirrored_embeds = embed_images(pipeline.clip, pipeline.image_processor, real[rows].flip(-1))
    args.update(mirror_prompts=rows, mirrored_embeds=mirrored_embeds)
    own = torch.nn.functional.normalize(real_embeds, dim=-1)
    chunks = iter(own.split(4))
    pipeline.run_prior = lambda *a, **k: next(chunks)
    scores = stage_scores(pipeline, judge, real_embeds=real_embeds, **args)
    assert scores["prior_cosine_to_real"] == pytest.approx(1.0, abs=1e-5)
    assert scores["prior_nearest_is_own_render"] == 1.0
    assert scores["prior_mirror_prompts"] == len(rows) and scores["prior_mirror_accuracy"] == 1.0
    swapped = own.clone()
    swapped[rows] = torch.nn.functional.normalize(mirrored_embeds, dim=-1)
    chunks = iter(swapped.split(4))
    assert stage_scores(pipeline, judge, real_embeds=real_embeds, **args)["prior_mirror_accuracy"] == 0.0
    assert "autoencoder_round_trip" not in scores  # no renders given


class _IdentityAutoencoder:
    """encode and decode as the identity, in the shape of diffusers' AutoencoderKL outputs."""

    device, dtype = torch.device("cpu"), torch.float32

    def encode(self, x):
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=x))

    def decode(self, z):
        return SimpleNamespace(sample=z)


def test_autoencoder_round_trip_judges_the_renders_as_the_autoencoder_gives_them_back(judge, tmp_path, monkeypatch):
    import genvl.evaluation.text_to_image as t2i

    data = write_imagefolder(tmp_path, 12, seed=1, split="test", resolution=32, world="classic")
    records = select_prompts(read_metadata(data), 6)
    real = load_images(data, records, "file_name", 32)
    # through an autoencoder that gives every image back unchanged, the renders come back exactly, batch by batch
    assert torch.equal(autoencoder_round_trip(_IdentityAutoencoder(), real, batch_size=4), real)

    pipeline = TextToImagePipeline(**get_dummy_unclip_components())
    pipeline.set_progress_bar_config(disable=True)
    scenes = [r["scene"] for r in records]
    args = dict(
        prompts=[r["text"] for r in records],
        scenes=scenes,
        batch_size=4,
        prior_num_inference_steps=1,
        decoder_num_inference_steps=1,
        real_embeds=embed_images(pipeline.clip, pipeline.image_processor, real),
    )
    judged = []

    def recording_judge(judge, images, *rest):
        judged.append(images)
        return judge_images(judge, images, *rest)

    captioned = []

    def captioner(images):
        # names its scene's objects for the first three renders only
        first = len(captioned)
        captioned.extend(torch.from_numpy(np.asarray(image)).permute(2, 0, 1) for image in images)
        texts = [records[i]["text"] if i < 3 else "a plain background" for i in range(first, len(captioned))]
        return SimpleNamespace(captions=[[text] for text in texts])

    monkeypatch.setattr(t2i, "judge_images", recording_judge)
    scores = stage_scores(pipeline, judge, real_images=real, captioner=captioner, **args)
    with torch.no_grad():
        decoded = pipeline.vae.decode(pipeline.vae.encode(real.float() / 127.5 - 1).latent_dist.mean).sample
    expected = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    # the last images judged are the renders as the pipeline's autoencoder gives them back, in prompt order
    assert len(judged) == 3 and torch.equal(judged[-1], expected)
    assert scores["autoencoder_round_trip"] == judge_images(judge, expected, scenes, list(range(len(scenes))), 4)
    # and the captioner reads those same images: 3 of the 6 captions name their scene's objects
    assert torch.equal(torch.stack(captioned), expected)
    assert scores["autoencoder_caption_round_trip"] == 0.5
    assert "autoencoder_caption_round_trip" not in stage_scores(pipeline, judge, real_images=real, **args)
    # a pixel decoder has no autoencoder to judge
    pixel_pipeline = TextToImagePipeline(**get_dummy_unclip_components(latent=False))
    pixel_pipeline.set_progress_bar_config(disable=True)
    assert "autoencoder_round_trip" not in stage_scores(pixel_pipeline, judge, real_images=real, **args)


def test_train_judge_saves_a_judge_with_a_chosen_threshold(tmp_path):
    import json

    from .scripts import recipe

    train_judge = recipe("train_judge")

    train = write_imagefolder(tmp_path, 16, seed=0, split="train", resolution=32)
    val = write_imagefolder(tmp_path, 8, seed=0, split="val", resolution=32)
    losses = train_judge.main(
        [
            "--train_data_dir",
            str(train),
            "--eval_data_dir",
            str(val),
            "--output_dir",
            str(tmp_path / "run"),
            "--resolution",
            "32",
            "--train_batch_size",
            "8",
            "--width",
            "8",
            "--max_train_steps",
            "3",
            "--lr_warmup_steps",
            "1",
            "--logging_steps",
            "1",
        ]
    )
    assert len(losses) == 3
    report = json.loads((tmp_path / "run" / "real_accuracy.json").read_text())
    judge = SceneJudge.from_pretrained(tmp_path / "run" / "judge")
    assert judge.config.colour_names[-1] == ORIGINAL and len(judge.config.colour_names) == 10
    assert judge.config.threshold == report["threshold"] in train_judge.THRESHOLDS
    assert judge.config.nms_distance == report["nms_distance"] in train_judge.NMS_DISTANCES
    assert report["accuracy"] == report["by_threshold"][str(report["threshold"])]
    # the threshold and suppression of the highest detection F1 (then the higher threshold, then by distance)
    rows = report["detection_f1"]
    assert len(rows) == len(train_judge.THRESHOLDS) * len(train_judge.NMS_DISTANCES)
    best = max(rows, key=lambda r: (r["f1"], r["threshold"], r["nms_distance"] or 0))
    assert (best["threshold"], best["nms_distance"]) == (report["threshold"], report["nms_distance"])
    detection = report["detection"]
    assert detection["overall"]["f1"] == best["f1"] and detection["overall"]["images"] == 8
    assert set(detection) == {"overall", "by_family", "in_family", "held_out_family"}
    assert set(detection["by_family"]) == {"background", "size", "palette"}
    assert report["data"] == str(val)


def test_train_judge_fine_tunes_a_saved_judge_and_refuses_one_of_other_classes(tmp_path):
    from genvl.world.sprites import COLOURS as WORLD_COLOURS
    from genvl.world.sprites import OBJECTS

    from .scripts import recipe

    train_judge = recipe("train_judge")
    train = write_imagefolder(tmp_path, 16, seed=0, split="train", resolution=32)
    classes = {"object_names": sorted(OBJECTS), "colour_names": sorted(WORLD_COLOURS) + [ORIGINAL]}
    start = SceneJudge(**classes, channels=(8, 16, 32), image_size=32, predict_size=True, threshold=0.2)
    start.save_pretrained(tmp_path / "start")
    args = ["--train_data_dir", str(train), "--eval_data_dir", "", "--resolution", "32", "--train_batch_size", "8"]
    args += ["--max_train_steps", "2", "--learning_rate", "1e-3", "--augment", "jpeg,light"]
    run = ["--output_dir", str(tmp_path / "run"), "--pretrained_model_name_or_path", str(tmp_path / "start")]
    losses = train_judge.main(args + run)
    assert len(losses) == 2 and all(np.isfinite(loss) for loss in losses)
    tuned = SceneJudge.from_pretrained(tmp_path / "run" / "judge")
    # the saved judge's shape and settings, its weights moved from where they started (not a fresh draw)
    assert tuple(tuned.config.channels) == (8, 16, 32) and tuned.config.threshold == 0.2
    before, after = start.state_dict(), tuned.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    fresh = SceneJudge(**classes, channels=(8, 16, 32), image_size=32, predict_size=True)
    distance = lambda a: sum((a[k] - before[k]).abs().sum() for k in before)  # noqa: E731
    assert distance(after) < distance(fresh.state_dict()) / 10

    def refused(folder, *extra):
        output = tmp_path / f"refused-{len(list(tmp_path.iterdir()))}"
        with pytest.raises(ValueError) as error:
            train_judge.main(
                args + ["--output_dir", str(output), "--pretrained_model_name_or_path", str(folder)] + list(extra)
            )
        assert not output.exists()  # refused before the run wrote anything
        return str(error.value)

    assert "--width 16" in refused(tmp_path / "start", "--width", "16")
    assert "--resolution is 64" in refused(tmp_path / "start", "--resolution", "64")
    other = SceneJudge(["cat", "dog"], ["red", ORIGINAL], channels=(8, 16, 32), image_size=32, predict_size=True)
    other.save_pretrained(tmp_path / "other")
    assert "object_names are not the world's (2, not" in refused(tmp_path / "other")
    sizeless = SceneJudge(**classes, channels=(8, 16, 32), image_size=32)
    sizeless.save_pretrained(tmp_path / "sizeless")
    assert "does not predict sizes" in refused(tmp_path / "sizeless")
    with pytest.raises(FileNotFoundError, match="no such judge folder"):
        train_judge.main(args + ["--output_dir", str(tmp_path / "x"), "--pretrained_model_name_or_path", "nowhere"])


def test_eval_judge_command_reports_each_family(tmp_path, capsys):
    from genvl.cli import main

    data = write_imagefolder(tmp_path / "renders", 6, seed=4, split="test", resolution=32)
    out = tmp_path / "report.json"
    assert main(["eval", "judge", "--data", str(data), "--output", str(out)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report == json.loads(out.read_text())
    assert report["overall"]["images"] == 6 and set(report["by_family"]) == {"background", "size", "palette"}
    table = captured.err.splitlines()
    assert table[0].split()[:3] == ["detection", "images", "objects"] and table[1].split()[:2] == ["all", "6"]
    with pytest.raises(SystemExit) as usage:
        main(["eval", "judge", "--data", str(data), "--threshold", "1.5"])
    assert usage.value.code == 2 and "--threshold" in capsys.readouterr().err


def test_a_large_detection_suppresses_its_own_echoes_but_not_a_neighbour():
    large = Detection("cat", "red", 30, 30, 0.9, size=44.0)
    echo = Detection("cat", "red", 40, 30, 0.6, size=40.0)  # 10 px away: inside 0.45 x 44
    neighbour = Detection("dog", "red", 30, 52, 0.7, size=20.0)  # 22 px away: outside it
    small = Detection("bee", "red", 12, 12, 0.5, size=12.0)
    assert suppress_near([large, echo, neighbour, small], 6.0) == [large, neighbour, small]
    assert suppress_near([large, echo], 6.0) == [large]
    assert suppress_near([Detection("cat", "red", 30, 30, 0.9), echo], 6.0) == [
        Detection("cat", "red", 30, 30, 0.9),
        echo,
    ]


def test_size_predicting_judge_learns_and_reports_sizes():
    judge = SceneJudge(["cat", "dog"], ["red", ORIGINAL], channels=(8, 8, 8), image_size=32, predict_size=True)
    scene = {"objects": [{"name": "dog", "colour": None, "bbox": [4, 4, 36, 20]}]}
    targets = judge.targets([scene])
    assert targets["sizes"][0, 1, 2].item() == pytest.approx(0.0)  # log(32 / 32) at the centre's cell
    outputs = judge(torch.zeros(1, 3, 32, 32))
    assert outputs["sizes"].shape == (1, 4, 4)
    loss = judge.loss(outputs, targets)
    outputs_right = {**outputs, "sizes": targets["sizes"]}
    assert judge.loss(outputs_right, targets) < loss  # the size is part of the loss
    (found,) = judge.detect(torch.zeros(1, 3, 32, 32), threshold=0.0)
    assert found and all(d.size is not None and d.size > 0 for d in found)
    old = SceneJudge(["cat", "dog"], ["red"], channels=(8, 8, 8), image_size=32)
    assert "sizes" not in old.targets([{"objects": []}]) and old(torch.zeros(1, 3, 32, 32))["sizes"] is None


def test_augmented_judge_targets_follow_the_flipped_and_moved_objects():
    from genvl.training.augment import augment_batch, scene_room
    from genvl.world.sprites import COLOURS as WORLD_COLOURS
    from genvl.world.sprites import OBJECTS

    from .scripts import recipe

    train_judge = recipe("train_judge")
    scenes = [sample_scene(random.Random(i), style={"background": "white"}) for i in range(64)]
    arrays = np.stack([np.asarray(render_scene(scene), dtype=np.float32) for scene in scenes])
    pixels = torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1
    rooms = torch.tensor([scene_room(scene) for scene in scenes])
    out, flipped, shifts = augment_batch(pixels, rooms, ("flip", "shift"), torch.Generator().manual_seed(3))
    assert 0 < int(flipped.sum()) < 64 and int((shifts != 0).any(1).sum()) > 32
    moved = [train_judge.moved_scene(s, bool(f), *d) for s, f, d in zip(scenes, flipped, shifts.float().tolist())]
    judge = SceneJudge(object_names=sorted(OBJECTS), colour_names=sorted(WORLD_COLOURS) + [ORIGINAL])
    targets = judge.targets(moved)
    singles = [i for i, scene in enumerate(scenes) if len(scene["objects"]) == 1]
    assert len(singles) > 8
    for i in singles:  # the target centre is the centre of the ink in the augmented image
        ys, xs = torch.nonzero((out[i] - 1).abs().amax(0) > 0.2, as_tuple=True)
        centre = torch.tensor([xs.min() + xs.max() + 1, ys.min() + ys.max() + 1]) / 2 / judge.cell
        row, col = (int(v) for v in torch.nonzero(targets["objectness"][i])[0])
        target = torch.tensor([col, row]) + targets["offsets"][i, row, col]
        assert (target - centre).abs().max() < 0.3, (i, target, centre)


def test_train_judge_trains_augmented_and_refuses_an_unknown_kind(tmp_path):
    from .scripts import recipe

    train_judge = recipe("train_judge")
    train = write_imagefolder(tmp_path, 16, seed=0, split="train", resolution=32)
    args = ["--train_data_dir", str(train), "--eval_data_dir", "", "--output_dir", str(tmp_path / "run")]
    args += ["--resolution", "32", "--train_batch_size", "8", "--width", "8", "--max_train_steps", "2"]
    losses = train_judge.main(args + ["--augment", "flip,shift,light"])
    assert len(losses) == 2 and all(np.isfinite(loss) for loss in losses)
    with pytest.raises(ValueError, match="unknown augmentation 'zoom'"):
        train_judge.TrainJudgeArgs(train_data_dir=str(train), augment="zoom")
    with pytest.raises(ValueError, match="--augment squash is for captioners"):
        train_judge.TrainJudgeArgs(train_data_dir=str(train), augment="flip,squash")
    with pytest.raises(ValueError, match="--augment letterbox is for captioners"):
        train_judge.TrainJudgeArgs(train_data_dir=str(train), augment="letterbox,light")
