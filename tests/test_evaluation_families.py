"""`evaluate_captioner` and `genvl eval caption` per style family, on degenerate captions, and on folders of
reference captions only."""

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from genvl.cli import main
from genvl.evaluation import captioning, evaluate_captioner
from genvl.evaluation.captioning import family_accuracy, is_degenerate
from genvl.io.imagefolder import read_metadata
from genvl.world import scene_captions
from genvl.world.dataset import write_imagefolder
from genvl.world.sprites import COLOURS, OBJECTS


class FixedCaptioner:
    """Captions each image with the caption its file name maps to (and a worse one second)."""

    def __init__(self, captions: dict[str, str]):
        self.captions = captions

    def __call__(self, images, **decoding):
        return SimpleNamespace(captions=[[self.captions[Path(image).name], "a"] for image in images])


@pytest.fixture
def recorded_caption_metrics(monkeypatch):
    """Replaces the Java-backed COCO metrics (tested in test_evaluation.py) by a recorder."""
    calls = []

    def record(predictions, references):
        calls.append((predictions, references))
        return {"CIDEr-D": 1.5}

    monkeypatch.setattr(captioning, "caption_metrics", record)
    return calls


def merge_folders(out: Path, parts: dict, keep=lambda name, record: True) -> tuple[Path, dict[str, list[dict]]]:
    """One imagefolder at `out` of the kept records of every part folder, in order, file names prefixed with the
    part's name; returns it and each part's kept records (with their new file names)."""
    out.mkdir()
    kept = {}
    with open(out / "metadata.jsonl", "w") as meta:
        for name, folder in parts.items():
            kept[name] = []
            for record in read_metadata(folder):
                if not keep(name, record):
                    continue
                file_name = f"{name}-{record['file_name']}"
                shutil.copy(folder / record["file_name"], out / file_name)
                record = {**record, "file_name": file_name}
                meta.write(json.dumps(record) + "\n")
                kept[name].append(record)
    return out, kept


def changed_caption(scene: dict, **changes) -> str:
    """The canonical caption of a single-object scene whose object is changed, e.g. size=None (no size word)."""
    return scene_captions({**scene, "objects": [{**scene["objects"][0], **changes}]})[0]


def other(values, value):
    return next(v for v in sorted(values) if v != value)


@pytest.fixture(scope="module")
def family_split(tmp_path_factory):
    """A test split of single objects on white (colour words) and on gradient (held out; original colours),
    multi-object scenes on white, and classic-world scenes; each part's records."""
    tmp = tmp_path_factory.mktemp("families")
    white = {"background": "white", "size": "huge", "palette": "words"}
    gradient = {"background": "gradient", "size": "huge", "palette": "original"}
    parts = {
        "white": write_imagefolder(tmp / "white", 6, split="test", resolution=32, style=white),
        "gradient": write_imagefolder(tmp / "gradient", 4, split="test", resolution=32, style=gradient),
        "many": write_imagefolder(tmp / "many", 8, split="test", resolution=32, style={**white, "size": "medium"}),
        "classic": write_imagefolder(tmp / "classic", 3, split="test", resolution=32, world="classic"),
    }
    return merge_folders(tmp / "merged", parts, keep=lambda name, r: name != "many" or r["scene"]["layout"] != "single")


def family_captions(parts: dict) -> dict[str, str]:
    """White singles: 2 right, 1 without its size word, 1 wrong colour, 1 wrong name, 1 degenerate. Gradient
    singles (no colour words): 1 right, 1 with a colour word, 1 degenerate, 1 wrong name. The rest: right."""
    captions = {r["file_name"]: r["text"] for records in parts.values() for r in records}
    white = [r["scene"] for r in parts["white"]]
    names = [r["file_name"] for r in parts["white"]]
    captions[names[2]] = changed_caption(white[2], size=None)
    captions[names[3]] = changed_caption(white[3], colour=other(COLOURS, white[3]["objects"][0]["colour"]))
    captions[names[4]] = changed_caption(white[4], name=other(OBJECTS, white[4]["objects"][0]["name"]))
    obj = white[5]["objects"][0]
    captions[names[5]] = f"a {obj['colour']} {obj['name']} {obj['name']} {obj['name']}"
    gradient = [r["scene"] for r in parts["gradient"]]
    names = [r["file_name"] for r in parts["gradient"]]
    captions[names[1]] = changed_caption(gradient[1], colour="red")
    captions[names[2]] = "A, a. A!"
    captions[names[3]] = changed_caption(gradient[3], name=other(OBJECTS, gradient[3]["objects"][0]["name"]))
    return captions


