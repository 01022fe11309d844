import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from genvl.evaluation import caption_metrics, captioning, evaluate_captioner, scene_graph_accuracy
from genvl.io.imagefolder import read_metadata
from genvl.world import sample_scene, scene_captions
from genvl.world.dataset import write_imagefolder


def single(name, colour, size, position):
    return {"layout": "single", "objects": [{"name": name, "colour": colour, "size": size, "position": position}]}


def group(layout, *objects):
    keys = ("name", "colour", "size", "position")
    return {"layout": layout, "objects": [dict(zip(keys, obj)) for obj in objects]}


SMALL_RED_APPLE_LEFT = single("apple", "red", "small", "left")
PAIR = group("pair_h", ("banana", "yellow", "medium", "left"), ("pear", "purple", "medium", "right"))
THREE_LEMONS = group("count", *[("lemon", "green", "group", "row")] * 3)
ROW = group(
    "row", ("apple", "red", "group", "left"), ("pear", "blue", "group", "centre"), ("tree", "green", "group", "right")
)
FIELDS = ("scene_exact_match", "parse_rate", "names", "colours", "counts", "positions")

# (caption, scene, expected 0/1 for FIELDS, expected single_name_colour (None: not a single scene))
CASES = {
    "perfect": ("a small red apple on the left", SMALL_RED_APPLE_LEFT, (1, 1, 1, 1, 1, 1), 1),
    "wrong colour": ("a large green pear at the top", single("pear", "blue", "large", "top"), (0, 1, 1, 0, 1, 1), 0),
    "wrong position": ("a small red apple on the right", SMALL_RED_APPLE_LEFT, (0, 1, 1, 1, 1, 0), 1),
    "wrong size": ("a large red apple on the left", SMALL_RED_APPLE_LEFT, (0, 1, 1, 1, 1, 1), 1),
    # the occupied places are right, but which object is where is wrong
    "swapped pair": ("a purple pear to the left of a yellow banana", PAIR, (0, 1, 1, 1, 1, 0), None),
    "swapped colours": ("a purple banana to the left of a yellow pear", PAIR, (0, 1, 1, 0, 1, 1), None),
    "unparseable": ("a red", ROW, (0, 0, 0, 0, 0, 0), None),
    "count": ("three green lemons", THREE_LEMONS, (1, 1, 1, 1, 1, 1), None),
    "wrong count": ("two green lemons", THREE_LEMONS, (0, 1, 1, 1, 0, 1), None),
}


@pytest.mark.parametrize("case", CASES)
def test_scene_graph_accuracy_single_cases(case):
    caption, scene, expected, name_colour = CASES[case]
    result = scene_graph_accuracy([caption], [scene])
    assert {field: result[field] for field in FIELDS} == dict(zip(FIELDS, map(float, expected)))
    assert result[f"exact_{scene['layout']}"] == expected[0]
    if name_colour is None:
        assert math.isnan(result["single_name_colour"])
    else:
        assert result["single_name_colour"] == name_colour


def test_scene_graph_accuracy_averages_over_scenes_and_layouts():
    captions, scenes, _, _ = zip(*CASES.values())
    result = scene_graph_accuracy(list(captions), list(scenes))
    assert result["scene_exact_match"] == pytest.approx(2 / 9)
    assert result["parse_rate"] == pytest.approx(8 / 9)
    assert result["positions"] == pytest.approx(6 / 9)
    assert result["colours"] == pytest.approx(6 / 9)
    assert result["single_name_colour"] == pytest.approx(3 / 4)
    assert result["exact_single"] == pytest.approx(1 / 4)
    assert result["exact_count"] == pytest.approx(1 / 2)
    assert result["exact_pair_h"] == 0.0 and result["exact_row"] == 0.0
    assert math.isnan(result["exact_pair_v"])


def test_scene_graph_accuracy_accepts_every_phrasing_of_random_scenes():
    rng = random.Random(0)
    scenes = [sample_scene(rng) for _ in range(40)]
    phrasings = [scene_captions(scene) for scene in scenes]
    for k in range(3):
        assert scene_graph_accuracy([p[k] for p in phrasings], scenes)["scene_exact_match"] == 1.0


def test_scene_graph_accuracy_needs_one_caption_per_scene():
    with pytest.raises(ValueError, match="one prediction per scene"):
        scene_graph_accuracy(["a small red apple on the left"], [SMALL_RED_APPLE_LEFT, PAIR])


def world_references(count=8, seed=1):
    rng = random.Random(seed)
    return {str(i): scene_captions(sample_scene(rng), rng) for i in range(count)}


class RecordingMeteor(captioning.Meteor):
    instances = []

    def __init__(self):
        super().__init__()
        RecordingMeteor.instances.append(self)


