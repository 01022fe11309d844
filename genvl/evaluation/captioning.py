"""Scoring captioners: the COCO caption metrics, how often captions state their scene graph correctly (overall,
in and out of the style families training sees, per family), and how often they degenerate into repeated words.

The COCO metrics come from `pycocoevalcap`, the code behind the COCO caption leaderboard, so the numbers
compare with published ones. Its PTB tokenizer and METEOR run in Java.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from ..io.imagefolder import read_metadata
from ..world.backgrounds import BACKGROUND_FAMILIES
from ..world.captions import parse_caption, scene_facts
from ..world.scenes import HELD_OUT_FAMILIES, LAYOUTS, PALETTES, SIZE_BANDS, families, held_out

# which parts of the `scene_facts` tuples (name, colour, count, size, position) each field compares: every
# attribute is compared together with the object's name, so a swapped colour or place counts as wrong
FACT_FIELDS = {"names": (0,), "colours": (0, 1), "counts": (0, 2), "positions": (0, 4)}
SCENE_METRICS = (
    "scene_exact_match",
    "parse_rate",
    *FACT_FIELDS,
    "single_name_colour",
    *(f"exact_{layout}" for layout in LAYOUTS),
)
NUM_EXAMPLES = 5
# the order the families of each style attribute are listed in; a value not named here comes after these
FAMILY_ORDER = {"background": BACKGROUND_FAMILIES, "size": tuple(SIZE_BANDS), "palette": PALETTES}
DEGENERATE_RUN = 3  # a caption that says one word this many times in a row has degenerated


def caption_metrics(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr-D of predicted captions, computed by pycocoevalcap.

    Args:
        predictions: image id -> predicted caption.
        references: image id -> reference captions of that image (at least one), for the same ids.

    Captions are lower-cased and PTB-tokenised with punctuation removed, as for the COCO leaderboard. CIDEr-D
    weighs n-grams by how rare they are among the references of all images, so it needs a corpus of many
    images: over a single image it is 0.
    """
    _check_ids(predictions, references)
    _require_java()
    gts, res = _tokenize(predictions, references)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    metrics = {f"BLEU-{n}": float(score) for n, score in enumerate(bleu, 1)}
    metrics.update({"METEOR": _meteor_score(gts, res), "ROUGE-L": float(rouge), "CIDEr-D": float(cider)})
    return metrics


def _check_ids(predictions: dict, references: dict) -> None:
    if not predictions:
        raise ValueError("predictions is empty: nothing to score")
    if predictions.keys() != references.keys():
        missing = sorted(map(str, references.keys() - predictions.keys()))[:5]
        extra = sorted(map(str, predictions.keys() - references.keys()))[:5]
        raise ValueError(
            f"predictions and references must have the same ids; "
            f"ids without a prediction: {missing}, ids without references: {extra}"
        )
    for key, refs in references.items():
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{key!r}] must be a non-empty list of captions, got {refs!r}")


def _require_java() -> None:
    if shutil.which("java") is None:
        raise RuntimeError(
            "METEOR and the PTB tokenizer of pycocoevalcap need Java: no `java` on PATH "
            "(install a JRE, e.g. apt-get install default-jre-headless)"
        )


def _tokenize(predictions: dict, references: dict) -> tuple[dict, dict]:
    """PTB-tokenise references and predictions in one tokenizer run, which saves a Java start-up."""
    # the tokenizer reads one caption per line, so any line break inside a caption would shift all later ones
    captions = {
        ("ref", key): [{"caption": " ".join(text.split())} for text in refs] for key, refs in references.items()
    }
    captions.update({("pred", key): [{"caption": " ".join(text.split())}] for key, text in predictions.items()})
    with _captured_stderr() as log:  # the Java tokenizer logs a speed line to the stderr it inherits
        tokens = PTBTokenizer().tokenize(captions)
    if any(len(tokens.get(key, ())) != len(texts) for key, texts in captions.items()):
        raise RuntimeError(
            "pycocoevalcap's PTB tokenizer returned fewer captions than it was given; "
            f"check that `java -version` works. Its log: {log[0][-500:]}"
        )
    gts = {key: tokens[("ref", key)] for key in references}
    res = {key: tokens[("pred", key)] for key in references}
    return gts, res


