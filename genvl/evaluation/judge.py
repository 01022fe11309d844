"""GenEval-style checks of a text-to-image model: the detections of the judge (`genvl.models.judge`) compared
with the scene graph a prompt describes, and accuracy per category; and the judge's own detection report on
real renders (precision, recall, F1 and colour accuracy, overall and per style family)."""

import math

from ..models.judge import Detection, colour_class
from ..world.scenes import HELD_OUT_FAMILIES, families, held_out

GENEVAL_CATEGORIES = ("single_object", "two_objects", "counting", "colours", "position", "colour_attribution")
PAIR_AXES = {"pair_h": 0, "pair_v": 1}  # the first object is left of (x) / above (y) the second


def judge_scene(scene: dict, detections: list[Detection]) -> dict[str, bool]:
    """GenEval-style checks of one image against the scene graph its prompt describes.

    single layout: `single_object` (the object is there) and `colours` (in the prompt's colour);
    pair layouts: `two_objects` (both there), `position` (in the stated relation), `colour_attribution`
    (each in its own colour); count layout: `counting` (exactly that many of the object); row layout:
    `three_objects` (all three there; not a GenEval category). An object's colour None (OpenMoji's original
    colours) is the judge's colour "original".
    """
    objects = scene["objects"]

    def found(obj, with_colour=False):
        colour = colour_class(obj["colour"])
        return [d for d in detections if d.name == obj["name"] and (not with_colour or d.colour == colour)]

    layout = scene["layout"]
    if layout == "single":
        return {"single_object": bool(found(objects[0])), "colours": bool(found(objects[0], with_colour=True))}
    if layout in PAIR_AXES:
        first, second = found(objects[0]), found(objects[1])
        axis = PAIR_AXES[layout]
        ordered = any((a.x, a.y)[axis] < (b.x, b.y)[axis] for a in first for b in second)
        return {
            "two_objects": bool(first and second),
            "position": ordered,
            "colour_attribution": bool(found(objects[0], True) and found(objects[1], True)),
        }
    if layout == "count":
        return {"counting": len(found(objects[0])) == len(objects)}
    if layout == "row":
        return {"three_objects": all(found(obj) for obj in objects)}
    raise ValueError(f"unknown scene layout {layout!r}")


RELATION_AXES = {"left": (0, 1), "right": (0, -1), "above": (1, 1), "below": (1, -1)}  # axis, sign


def judge_request(request: dict, detections: list[Detection]) -> dict[str, bool]:
    """GenEval's rules for one image drawn for a request (`genvl.world.prompts`), and the strict reading.

    Under GenEval's rules (keyed by the request's category) each object asked for must be among the detections
    at least as many times as asked (a count exactly: "counting"), its most confident detections in the colour
    asked for, and the first object's most confident detection in the relation asked for from the second's.
    `strict` is what the prompt says: those objects in those numbers, colours and relation, and nothing else.
    Sizes and places asked for are not judged.
    """
    found = {}
    for detection in sorted(detections, key=lambda d: -d.score):
        found.setdefault(detection.name, []).append(detection)
    geneval = True
    for obj in request["objects"]:
        mine = found.get(obj["name"], [])
        top = mine[: obj["count"]]
        geneval &= len(top) == obj["count"] and (obj["colour"] is None or all(d.colour == obj["colour"] for d in top))
        if request["category"] == "counting":
            geneval &= len(mine) == obj["count"]
    related = True
    if request["relation"] is not None:
        first, second = (found.get(obj["name"], [None])[0] for obj in request["objects"][:2])
        axis, sign = RELATION_AXES[request["relation"]]
        related = (
            first is not None
            and second is not None
            and sign * ((second.x, second.y)[axis] - (first.x, first.y)[axis]) > 0
        )
    strict = sorted(found) == sorted(obj["name"] for obj in request["objects"]) and all(
        len(found[obj["name"]]) == obj["count"]
        and (obj["colour"] is None or all(d.colour == obj["colour"] for d in found[obj["name"]]))
        for obj in request["objects"]
    )
    return {request["category"]: geneval and related, "strict": strict and related}


def category_accuracy(judgements: list[dict[str, bool]]) -> dict[str, float]:
    """Mean of every check over the images that have it, plus `overall`: the mean of the GenEval categories
    present (GenEval's own summary)."""
    totals: dict[str, list[int]] = {}
    for judgement in judgements:
        for name, hit in judgement.items():
            totals.setdefault(name, []).append(int(hit))
    report = {name: sum(hits) / len(hits) for name, hits in sorted(totals.items())}
    present = [report[name] for name in GENEVAL_CATEGORIES if name in report]
    if present:
        report["overall"] = sum(present) / len(present)
    return report


MIN_MATCH_DISTANCE = 6.0  # px: the least distance within which a detection may match an object's centre
COUNTS = ("images", "objects", "detections", "matched", "true_positives", "colour_correct")


def match_radius(obj: dict) -> float:
    """How far from an object's centre a detection may lie to match it: max(6, half the object's longer side)."""
    x0, y0, x1, y1 = obj["bbox"]
    return max(MIN_MATCH_DISTANCE, 0.5 * max(x1 - x0, y1 - y0))


