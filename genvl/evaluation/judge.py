"""GenEval-style checks of a text-to-image model: the detections of the judge (`genvl.models.judge`) compared
with the scene graph a prompt describes, and accuracy per category."""

from ..models.judge import Detection

GENEVAL_CATEGORIES = ("single_object", "two_objects", "counting", "colours", "position", "colour_attribution")
PAIR_AXES = {"pair_h": 0, "pair_v": 1}  # the first object is left of (x) / above (y) the second


def judge_scene(scene: dict, detections: list[Detection]) -> dict[str, bool]:
    """GenEval-style checks of one image against the scene graph its prompt describes.

    single layout: `single_object` (the object is there) and `colours` (in the prompt's colour);
    pair layouts: `two_objects` (both there), `position` (in the stated relation), `colour_attribution`
    (each in its own colour); count layout: `counting` (exactly that many of the object); row layout:
    `three_objects` (all three there; not a GenEval category).
    """
    objects = scene["objects"]

    def found(obj, with_colour=False):
        return [d for d in detections if d.name == obj["name"] and (not with_colour or d.colour == obj["colour"])]

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