def test_the_split_is_as_the_tests_need(family_split):
    _, parts = family_split
    styles = {
        name: {json.dumps(r["scene"]["style"], sort_keys=True) for r in records} for name, records in parts.items()
    }
    assert [len(styles[name]) for name in parts] == [1, 1, 1, 1]
    assert all(r["scene"]["layout"] == "single" for name in ("white", "gradient") for r in parts[name])
    assert all(r["scene"]["objects"][0]["size"] == "large" for r in parts["white"])
    assert len(parts["many"]) >= 3


def test_scores_per_family_group_and_family(family_split, recorded_caption_metrics):
    folder, parts = family_split
    captions = family_captions(parts)
    report = evaluate_captioner(FixedCaptioner(captions), folder)
    many, classic = len(parts["many"]), len(parts["classic"])
    classic_singles = sum(r["scene"]["layout"] == "single" for r in parts["classic"])
    in_family = 6 + many + classic

    assert report["num_images"] == in_family + 4
    assert report["scene_exact_match"] == pytest.approx((2 + many + classic + 1) / (in_family + 4))
    assert report["in_family"]["num_images"] == in_family
    assert report["in_family"]["scene_exact_match"] == pytest.approx((2 + many + classic) / in_family)
    assert report["in_family"]["parse_rate"] == pytest.approx((5 + many + classic) / in_family)
    assert report["in_family"]["single_name_colour"] == pytest.approx((3 + classic_singles) / (6 + classic_singles))
    assert report["held_out_family"]["num_images"] == 4
    assert report["held_out_family"]["scene_exact_match"] == 0.25
    assert report["held_out_family"]["parse_rate"] == 0.75

    white = {"count": 6, "name": 4 / 6, "name_colour_count": 6, "name_colour": 3 / 6}
    white.update({"exact_count": 6 + many, "exact": (2 + many) / (6 + many), "held_out": False})
    gradient = {"count": 4, "name": 2 / 4, "name_colour_count": 0, "name_colour": math.nan}
    gradient.update({"exact_count": 4, "exact": 1 / 4, "held_out": True})
    huge = {"count": 10, "name": 6 / 10, "name_colour_count": 6, "name_colour": 3 / 6}
    huge.update({"exact_count": 10, "exact": 3 / 10, "held_out": False})
    medium = {"count": 0, "name": math.nan, "name_colour_count": 0, "name_colour": math.nan}
    medium.update({"exact_count": many, "exact": 1.0, "held_out": False})
    expected = {
        "background": {"white": white, "gradient": gradient},
        "size": {"medium": medium, "huge": huge},
        "palette": {"words": white, "original": {**gradient, "held_out": False}},
    }
    assert json.dumps(report["families"], sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert [list(values) for values in report["families"].values()] == [list(v) for v in expected.values()]

    degenerate = [captions[r["file_name"]] for r in (parts["white"][5], parts["gradient"][2])]
    assert report["degenerate"] == 2 and report["degenerate_examples"] == degenerate


def test_a_split_of_training_families_has_no_held_out_group(family_split, recorded_caption_metrics):
    folder, parts = family_split
    report = evaluate_captioner(FixedCaptioner(family_captions(parts)), folder, limit=6)
    assert "held_out_family" not in report
    assert report["in_family"]["num_images"] == 6 and report["in_family"]["scene_exact_match"] == 2 / 6
    assert list(report["families"]["background"]) == ["white"]


def test_family_accuracy_leaves_the_classic_world_out():
    classic = {
        "layout": "single",
        "style": {"world": "classic"},
        "objects": [{"name": "apple", "colour": "red", "size": "small", "position": "left"}],
    }
    assert family_accuracy(["a small red apple on the left"], [classic]) == {}


@pytest.mark.parametrize(
    "caption, degenerate",
    [
        ("ball ball ball", True),
        ("a red ball Ball, BALL.", True),
        ("a red ball ball on the left", False),
        ("ball , ball ! ball", True),
        ("a red apple to the left of a red apple", False),
        ("the the", False),
        ("", False),
        ("a a a a", True),
    ],
)
def test_is_degenerate(caption, degenerate):
    assert is_degenerate(caption) is degenerate


@pytest.fixture
def reference_folder(tmp_path):
    """An imagefolder of 4 world PNGs with reference captions and no scene graphs: `captions` lists, one `text`."""
    world = write_imagefolder(tmp_path / "world", 4, split="test", resolution=32)
    folder = tmp_path / "mine"
    folder.mkdir()
    records = []
    for i, record in enumerate(read_metadata(world)):
        shutil.copy(world / record["file_name"], folder / f"photo{i}.png")
        references = {"captions": record["captions"][:2]} if i < 3 else {"text": record["text"]}
        records.append({"file_name": f"photo{i}.png", **references})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder, records


def test_a_folder_of_reference_captions_only(reference_folder, recorded_caption_metrics):
    folder, records = reference_folder
    captions = {r["file_name"]: r.get("text") or r["captions"][0] for r in records}
    captions["photo1.png"] = "a cat cat cat"
    report = evaluate_captioner(FixedCaptioner(captions), folder)

    [(predictions, references)] = recorded_caption_metrics
    assert list(references.values()) == [r["captions"] for r in records[:3]] + [[records[3]["text"]]]
    assert list(predictions.values()) == [captions[r["file_name"]] for r in records]
    assert set(report) == {
        "num_images",
        "CIDEr-D",
        "scene_graph_scores",
        "degenerate",
        "degenerate_examples",
        "examples",
    }
    assert report["scene_graph_scores"].startswith("skipped:") and "no scene graphs" in report["scene_graph_scores"]
    assert report["degenerate"] == 1 and report["degenerate_examples"] == ["a cat cat cat"]
    assert [e["reference"] for e in report["examples"]] == [
        records[0]["captions"][0],
        records[1]["captions"][0],
        records[2]["captions"][0],
        records[3]["text"],
    ]


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"captions": None, "text": None}, "'photo2.png' has no reference caption"),
        ({"captions": "a red apple"}, "metadata.jsonl:3: column 'captions' must be a list of strings"),
        ({"captions": ["a red apple", ""]}, "'photo2.png': 'captions' must be a list"),
        ({"scene": {"layout": "single"}}, "'photo0.png' has no 'scene' but other records have one"),
    ],
)
def test_bad_records_are_named_before_captioning(reference_folder, change, fragment):
    folder, records = reference_folder
    records[2] = {key: value for key, value in {**records[2], **change}.items() if value is not None}
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    def refuse(images, **decoding):
        raise AssertionError("captioned before the folder was checked")

    with pytest.raises(ValueError, match=fragment):
        evaluate_captioner(refuse, folder)


