"""Scoring captioners: the COCO caption metrics, and how often captions state their scene graph correctly.

The COCO metrics come from `pycocoevalcap`, the code behind the COCO caption leaderboard, so the numbers
compare with published ones. Its PTB tokenizer and METEOR run in Java.
"""

import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from ..io.imagefolder import read_metadata
from ..world.captions import parse_caption, scene_facts
from ..world.scenes import LAYOUTS

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


def evaluate_captioner(
    pipeline, data_dir, batch_size: int = 32, limit: int | None = None, progress=None, **decoding
) -> dict:
    """Caption the images of an imagefolder and score the captions.

    Args:
        pipeline: a `CaptionPipeline`, or any callable that takes a list of image paths and `**decoding` and
            returns an object whose `.captions[i]` lists the captions of image i, best first.
        data_dir: an imagefolder as `write_imagefolder` writes it: metadata.jsonl records with `file_name`,
            `text`, `captions` (reference phrasings; `[text]` if absent) and `scene`.
        batch_size: images per pipeline call.
        limit: score only the first `limit` images.
        progress: a tqdm-like wrapper for the batch loop.
        decoding: passed on to the pipeline, e.g. `num_beams=4`.

    Returns `num_images`, `caption_metrics` and `scene_graph_accuracy` of each image's best caption, and
    `examples`: the first few images as {file_name, prediction, reference} with the canonical reference.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    records = read_metadata(data_dir)[:limit]
    for record in records:
        if "scene" not in record:
            raise ValueError(
                f"{Path(data_dir) / 'metadata.jsonl'}: record {record['file_name']!r} has no 'scene'; "
                f"evaluate_captioner needs the scene graphs that write_imagefolder stores"
            )
    paths = [str(Path(data_dir) / record["file_name"]) for record in records]
    predictions = _caption_images(pipeline, paths, batch_size, progress, decoding)
    # ids are positions, not file names, so that a repeated file name cannot merge two images
    references = {str(i): record.get("captions") or [record["text"]] for i, record in enumerate(records)}
    examples = [
        {"file_name": record["file_name"], "prediction": prediction, "reference": record["text"]}
        for record, prediction in zip(records[:NUM_EXAMPLES], predictions)
    ]
    return {
        "num_images": len(records),
        **caption_metrics(dict(zip(references, predictions)), references),
        **scene_graph_accuracy(predictions, [record["scene"] for record in records]),
        "examples": examples,
    }


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