@contextmanager
def _captured_stderr():
    """Point file descriptor 2 (which subprocesses inherit) at a temporary file for the block. Yields a list that
    holds what was written, once the block has ended."""
    written = []
    with tempfile.TemporaryFile("w+", errors="replace") as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            yield written
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            written.append(log.read())


def _meteor_score(gts: dict, res: dict) -> float:
    meteor = Meteor()
    error = None
    try:
        score, _ = meteor.compute_score(gts, res)
    except (ValueError, OSError) as err:  # a dead JVM answers with an empty line or a broken pipe
        error = err
    finally:
        stderr = _stop_meteor(meteor)
    if error is not None:
        raise RuntimeError(f"METEOR's Java process failed ({error}): {stderr[-500:]}") from error
    return float(score)


def _stop_meteor(meteor: Meteor) -> str:
    """End Meteor's JVM now rather than whenever the object is garbage-collected; returns its stderr."""
    # a failed compute_score leaves the lock held, and Meteor.__del__ would then wait for it forever
    if meteor.lock.locked():
        meteor.lock.release()
    process = meteor.meteor_p
    try:
        _, stderr = process.communicate(timeout=30)  # closing stdin lets METEOR exit by itself
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    return stderr.decode(errors="replace")


def scene_graph_accuracy(predictions: list[str], scenes: list[dict]) -> dict[str, float]:
    """How often captions state their scene graph correctly, read back with `parse_caption`.

    Args:
        predictions: one caption per scene.
        scenes: the true scene graphs, in the same order.

    Returns fractions of scenes:
        scene_exact_match: the parsed facts equal `scene_facts(scene)`.
        parse_rate: the caption parses at all.
        names: the multiset of object names is right.
        colours, counts, positions: every object has the right colour / count / position (each compared as
            (name, value) pairs), e.g. "colours" is wrong for "a blue cat and a red dog" when the cat is red.
        single_name_colour: over "single" scenes only, the object's name and colour are both right.
        exact_<layout>: scene_exact_match over the scenes of one layout; nan where there are none.
    A caption that does not parse is wrong for every entry.
    """
    if len(predictions) != len(scenes):
        raise ValueError(f"need one prediction per scene, got {len(predictions)} predictions for {len(scenes)} scenes")
    if not scenes:
        raise ValueError("scenes is empty: nothing to score")
    hits = defaultdict(list)
    for index, (caption, scene) in enumerate(zip(predictions, scenes)):
        if not isinstance(caption, str):
            raise TypeError(f"predictions[{index}] must be a string, got {type(caption).__name__}")
        for metric, hit in _scene_hits(caption, scene).items():
            hits[metric].append(hit)
    return {metric: sum(hits[metric]) / len(hits[metric]) if hits[metric] else math.nan for metric in SCENE_METRICS}


def _scene_hits(caption: str, scene: dict) -> dict[str, bool]:
    """Which of the scene metrics one caption gets right (only the metrics that cover this scene's layout)."""
    truth = scene_facts(scene)
    parsed = parse_caption(caption)
    exact = parsed == truth
    hits = {"scene_exact_match": exact, "parse_rate": parsed is not None, f"exact_{scene['layout']}": exact}
    for field, parts in FACT_FIELDS.items():
        hits[field] = parsed is not None and _field_counts(parsed, parts) == _field_counts(truth, parts)
    if scene["layout"] == "single":
        hits["single_name_colour"] = parsed is not None and len(parsed) == 1 and parsed[0][:2] == truth[0][:2]
    return hits


def _field_counts(facts: list[tuple], parts: tuple[int, ...]) -> Counter:
    return Counter(tuple(fact[i] for i in parts) for fact in facts)