def run(argv, capsys):
    """(exit code, stdout, stderr) of `genvl argv`."""
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_names_the_first_record_without_a_scene(family_split, tiny_pipeline_dir, tmp_path, capsys):
    folder, _ = family_split
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for record in records[3:5]:
        del record["scene"]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    argv = ["eval", "caption", "--data", tmp_path, "--model", tiny_pipeline_dir, "--quiet"]
    code, out, err = run(argv, capsys)
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert f"record {records[3]['file_name']!r} has no 'scene' but other records have one" in lines[0]


def test_cli_names_a_record_without_references(reference_folder, tiny_pipeline_dir, capsys):
    folder, records = reference_folder
    del records[1]["captions"]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    code, out, err = run(["eval", "caption", "--data", folder, "--model", tiny_pipeline_dir, "--quiet"], capsys)
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "'photo1.png' has no reference caption" in err


def test_cli_shows_groups_families_and_degenerate_captions(
    family_split, tiny_pipeline_dir, recorded_caption_metrics, tmp_path, capsys
):
    folder, _ = family_split
    output = tmp_path / "report.json"
    argv = ["eval", "caption", "--data", folder, "--model", tiny_pipeline_dir, "--max-new-tokens", "4"]
    code, out, err = run([*argv, "--output", output], capsys)
    assert code == 0
    report = json.loads(out)
    assert report == json.loads(output.read_text())
    for key in ("num_images", "CIDEr-D", "scene_exact_match", "exact_single", "examples"):  # as before
        assert key in report
    assert report["in_family"]["num_images"] + report["held_out_family"]["num_images"] == report["num_images"]
    assert set(report["families"]) == {"background", "size", "palette"}
    assert isinstance(report["degenerate"], int) and len(report["degenerate_examples"]) <= 5
    lines = err.splitlines()
    summary = lines[next(i for i, line in enumerate(lines) if line.startswith(f"{report['num_images']} images:")) :]
    assert summary[0] == f"{report['num_images']} images: CIDEr-D 1.500"
    assert summary[1].split()[:4] == ["scene", "graphs", "images", "exact"]
    assert [line.split()[0] for line in summary[2:5]] == ["all", "in", "held-out"]
    assert summary[4].split()[:3] == ["held-out", "family", "4"]
    family_rows = [line.split()[:4] for line in summary if line.startswith(("background", "size", "palette"))]
    assert family_rows[:2] == [
        ["background", "white", "6", f"{report['families']['background']['white']['name']:.3f}"],
        ["background", "gradient", "*", "4"],
    ]
    assert any(line.startswith("degenerate captions (a word 3+ times in a row): ") for line in summary)


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR and the PTB tokenizer need Java")
def test_cli_scores_a_reference_folder_with_the_coco_metrics(reference_folder, tiny_pipeline_dir, capsys):
    folder, _ = reference_folder
    argv = ["eval", "caption", "--data", folder, "--model", tiny_pipeline_dir, "--max-new-tokens", "4"]
    code, out, err = run(argv, capsys)
    assert code == 0
    report = json.loads(out)
    metrics = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"]
    assert list(report) == [
        "num_images",
        *metrics,
        "scene_graph_scores",
        "degenerate",
        "degenerate_examples",
        "examples",
    ]
    assert report["num_images"] == 4 and all(0 <= report[m] for m in metrics)
    skipped = f"scene-graph scores skipped: {folder / 'metadata.jsonl'} has no scene graphs (reference captions only)"
    assert skipped in err.splitlines()


