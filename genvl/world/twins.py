"""Twins of a scene: the same scene with one thing changed (two objects' places exchanged, one object's colour,
one object's kind, how many there are, where a single object is), whose captions are the hard negatives of
image-text matching. A twin is kept only if its caption states other facts than the scene's own."""

import random

from .captions import scene_captions, scene_facts
from .prompts import swapped_scene
from .sprites import COLOURS, OBJECTS

TWIN_KINDS = ("swap", "colour", "object", "count", "place")
SINGLE_PLACES = ("left", "right", "top", "bottom", "centre")


def _changed(objects: list[dict], index: int, **change) -> list[dict]:
    return [{**obj, **change} if i == index else obj for i, obj in enumerate(objects)]


def twin_scene(scene: dict, kind: str, rng: random.Random) -> dict | None:
    """`scene` with one thing of `kind` (see `TWIN_KINDS`) changed at random, or None where that kind does not
    apply (a swap needs two objects side by side, a count change a group, a place change a single object)."""
    objects, layout = scene["objects"], scene["layout"]
    if kind == "swap":
        return swapped_scene(scene)
    if kind == "colour":
        index = rng.randrange(len(objects)) if layout != "count" else None
        colour = rng.choice([c for c in sorted(COLOURS) if c != objects[index or 0]["colour"]])
        if index is None:  # a group shares its colour
            return {**scene, "objects": [{**obj, "colour": colour} for obj in objects]}
        return {**scene, "objects": _changed(objects, index, colour=colour)}
    if kind == "object":
        index = rng.randrange(len(objects)) if layout != "count" else None
        name = rng.choice([n for n in sorted(OBJECTS) if n not in {obj["name"] for obj in objects}])
        if index is None:
            return {**scene, "objects": [{**obj, "name": name} for obj in objects]}
        return {**scene, "objects": _changed(objects, index, name=name)}
    if kind == "count":
        if layout != "count":
            return None
        count = rng.choice([n for n in (2, 3, 4) if n != len(objects)])
        return {**scene, "objects": [dict(objects[i % len(objects)]) for i in range(count)]}
    if kind == "place":
        if layout != "single":
            return None
        place = rng.choice([p for p in SINGLE_PLACES if p != objects[0]["position"]])
        return {**scene, "objects": _changed(objects, 0, position=place)}
    raise ValueError(f"unknown twin kind {kind!r}; expected one of {', '.join(TWIN_KINDS)}")


def caption_twins(scene: dict, rng: random.Random, phrasing: int = 0) -> list[tuple[str, str]]:
    """[(kind, caption)] of the scene's twins of every kind that applies, each in phrasing `phrasing` of
    `scene_captions` (the canonical one by default), every one stating other facts than the scene."""
    facts = scene_facts(scene)
    twins = []
    for kind in TWIN_KINDS:
        twin = twin_scene(scene, kind, rng)
        if twin is not None and scene_facts(twin) != facts:
            captions = scene_captions(twin)
            twins.append((kind, captions[phrasing % len(captions)]))
    return twins