def family_group_accuracy(predictions: list[str], scenes: list[dict]) -> dict[str, dict]:
    """`scene_graph_accuracy` apart over the scenes of the style families training sees and those it never sees.

    Returns {"in_family": ..., "held_out_family": ...}, each `scene_graph_accuracy`'s dict plus `num_images`; a
    group without scenes is left out. Scenes of the classic world (no style families) count as in-family.
    """
    groups = defaultdict(list)
    for caption, scene in zip(predictions, scenes):
        groups["held_out_family" if held_out(scene) else "in_family"].append((caption, scene))
    report = {}
    for name in ("in_family", "held_out_family"):
        if groups[name]:
            captions, group_scenes = zip(*groups[name])
            report[name] = {"num_images": len(captions), **scene_graph_accuracy(list(captions), list(group_scenes))}
    return report


def family_accuracy(predictions: list[str], scenes: list[dict]) -> dict[str, dict[str, dict]]:
    """How captions fare in each style family: attribute (background, size, palette) -> family -> scores.

    Args:
        predictions: one caption per scene.
        scenes: the true scene graphs, in the same order.

    For each family present among the scenes:
        count: its single-object scenes.
        name: over those, the caption parses into one object, of the right name.
        name_colour_count: its single-object scenes whose object has a colour word (colour not None).
        name_colour: over those, the parsed object's name and colour are both right.
        exact_count: all its scenes, of any layout.
        exact: over those, scene_exact_match.
        held_out: whether training never sees the family.
    A fraction over no scenes is nan. Scenes of the classic world belong to no family.
    """
    if len(predictions) != len(scenes):
        raise ValueError(f"need one prediction per scene, got {len(predictions)} predictions for {len(scenes)} scenes")
    hits = defaultdict(lambda: defaultdict(list))  # (attribute, family) -> metric -> hit per scene
    for caption, scene in zip(predictions, scenes):
        scene_hits = _family_hits(caption, scene)
        for attribute, family in families(scene).items():
            for metric, hit in scene_hits.items():
                hits[attribute, str(family)][metric].append(hit)
    report = {}
    for attribute in HELD_OUT_FAMILIES:
        present = sorted((family for key, family in hits if key == attribute), key=_family_rank(attribute))
        if present:
            report[attribute] = {
                family: _family_scores(attribute, family, hits[attribute, family]) for family in present
            }
    return report


def _family_hits(caption: str, scene: dict) -> dict[str, bool]:
    """Which of the family metrics one caption gets right (only the metrics that cover this scene)."""
    parsed = parse_caption(caption)
    hits = {"exact": parsed == scene_facts(scene)}
    if scene["layout"] == "single":
        obj = scene["objects"][0]
        hits["name"] = parsed is not None and len(parsed) == 1 and parsed[0][0] == obj["name"]
        if obj["colour"] is not None:
            hits["name_colour"] = hits["name"] and parsed[0][1] == obj["colour"]
    return hits


def _family_rank(attribute: str):
    order = FAMILY_ORDER.get(attribute, ())
    return lambda family: (order.index(family) if family in order else len(order), family)


def _family_scores(attribute: str, family: str, hits: dict[str, list[bool]]) -> dict:
    def fraction(metric):
        return sum(hits[metric]) / len(hits[metric]) if hits[metric] else math.nan

    return {
        "count": len(hits["name"]),
        "name": fraction("name"),
        "name_colour_count": len(hits["name_colour"]),
        "name_colour": fraction("name_colour"),
        "exact_count": len(hits["exact"]),
        "exact": fraction("exact"),
        "held_out": family in HELD_OUT_FAMILIES.get(attribute, ()),
    }


def is_degenerate(caption: str) -> bool:
    """Whether a caption says one word `DEGENERATE_RUN` (3) or more times in a row, e.g. "a ball ball ball".

    Words are split on whitespace and compared lower-cased with their punctuation removed ("Ball, ball. BALL").
    """
    words = [_without_punctuation(word) for word in caption.lower().split()]
    words = [word for word in words if word]
    runs = (words[i : i + DEGENERATE_RUN] for i in range(len(words) - DEGENERATE_RUN + 1))
    return any(len(set(run)) == 1 for run in runs)