def coco_file(folder, records, path):
    """The references of `records` as a COCO caption file (images, annotations), with one image without a
    caption, which is left out."""
    images = [{"id": 100 + i, "file_name": r["file_name"]} for i, r in enumerate(records)]
    images.append({"id": 999, "file_name": "uncaptioned.png"})
    annotations = [
        {"id": n, "image_id": 100 + i, "caption": caption}
        for i, r in enumerate(records)
        for n, caption in enumerate(r.get("captions") or [r["text"]])
    ]
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def test_a_coco_caption_file_gives_the_images_and_references(reference_folder, recorded_caption_metrics, tmp_path):
    folder, records = reference_folder
    (folder / "metadata.jsonl").unlink()  # the COCO file alone says what the images are
    annotations = coco_file(folder, records, tmp_path / "captions_val.json")
    captions = {r["file_name"]: r.get("text") or r["captions"][0] for r in records}
    report = evaluate_captioner(FixedCaptioner(captions), folder, annotations=annotations)
    [(predictions, references)] = recorded_caption_metrics
    assert report["num_images"] == 4 and "skipped" in report["scene_graph_scores"]
    assert list(references.values()) == [r.get("captions") or [r["text"]] for r in records]
    assert list(predictions.values()) == [captions[r["file_name"]] for r in records]


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda d: d["images"].__setitem__(0, {"id": 100, "file_name": "../photo0.png"}), "inside the image folder"),
        (lambda d: d["images"].__setitem__(0, {"id": 100, "file_name": "/etc/passwd"}), "inside the image folder"),
        (lambda d: d["annotations"][0].pop("caption"), "annotation 0 needs an 'image_id' .* and a 'caption'"),
        # ids no file keys images by: a list was unhashable, a missing one a KeyError, true took image 1's captions
        (lambda d: d["annotations"][0].__setitem__("image_id", [1]), "annotation 0 needs an 'image_id'"),
        (lambda d: d["annotations"][0].__setitem__("image_id", None), "annotation 0 needs an 'image_id'"),
        (lambda d: d["images"][0].__setitem__("id", [7]), r"image 0 needs an 'id' \(a number or string\), got \[7\]"),
        (lambda d: d["images"][0].__setitem__("id", True), "image 0 needs an 'id'"),
        (lambda d: d["images"][0].pop("id"), "image 0 needs an 'id'"),
        (lambda d: d.pop("images"), "expected a COCO caption file"),
        (lambda d: d.__setitem__("annotations", []), "no image has a caption"),
    ],
)
def test_bad_coco_files_are_named_before_captioning(reference_folder, tmp_path, change, fragment):
    folder, records = reference_folder
    annotations = coco_file(folder, records, tmp_path / "captions.json")
    data = json.loads(annotations.read_text())
    change(data)
    annotations.write_text(json.dumps(data))

    def refuse(images, **decoding):
        raise AssertionError("captioned before the file was checked")

    with pytest.raises(ValueError, match=fragment):
        evaluate_captioner(refuse, folder, annotations=annotations)


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR and the PTB tokenizer need Java")
def test_cli_scores_a_coco_caption_file(reference_folder, tiny_pipeline_dir, tmp_path, capsys):
    folder, records = reference_folder
    annotations = coco_file(folder, records, tmp_path / "captions.json")
    argv = ["eval", "caption", "--data", folder, "--annotations", annotations, "--model", tiny_pipeline_dir]
    code, out, err = run([*argv, "--max-new-tokens", "4", "--quiet"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["num_images"] == 4 and report["CIDEr-D"] >= 0 and str(annotations) in report["scene_graph_scores"]
    code, out, err = run([*argv, "--output", annotations], capsys)  # the report never replaces its input
    assert code == 1 and "same file as the input" in err
