"""Reading Hugging Face imagefolders (images plus `metadata.jsonl`): the records, the files a reader opens, and
the images as one tensor."""

import json
import os
from pathlib import Path


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
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            for column in (image_column, caption_column):
                if column not in record:
                    raise ValueError(
                        f"{path}:{line_no}: column {column!r} not found; available columns: {sorted(record)}"
                    )
            problem = record_problem(record, image_column, caption_column)
            if problem:
                raise ValueError(f"{path}:{line_no}: {problem}")
            records.append(record)
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


def record_problem(record: dict, image_column: str, caption_column: str) -> str | None:
    """What is wrong with the types of a metadata record's columns, or None: the image a file name (a string) inside
    the folder, the caption a string, `captions` (the world's phrasings) a list of strings, `scene` a scene graph (an
    object)."""
    if not isinstance(record[image_column], str):
        return f"column {image_column!r} must be a file name, got {type(record[image_column]).__name__}"
    if Path(record[image_column]).is_absolute() or ".." in Path(record[image_column]).parts:  # as COCO files
        return f"column {image_column!r} must name a file inside the folder, got {record[image_column]!r}"
    if not isinstance(record[caption_column], str):
        return f"column {caption_column!r} must be a string, got {type(record[caption_column]).__name__}"
    captions = record.get("captions")
    if "captions" in record and not (isinstance(captions, list) and all(isinstance(c, str) for c in captions)):
        return f"column 'captions' must be a list of strings, got {json.dumps(captions)[:60]}"
    if "scene" in record and not isinstance(record["scene"], dict):
        return f"column 'scene' must be a scene graph (an object), got {type(record['scene']).__name__}"
    return None


def imagefolder_files(data_dir):
    """Yield the files of an imagefolder that its readers open: `metadata.jsonl` and the images under it. A
    generator, so that a caller needing none of them (`check_output_file`, when its output is a new name) reads
    no folder."""
    from .images import IMAGE_SUFFIXES

    yield Path(data_dir) / "metadata.jsonl"
    for folder, _, files in os.walk(data_dir):
        yield from (Path(folder) / name for name in sorted(files) if Path(name).suffix.lower() in IMAGE_SUFFIXES)


def open_record_image(data_dir, record: dict, image_column: str):
    """The PIL image of a record: its bytes when it came from a shard, else the file it names under data_dir."""
    import io

    from PIL import Image

    from .images import IMAGE_FORMATS

    if "image_bytes" in record:
        return Image.open(io.BytesIO(record["image_bytes"]), formats=IMAGE_FORMATS)
    return Image.open(Path(data_dir) / record[image_column], formats=IMAGE_FORMATS)


def load_images(data_dir, records, image_column: str, resolution: int):
    """All images of `records` as one uint8 tensor (N, 3, R, R): the world's datasets fit in memory."""
    import numpy as np
    import torch
    from einops import rearrange

    images = np.empty((len(records), resolution, resolution, 3), dtype=np.uint8)
    for i, record in enumerate(records):
        with open_record_image(data_dir, record, image_column) as image:
            images[i] = np.asarray(rgb_at(image, resolution))
    return rearrange(torch.from_numpy(images), "b h w c -> b c h w").contiguous()


def rgb_at(image, resolution: int):
    """A PIL image as RGB at `resolution` x `resolution`, resized bilinearly if it is another size: how every
    training image is brought to the training resolution."""
    from PIL import Image

    image = image.convert("RGB")
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BILINEAR)
    return image
