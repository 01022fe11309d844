"""The safety checker measured on generated images: prompts drawn from held-out scenes that hold a blocked
concept and from scenes that hold none, one image each, and how often the checker flags each group.

The generator does not always draw what a prompt asks, so the images are also captioned by a captioner trained
apart from both (the shipped one): the flagged rate is also reported among the images whose caption names a
blocked concept and among the rest. The scenes' own renders are checked too. The checker's two stages are also
reported alone: the image stage (what the images show) and the prompt stage (what the prompts name)."""

from pathlib import Path

import numpy as np
import torch


def _rate(flags: list[bool]) -> dict:
    return {"images": len(flags), "flagged": sum(flags) / len(flags) if flags else None}


def safety_prompts(records: list[dict], blocked: list[str], count: int) -> dict:
    """{"blocked": [...], "other": [...]}: the first `count` records of each group (a scene holding a blocked
    concept, or none), each as {"record", "prompt", "phrasing"}: record k of a group is prompted with its caption
    k modulo the number of its captions (phrasing 0 is the caption `text` holds, the others its other
    phrasings)."""
    groups = {"blocked": [], "other": []}
    for record in records:
        names = {obj["name"] for obj in record["scene"]["objects"]}
        group = groups["blocked" if names & set(blocked) else "other"]
        if len(group) < count:
            captions = record.get("captions") or [record["text"]]
            phrasing = len(group) % len(captions)
            group.append({"record": record, "prompt": captions[phrasing], "phrasing": phrasing})
    return groups


@torch.no_grad()
def evaluate_safety(pipeline, captioner, data_dirs, count: int, seed: int = 0, batch_size: int = 16, progress=None):
    """Generate one image for each of `count` prompts of scenes holding one of the pipeline's `safety_checker`'s
    blocked concepts and of `count` prompts of scenes holding none (`safety_prompts` over the records of the
    imagefolders `data_dirs`), image k of a group drawn with a generator seeded `seed + k`, and report the
    checker's flagged rate per group: overall, per phrasing family, per layout, among the images the
    `captioner` says show a blocked concept and among the others; by each of the checker's stages alone (image,
    prompt); and on the scenes' renders."""
    from ..io.imagefolder import read_metadata
    from ..models.safety import named_concepts, request_texts

    checker = pipeline.safety_checker
    if checker is None or not checker.config.blocked:
        raise ValueError("the pipeline has no safety checker with a blocked concept to measure")
    blocked = list(checker.config.blocked)
    records = []
    for folder in data_dirs:
        rows = read_metadata(Path(folder))
        if not all(isinstance(r.get("scene"), dict) for r in rows):
            raise ValueError(f"{folder}: every record needs a scene graph (genvl data scenes)")
        records += [{**r, "folder": Path(folder)} for r in rows]
    drawing = pipeline.for_another_thread()  # the images as drawn: the checker runs below, on the same pixels
    drawing.safety_checker = None
    groups = safety_prompts(records, blocked, count)
    for name, items in groups.items():
        if len(items) < count:
            raise ValueError(f"the data holds {len(items)} scenes for the {name} prompts, fewer than {count}")
    jobs = [(name, k, item) for name, items in groups.items() for k, item in enumerate(items)]
    starts = range(0, len(jobs), batch_size)
    if progress is not None:
        starts = progress(starts, total=len(starts))
    rows = []
    for start in starts:
        chunk = jobs[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed + k) for _, k, _ in chunk]
        prompts = [item["prompt"] for _, _, item in chunk]
        output = drawing(prompts, generator=generators, output_type="pt")
        pixels = output.images * 2 - 1  # [0, 1] -> [-1, 1]
        seen = pipeline.run_safety_checker(pixels)[1]
        named = checker.check_text(request_texts(prompts, output.prompts))  # as typed and as drawn
        flagged = checker.either(seen, named)  # what the pipeline flags: either stage
        captions = captioner(list(pipeline.postprocess(pixels, "pil"))).captions
        render_flags = [check_render(checker, item["record"]) for _, _, item in chunk]
        stages = zip(flagged, seen, named)
        for (name, _, item), (found, image_found, prompt_found), caption, render_found in zip(
            chunk, stages, captions, render_flags
        ):
            rows.append(
                {
                    "group": name,
                    "prompt": item["prompt"],
                    "phrasing": item["phrasing"],
                    "layout": item["record"]["scene"].get("layout"),
                    "flagged": found,
                    "image_flagged": bool(image_found),
                    "prompt_flagged": bool(prompt_found),
                    "caption": caption[0],
                    "shows": bool(named_concepts(caption[0], blocked)),
                    "render_flagged": bool(render_found),
                }
            )
    return safety_report(rows, blocked)


def check_render(checker, record: dict) -> list[str]:
    """The blocked concepts `checker` finds in a record's own render."""
    from ..io.images import load_image

    image = load_image(record["folder"] / record["file_name"]).convert("RGB")
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    return checker.check(pixels)[0]


def safety_report(rows: list[dict], blocked: list[str]) -> dict:
    """The flagged rates of `evaluate_safety`'s rows."""
    report = {"blocked": blocked}
    for name in ("blocked", "other"):
        group = [row for row in rows if row["group"] == name]
        flags = lambda rows: [bool(row["flagged"]) for row in rows]  # noqa: E731
        report[f"{name}_prompts"] = {
            **_rate(flags(group)),
            "by_phrasing": {
                "first": _rate(flags([r for r in group if r["phrasing"] == 0])),
                "other_phrasings": _rate(flags([r for r in group if r["phrasing"] != 0])),
            },
            "by_layout": {
                layout: _rate(flags([r for r in group if r["layout"] == layout]))
                for layout in sorted({str(r["layout"]) for r in group})
            },
            "captioned_as_blocked": _rate(flags([r for r in group if r["shows"]])),
            "captioned_otherwise": _rate(flags([r for r in group if not r["shows"]])),
            "renders": _rate([row["render_flagged"] for row in group]),
            "image_stage": _rate([row["image_flagged"] for row in group]),
            "prompt_stage": _rate([row["prompt_flagged"] for row in group]),
        }
    report["images"] = len(rows)
    report["missed"] = [
        {"prompt": r["prompt"], "caption": r["caption"]} for r in rows if r["group"] == "blocked" and not r["flagged"]
    ]
    report["false_alarms"] = [
        {"prompt": r["prompt"], "caption": r["caption"]} for r in rows if r["group"] == "other" and r["flagged"]
    ]
    return report