def match_detections(objects: list[dict], detections: list[Detection]) -> list[tuple[int, int]]:
    """(object index, detection index) pairs matched by position alone: among every pair whose detection lies
    within `match_radius` of the object's centre, the closest first (the earlier object, then the earlier
    detection, on a tie), each pair taken while both its object and its detection are still unmatched."""
    candidates = []
    for o, obj in enumerate(objects):
        x0, y0, x1, y1 = obj["bbox"]
        centre = ((x0 + x1) / 2, (y0 + y1) / 2)
        for d, found in enumerate(detections):
            distance = math.dist(centre, (found.x, found.y))
            if distance <= match_radius(obj):
                candidates.append((distance, o, d))
    pairs, used_objects, used_detections = [], set(), set()
    for _, o, d in sorted(candidates):
        if o not in used_objects and d not in used_detections:
            pairs.append((o, d))
            used_objects.add(o)
            used_detections.add(d)
    return pairs


def scene_counts(scene: dict, detections: list[Detection]) -> dict[str, int]:
    """The detection counts of one image: its objects, the judge's detections, the pairs matched by position
    (`match_detections`), the true positives among them (the right name) and those of the right colour too."""
    objects = scene["objects"]
    pairs = match_detections(objects, detections)
    named = [(objects[o], detections[d]) for o, d in pairs if detections[d].name == objects[o]["name"]]
    return {
        "images": 1,
        "objects": len(objects),
        "detections": len(detections),
        "matched": len(pairs),
        "true_positives": len(named),
        "colour_correct": sum(found.colour == colour_class(obj["colour"]) for obj, found in named),
    }


def detection_rates(counts: dict[str, int]) -> dict:
    """Summed counts plus `precision` (true positives / detections), `recall` (true positives / objects), `f1`
    (2 x true positives / (detections + objects)) and `colour_accuracy` (right colours / true positives); each
    None where its denominator is 0."""
    tp = counts["true_positives"]

    def ratio(num, den):
        return num / den if den else None

    return {
        **counts,
        "precision": ratio(tp, counts["detections"]),
        "recall": ratio(tp, counts["objects"]),
        "f1": ratio(2 * tp, counts["detections"] + counts["objects"]),
        "colour_accuracy": ratio(counts["colour_correct"], tp),
    }


def _summed(rows: list[dict[str, int]]) -> dict:
    return detection_rates({key: sum(row[key] for row in rows) for key in COUNTS})


def detection_scores(scenes: list[dict], detections: list[list[Detection]]) -> dict:
    """The detection report of images with these scene graphs and the judge's detections in them.

    Matching, per image: detections are matched to the true objects by position alone, closest pairs first,
    a detection within max(6, 0.5 x the object's longer side) px of the centre of an object not yet matched
    (`match_detections`). A matched pair is a true positive if the detection names the object; colour accuracy
    is over the true positives, an object's colour None being the colour "original". Every unmatched or
    misnamed detection counts against precision, every object without a true positive against recall.

    Returns {"overall", "by_family", "in_family", "held_out_family"}: each group holds the counts of
    `scene_counts` and the rates of `detection_rates`. `by_family` maps each style family of the scenes
    (background, size, palette) to each of its values seen; `held_out_family` groups the scenes of a family
    training never sees (`genvl.world.scenes.held_out`), `in_family` the others (with no images, a group's counts
    are 0 and its rates None). Scenes of the classic world have no style families: they are all in family.
    """
    counts = [scene_counts(scene, found) for scene, found in zip(scenes, detections, strict=True)]
    by_family = {}
    for family in HELD_OUT_FAMILIES:
        values = {}
        for scene, row in zip(scenes, counts):
            value = families(scene).get(family)
            if value is not None:
                values.setdefault(value, []).append(row)
        if values:
            by_family[family] = {value: _summed(rows) for value, rows in sorted(values.items())}
    return {
        "overall": _summed(counts),
        "by_family": by_family,
        "in_family": _summed([row for scene, row in zip(scenes, counts) if not held_out(scene)]),
        "held_out_family": _summed([row for scene, row in zip(scenes, counts) if held_out(scene)]),
    }


def detect_images(judge, images, batch_size: int = 256, threshold: float | None = None) -> list[list[Detection]]:
    """The judge's detections in uint8 images (N, 3, H, W), `batch_size` at a time; `threshold` overrides the
    judge's own."""
    detections = []
    for start in range(0, len(images), batch_size):
        detections += judge.detect(images[start : start + batch_size].float() / 127.5 - 1, threshold)
    return detections


def detection_report(judge, images, scenes: list[dict], batch_size: int = 256, threshold: float | None = None) -> dict:
    """The judge's detection report (`detection_scores`) on uint8 renders (N, 3, H, W) of these scene graphs,
    plus the `threshold` it detected at (None: the judge's own) and its `nms_distance`."""
    threshold = judge.config.threshold if threshold is None else threshold
    report = detection_scores(scenes, detect_images(judge, images, batch_size, threshold))
    return {"threshold": threshold, "nms_distance": judge.config.get("nms_distance"), **report}


def load_renders(data_dir, image_size: int = 64):
    """(images, scenes) of an imagefolder of renders: its images as one uint8 tensor (N, 3, S, S) and the scene
    graph of each (the `scene` column of its metadata.jsonl)."""
    from ..io.imagefolder import load_images, read_metadata

    records = read_metadata(data_dir)
    missing = [record["file_name"] for record in records if "scene" not in record]
    if missing:
        raise ValueError(f"{data_dir}: {len(missing)} records have no scene graph, e.g. {missing[0]}")
    return load_images(data_dir, records, "file_name", image_size), [record["scene"] for record in records]


def detection_report_for_folder(judge, data_dir, batch_size: int = 256, threshold: float | None = None) -> dict:
    """The judge's detection report (`detection_report`) on the renders of an imagefolder, e.g. data/wide/test,
    with `data` the folder's path."""
    images, scenes = load_renders(data_dir, judge.config.image_size)
    return {"data": str(data_dir), **detection_report(judge, images, scenes, batch_size, threshold)}
