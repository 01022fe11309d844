"""Image-text matching scored on held-out scenes: each image's own caption against its twins (the same scene with
two objects' places exchanged, a colour, an object, a count or a place changed; `genvl.world.twins`), by the
captioner's matcher and, as its peer, by the captioner's own log-probability of each caption."""

import random
from pathlib import Path

import torch

from ..world.twins import TWIN_KINDS, caption_twins


def _accuracy(rows: list[bool]) -> float | None:
    return sum(rows) / len(rows) if rows else None


def _summary(picked: list[bool], pairs: dict, families: dict) -> dict:
    return {
        "true_caption_first": _accuracy(picked),
        "over_each_twin": {kind: _accuracy(rows) for kind, rows in pairs.items() if rows},
        "in_family": _accuracy(families[False]),
        "held_out_family": _accuracy(families[True]),
    }


@torch.no_grad()
def evaluate_matching(pipeline, data_dir, limit=None, seed: int = 0, batch_size: int = 32, progress=None) -> dict:
    """For each image of the imagefolder `data_dir` (scene graphs needed), its canonical caption and its twins'
    (`caption_twins` with a generator seeded by `seed` and the image's index): how often the caption scores above
    every twin (`true_caption_first`) and above each kind of twin, overall and in the style families training
    sees and those it never sees; for the pipeline's `matcher` and for the captioner's log-probability."""
    from ..io.imagefolder import read_metadata
    from ..models.matching import caption_features
    from ..world.scenes import held_out

    if pipeline.matcher is None:
        raise ValueError("the captioner has no matcher (an image-text matching head) to evaluate")
    data_dir = Path(data_dir)
    records = read_metadata(data_dir)[:limit]
    if not all(isinstance(r.get("scene"), dict) for r in records):
        raise ValueError(f"{data_dir}: every record needs a scene graph to draw its twins from (genvl data scenes)")
    scorers = ("matcher", "likelihood")
    picked = {name: [] for name in scorers}
    pairs = {name: {kind: [] for kind in TWIN_KINDS} for name in scorers}
    families = {name: {False: [], True: []} for name in scorers}
    starts = range(0, len(records), batch_size)
    if progress is not None:
        starts = progress(starts, total=len(starts))
    for start in starts:
        chunk = records[start : start + batch_size]
        states = pipeline._encode_rows(list(pipeline.preprocess([data_dir / r["file_name"] for r in chunk])))
        rows, captions, kinds = [], [], []
        for offset, record in enumerate(chunk):
            twins = caption_twins(record["scene"], random.Random(f"{seed}/{start + offset}"))
            for kind, caption in [(None, record["text"]), *twins]:
                rows.append(offset)
                captions.append(caption)
                kinds.append(kind)
        features = caption_features(pipeline.model, pipeline.tokenizer, states[torch.tensor(rows)], captions)
        scores = {"matcher": pipeline.matcher(*features).float().cpu(), "likelihood": features[1].sum(1).cpu()}
        rows = torch.tensor(rows)
        for offset, record in enumerate(chunk):
            mine = (rows == offset).nonzero().flatten().tolist()
            family = held_out(record["scene"])
            for name in scorers:
                own, others = scores[name][mine[0]], scores[name][mine[1:]]
                picked[name].append(bool((own > others).all()))
                families[name][family].append(picked[name][-1])
                for index, score in zip(mine[1:], others):
                    pairs[name][kinds[index]].append(bool(own > score))
    report = {"images": len(records), "twins": sum(len(rows) for rows in pairs["matcher"].values())}
    for name in scorers:
        report[name] = _summary(picked[name], pairs[name], families[name])
    return report