def _without_punctuation(word: str) -> str:
    return "".join(char for char in word if not unicodedata.category(char).startswith("P"))


def degenerate_captions(predictions: list[str]) -> dict:
    """`degenerate`: how many captions repeat a word (`is_degenerate`); `degenerate_examples`: the first few."""
    repeated = [caption for caption in predictions if is_degenerate(caption)]
    return {"degenerate": len(repeated), "degenerate_examples": repeated[:NUM_EXAMPLES]}


def read_caption_records(data_dir, annotations=None) -> tuple[list[dict], list[list[str]], bool]:
    """The records of an imagefolder to score captions on, their reference captions, and whether they hold scene
    graphs. With `annotations`, a COCO-style caption JSON, the records are its images instead (`coco_records`),
    their files under `data_dir`.

    Either every record has a `scene` (a folder `write_imagefolder` wrote) or none has (a folder of the user's own
    with reference captions only, e.g. COCO-style). Every record needs `file_name` and its references: `captions`
    (a list of one or more) or, failing that, `text` (one). The whole folder is checked, so that a bad record is
    named before any image is captioned.
    """
    if annotations is not None:
        records = coco_records(annotations)
        return records, [record["captions"] for record in records], False
    path = Path(data_dir) / "metadata.jsonl"
    # every record needs `file_name` (checked by read_metadata); its references may be `captions` or `text`
    records = read_metadata(data_dir, caption_column="file_name")
    without_scene = [record for record in records if "scene" not in record]
    if without_scene and len(without_scene) < len(records):
        raise ValueError(
            f"{path}: record {without_scene[0]['file_name']!r} has no 'scene' but other records have one; "
            "give every record a scene graph, or none (reference captions only)"
        )
    references = [_references(record, path) for record in records]
    return records, references, not without_scene


def coco_records(annotations) -> list[dict]:
    """Records `{file_name, captions}` of a COCO-style caption JSON (`captions_val2017.json`: `images` with `id`
    and `file_name`, `annotations` with `image_id` and `caption`), one per image that has a caption, in the
    order of `images`. A file name must name a file inside the image folder (no absolute path, no `..`)."""
    path = Path(annotations)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: expected a COCO caption file, an object with 'images' and 'annotations' lists")
    captions = defaultdict(list)
    for number, annotation in enumerate(data.get("annotations") or []):
        caption = annotation.get("caption") if isinstance(annotation, dict) else None
        if not isinstance(caption, str) or not caption.strip() or not _is_image_id(annotation.get("image_id")):
            raise ValueError(f"{path}: annotation {number} needs an 'image_id' (a number or string) and a 'caption'")
        captions[annotation["image_id"]].append(caption)
    records = []
    for number, image in enumerate(data["images"]):
        name = image.get("file_name") if isinstance(image, dict) else None
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts or not name.strip():
            raise ValueError(f"{path}: image {number} needs a 'file_name' inside the image folder, got {name!r}")
        if not _is_image_id(image.get("id")):
            raise ValueError(f"{path}: image {number} needs an 'id' (a number or string), got {image.get('id')!r}")
        if captions.get(image["id"]):
            records.append({"file_name": name, "captions": captions[image["id"]]})
    if not records:
        raise ValueError(f"{path}: no image has a caption")
    return records


