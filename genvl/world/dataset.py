"""Writing rendered scenes as a Hugging Face imagefolder, and reading imagefolders back for training.

Splits never share a scene: every scene's identity (its layout and object geometry) is hashed, and the hash
decides which split the scene may belong to, so no two splits can hold the same composition whatever seeds
they were written with.
"""

import hashlib
import io
import json
import multiprocessing
import os
import random
import shutil
from pathlib import Path

from .captions import scene_captions
from .scenes import render_scene, sample_scene
from .sprites import ALL_OBJECTS, HELD_OUT_OBJECTS, OBJECTS

SPLIT_BUCKETS = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}


def scene_id(scene: dict) -> str:
    """A stable identity for a scene's content, independent of its background."""
    key = json.dumps({"layout": scene["layout"], "objects": scene["objects"]}, sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def split_of(scene: dict) -> str:
    bucket = int(scene_id(scene), 16) % 10
    return next(split for split, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def generate_scenes(num_images: int, seed: int, split: str, names=None, colours=None, require=None):
    """Yield `num_images` scene graphs belonging to `split`, deterministically for a seed.

    With `require` (an object name, held-out ones included), only scenes holding that object are kept, drawn
    from the default objects plus it.
    """
    if split not in SPLIT_BUCKETS:
        raise ValueError(f"split must be one of {sorted(SPLIT_BUCKETS)}, got {split!r}")
    if require is not None:
        if require not in ALL_OBJECTS:
            raise ValueError(f"unknown object {require!r}; held-out ones: {sorted(HELD_OUT_OBJECTS)}")
        names = sorted(set(names or OBJECTS) | {require})
    rng = random.Random(f"{seed}-{split}" + (f"-{require}" if require else ""))
    made = 0
    while made < num_images:
        scene = sample_scene(rng, names=names, colours=colours)
        if require is not None and all(obj["name"] != require for obj in scene["objects"]):
            continue
        if split_of(scene) == split:
            made += 1
            yield scene


def _png_bytes(job) -> bytes:
    scene, resolution = job
    buffer = io.BytesIO()
    render_scene(scene, resolution).save(buffer, format="png")
    return buffer.getvalue()


def write_imagefolder(out_dir, num_images: int, seed: int = 0, split: str = "train", resolution: int = 64,
                      names=None, colours=None, progress=None, require=None, workers: int = 1) -> Path:
    """Render scenes into `out_dir/<split>/` with a `metadata.jsonl` (file_name, text, captions, scene).

    With `workers` > 1 the images are rendered by that many processes; the files are the same. The folder is
    built beside its destination and renamed into place, so an interrupted run leaves nothing half-written. An
    existing split folder is replaced.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if resolution < 16:
        raise ValueError(f"resolution must be >= 16, got {resolution}")
    final = Path(out_dir) / split
    tmp = Path(out_dir) / f".{split}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    caption_rng = random.Random(f"{seed}-{split}-captions")
    pool = None
    try:
        scenes = list(generate_scenes(num_images, seed, split, names=names, colours=colours, require=require))
        jobs = ((scene, resolution) for scene in scenes)
        pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
        pngs = pool.imap(_png_bytes, jobs, chunksize=64) if pool else map(_png_bytes, jobs)
        if progress:
            pngs = progress(pngs, total=num_images)
        with open(tmp / "metadata.jsonl", "w") as meta:
            for index, (scene, png) in enumerate(zip(scenes, pngs)):
                file_name = f"{index:06d}.png"
                (tmp / file_name).write_bytes(png)
                captions = scene_captions(scene, caption_rng)
                record = {"file_name": file_name, "text": captions[0], "captions": captions,
                          "scene_id": scene_id(scene), "scene": scene}
                meta.write(json.dumps(record) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if pool is not None:
            pool.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_metadata(data_dir, caption_column: str = "text", image_column: str = "file_name") -> list[dict]:
    """Records of an imagefolder's `metadata.jsonl`; checks the named columns exist in every record."""
    path = Path(data_dir) / "metadata.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected an imagefolder with a metadata.jsonl")
    records = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({err})") from None
            for column in (image_column, caption_column):
                if column not in record:
                    raise ValueError(
                        f"{path}:{line_no}: column {column!r} not found; available columns: {sorted(record)}"
                    )
            records.append(record)
    if not records:
        raise ValueError(f"{path} holds no records")
    return records