def test_caption_metrics_rank_exact_captions_above_wrong_ones(monkeypatch):
    monkeypatch.setattr(captioning, "Meteor", RecordingMeteor)
    references = world_references()
    exact = caption_metrics({key: refs[0] for key, refs in references.items()}, references)
    # each image gets another image's caption; one prediction is empty, as an untrained model may give
    keys = list(references)
    wrong = {key: references[keys[i - 1]][0] for i, key in enumerate(keys)} | {keys[0]: ""}
    wrong = caption_metrics(wrong, references)

    assert list(exact) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"]
    for metric in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L"):
        assert exact[metric] == pytest.approx(1.0, abs=1e-6)
        assert wrong[metric] < 0.8
    assert exact["BLEU-4"] > wrong["BLEU-4"] + 0.5
    assert exact["CIDEr-D"] > 2.0 > wrong["CIDEr-D"] * 2
    # both METEOR subprocesses have exited
    assert [m.meteor_p.returncode for m in RecordingMeteor.instances] == [0, 0]


def test_caption_metrics_checks_ids_before_starting_java():
    with pytest.raises(ValueError, match="same ids"):
        caption_metrics({"a": "a red apple"}, {"b": ["a red apple"]})
    with pytest.raises(ValueError, match="non-empty list"):
        caption_metrics({"a": "a red apple"}, {"a": []})


def test_caption_metrics_says_java_is_missing(monkeypatch):
    monkeypatch.setattr(captioning.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="need Java"):
        caption_metrics({"a": "a red apple"}, {"a": ["a red apple"]})


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    return write_imagefolder(tmp_path_factory.mktemp("world"), 8, seed=0, split="test", resolution=32)


class FakeCaptioner:
    """Captions each image with `caption_of(record)` first and a worse caption second; records its calls."""

    def __init__(self, data_dir, caption_of):
        self.caption_of = {r["file_name"]: caption_of(r) for r in read_metadata(data_dir)}
        self.calls = []

    def __call__(self, images, **decoding):
        self.calls.append((len(images), decoding))
        return SimpleNamespace(captions=[[self.caption_of[Path(image).name], "a"] for image in images])


@pytest.fixture
def recorded_caption_metrics(monkeypatch):
    """Replaces the Java-backed COCO metrics (tested above) by a recorder, to keep these tests fast."""
    calls = []

    def record(predictions, references):
        calls.append((predictions, references))
        return {"CIDEr-D": 1.5}

    monkeypatch.setattr(captioning, "caption_metrics", record)
    return calls


def test_evaluate_captioner_scores_the_best_caption_of_every_image(test_split, recorded_caption_metrics):
    records = read_metadata(test_split)
    captioner = FakeCaptioner(test_split, lambda record: record["text"])
    progress_totals = []

    def progress(batches, total):
        progress_totals.append(total)
        return batches

    report = evaluate_captioner(captioner, test_split, batch_size=3, progress=progress, num_beams=2)

    assert report["num_images"] == 8
    assert report["scene_exact_match"] == 1.0 and report["parse_rate"] == 1.0
    groups = [report[group] for group in ("in_family", "held_out_family") if group in report]
    assert sum(group["num_images"] for group in groups) == 8
    assert all(group["scene_exact_match"] == 1.0 for group in groups)
    assert set(report["families"]) == {"background", "size", "palette"}
    assert report["degenerate"] == 0 and report["degenerate_examples"] == []
    assert report["CIDEr-D"] == 1.5
    assert captioner.calls == [(3, {"num_beams": 2}), (3, {"num_beams": 2}), (2, {"num_beams": 2})]
    assert progress_totals == [3]
    [(predictions, references)] = recorded_caption_metrics
    assert list(predictions.values()) == [r["text"] for r in records]
    assert list(references.values()) == [r["captions"] for r in records]
    assert len(references["0"]) == 3
    assert report["examples"][:2] == [
        {"file_name": r["file_name"], "prediction": r["text"], "reference": r["text"]} for r in records[:2]
    ]
    assert len(report["examples"]) == 5


def test_evaluate_captioner_with_a_constant_wrong_caption(test_split, recorded_caption_metrics):
    # parses, but no scene pairs two objects of the same kind
    captioner = FakeCaptioner(test_split, lambda record: "a red apple to the left of a red apple")
    report = evaluate_captioner(captioner, test_split, limit=5)
    assert report["num_images"] == 5 and captioner.calls == [(5, {})]
    assert report["parse_rate"] == 1.0
    assert report["scene_exact_match"] == 0.0
    single = [family for values in report["families"].values() for family in values.values() if family["count"]]
    assert single and all(family["name"] == 0.0 and family["exact"] == 0.0 for family in single)


def test_evaluate_captioner_needs_scene_graphs_in_every_record_or_none(tmp_path):
    records = [
        {"file_name": "0.png", "text": "a red apple on the left", "scene": SMALL_RED_APPLE_LEFT},
        {"file_name": "1.png", "text": "a red apple"},
    ]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    with pytest.raises(ValueError, match="record '1.png' has no 'scene' but other records have one"):
        evaluate_captioner(FakeCaptioner(tmp_path, lambda record: "x"), tmp_path)