def _is_image_id(value) -> bool:
    """Whether `value` is an id a COCO file can key images by: an integer or a string (true is not 1)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _references(record: dict, path: Path) -> list[str]:
    """The reference captions of one metadata record: its `captions`, else `[text]`."""
    captions = record.get("captions")
    if captions:
        if isinstance(captions, list) and all(isinstance(c, str) and c.strip() for c in captions):
            return captions
        raise ValueError(
            f"{path}: record {record['file_name']!r}: 'captions' must be a list of non-empty strings, "
            f"got {json.dumps(captions)[:80]}"
        )
    text = record.get("text")
    if isinstance(text, str) and text.strip():
        return [text]
    raise ValueError(
        f"{path}: record {record['file_name']!r} has no reference caption: "
        "give it 'captions' (a list of one or more) or 'text' (a non-empty string)"
    )


def evaluate_captioner(
    pipeline,
    data_dir,
    batch_size: int = 32,
    limit: int | None = None,
    progress=None,
    annotations=None,
    **decoding,
) -> dict:
    """Caption the images of an imagefolder and score the captions.

    Args:
        pipeline: a `CaptionPipeline`, or any callable that takes a list of image paths and `**decoding` and
            returns an object whose `.captions[i]` lists the captions of image i, best first.
        data_dir: an imagefolder whose metadata.jsonl records hold `file_name` and reference captions: `captions`
            (a list; `[text]` if absent) or `text`. Either every record has a `scene` (as `write_imagefolder`
            writes them) or none has: then only the caption metrics are scored.
        annotations: a COCO-style caption JSON to read the images and their references from instead of
            metadata.jsonl; `data_dir` is then the folder of its images.
        batch_size: images per pipeline call.
        limit: score only the first `limit` images.
        progress: a tqdm-like wrapper for the batch loop.
        decoding: passed on to the pipeline, e.g. `num_beams=4`.

    Returns, for each image's best caption:
        num_images, and `caption_metrics` (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D).
        With scene graphs: `scene_graph_accuracy`'s entries over all images; `in_family` and `held_out_family`
            (`family_group_accuracy`); `families` (`family_accuracy`).
        Without: `scene_graph_scores`, a line saying they were skipped and why.
        degenerate, degenerate_examples (`degenerate_captions`).
        examples: the first few images as {file_name, prediction, reference} with the canonical reference.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    records, references, with_scenes = read_caption_records(data_dir, annotations)
    records, references = records[:limit], references[:limit]
    paths = [str(Path(data_dir) / record["file_name"]) for record in records]
    predictions = _caption_images(pipeline, paths, batch_size, progress, decoding)
    # ids are positions, not file names, so that a repeated file name cannot merge two images
    ids = [str(i) for i in range(len(records))]
    report = {
        "num_images": len(records),
        **caption_metrics(dict(zip(ids, predictions)), dict(zip(ids, references))),
    }
    if with_scenes:
        scenes = [record["scene"] for record in records]
        report.update(scene_graph_accuracy(predictions, scenes))
        report.update(family_group_accuracy(predictions, scenes))
        report["families"] = family_accuracy(predictions, scenes)
    else:
        source = annotations if annotations is not None else Path(data_dir) / "metadata.jsonl"
        report["scene_graph_scores"] = f"skipped: {source} has no scene graphs (reference captions only)"
    report.update(degenerate_captions(predictions))
    report["examples"] = [
        {"file_name": record["file_name"], "prediction": prediction, "reference": _canonical(record, refs)}
        for record, refs, prediction in zip(records[:NUM_EXAMPLES], references, predictions)
    ]
    return report


def _canonical(record: dict, references: list[str]) -> str:
    """The record's `text` where it has one, else its first reference."""
    return record["text"] if isinstance(record.get("text"), str) else references[0]


def _caption_images(pipeline, paths: list[str], batch_size: int, progress, decoding: dict) -> list[str]:
    """The best caption of every image, captioned `batch_size` images at a time."""
    batches = [paths[start : start + batch_size] for start in range(0, len(paths), batch_size)]
    predictions = []
    for batch in progress(batches, total=len(batches)) if progress else batches:
        captions = pipeline(batch, **decoding).captions
        if len(captions) != len(batch):
            raise RuntimeError(f"the pipeline returned captions for {len(captions)} images, expected {len(batch)}")
        predictions.extend(per_image[0] for per_image in captions)
    return predictions
