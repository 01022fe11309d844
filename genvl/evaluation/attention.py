"""Whether a captioner's cross-attention looks where its words are: on two-object scenes, does each object's
name (and colour word) peak inside that object's box?"""

from pathlib import Path

PAIRS = ("pair_h", "pair_v")


def peak_inside(word_map, bbox) -> bool:
    """Whether the cell where `word_map` (side, side), laid over the 64-unit frame, peaks has its centre inside
    `bbox` (x0, y0, x1, y1 in 64-unit pixels)."""
    side = word_map.shape[-1]
    index = int(word_map.argmax())
    x, y = ((index % side) + 0.5) * 64 / side, ((index // side) + 0.5) * 64 / side
    x0, y0, x1, y1 = bbox
    return x0 <= x <= x1 and y0 <= y <= y1


def attention_localisation(pipeline, data_dir, limit=None, batch_size: int = 16, progress=None) -> dict:
    """Caption the two-object scenes of an imagefolder with scene graphs (greedy, with `output_attentions`) and
    score each object the caption names: whether its name's map, and its colour word's, peak inside its box.
    Scenes whose two objects share a name are left out (a word could not say which it means)."""
    from ..io.imagefolder import read_metadata
    from ..world.scenes import held_out

    data_dir = Path(data_dir)
    records = [
        r
        for r in read_metadata(data_dir)
        if isinstance(r.get("scene"), dict)
        and r["scene"].get("layout") in PAIRS
        and r["scene"]["objects"][0]["name"] != r["scene"]["objects"][1]["name"]
    ][:limit]
    if not records:
        raise ValueError(f"{data_dir}: no two-object scenes of distinct objects (genvl data scenes)")
    hits = {"names": [], "colours": [], "in_family": [], "held_out_family": []}
    mentioned = 0
    starts = range(0, len(records), batch_size)
    if progress is not None:
        starts = progress(starts, total=len(starts))
    for start in starts:
        batch = records[start : start + batch_size]
        output = pipeline([data_dir / r["file_name"] for r in batch], output_attentions=True, num_return_sequences=1)
        for record, words in zip(batch, (found[0] for found in output.attentions)):
            scene = record["scene"]
            family = "held_out_family" if held_out(scene) else "in_family"
            for obj in scene["objects"]:
                at = [k for k, (word, _) in enumerate(words) if word.strip(",.") == obj["name"]]
                if len(at) != 1:
                    continue
                mentioned += 1
                inside = peak_inside(words[at[0]][1], obj["bbox"])
                hits["names"].append(inside)
                hits[family].append(inside)
                if obj["colour"] and at[0] > 0 and words[at[0] - 1][0] == obj["colour"]:
                    hits["colours"].append(peak_inside(words[at[0] - 1][1], obj["bbox"]))

    def rate(rows):
        return sum(rows) / len(rows) if rows else None

    return {
        "scenes": len(records),
        "objects": 2 * len(records),
        "objects_named": mentioned,
        "name_peak_in_box": rate(hits["names"]),
        "colour_peak_in_box": rate(hits["colours"]),
        "colour_words": len(hits["colours"]),
        "families": {name: rate(hits[name]) for name in ("in_family", "held_out_family")},
        "family_words": {name: len(hits[name]) for name in ("in_family", "held_out_family")},
        "maps": "cross-attention averaged over heads and layers (and a word's tokens), not a rollout",
    }
