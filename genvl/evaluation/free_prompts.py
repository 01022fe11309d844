"""`genvl eval t2i --suite free`: prompts as people type them, judged by GenEval's rules and by what they say.

For each of GenEval's six categories, held-out scenes are asked for (`genvl.world.prompts.scene_request`) and
each request is phrased twice: once in the phrasing families training sees, once in a family it never sees
(`HELD_OUT_PHRASINGS`), so the two halves differ only in their wording. Every image is judged under GenEval's
rules and under the strict reading (`judge_request`: "a red bicycle" is one red bicycle and nothing else); the
real render of each scene is judged alongside, as the ceiling.
"""

import random
from pathlib import Path

from ..io.imagefolder import load_images, read_metadata
from ..world.prompts import GENEVAL_LAYOUTS, phrase_request, scene_request
from ..world.typed import read_prompt
from .judge import GENEVAL_CATEGORIES, category_accuracy, detect_images, judge_request
from .text_to_image import generate_for_prompts

SINGLE = ("single_object", "colours")  # the categories whose prompts ask for one object


def free_prompt_suite(records: list[dict], per_category: int, seed: int = 0) -> list[dict]:
    """The suite's prompts: for each GenEval category, up to `per_category` scenes of the records (drawn with
    `seed`) asked for as that category, each in a seen phrasing and then a held-out one. Each row holds the
    `prompt`, its `request`, the phrasing `families`, whether it is `held_out`, and the `record` it came from."""
    rng = random.Random(seed)
    rows = []
    for category in GENEVAL_CATEGORIES:
        scenes = [r for r in records if category in GENEVAL_LAYOUTS.get(r["scene"]["layout"], ())]
        for record in rng.sample(scenes, min(per_category, len(scenes))):
            request = scene_request(record["scene"], category, rng)
            if request["category"] != category:
                continue  # e.g. "colours" of an object in OpenMoji's own colours: no colour word to ask for
            for held_out in (False, True):
                prompt, families = phrase_request(request, rng, held_out=held_out)
                rows.append(
                    {"prompt": prompt, "request": request, "families": families, "held_out": held_out, "record": record}
                )
    return rows


def suite_scores(rows: list[dict], judgements: list[dict]) -> dict:
    """Accuracy per category under GenEval's rules and `strict_single_object` (the strict reading of the
    one-object prompts), for the seen phrasings, the held-out ones and all; `judgements[i]` (`judge_request`)
    judges an image drawn for `rows[i]`."""
    report = {}
    for group, kept in (("seen", (False,)), ("held_out", (True,)), ("all", (False, True))):
        pairs = [(row, j) for row, j in zip(rows, judgements, strict=True) if row["held_out"] in kept]
        scores = category_accuracy([{k: v for k, v in j.items() if k != "strict"} for _, j in pairs])
        strict = [j["strict"] for row, j in pairs if row["request"]["category"] in SINGLE]
        report[group] = {
            "images": len(pairs),
            **scores,
            "strict_single_object": sum(strict) / len(strict) if strict else None,
        }
    return report


def evaluate_free_prompts(
    pipeline,
    judge,
    data_dir,
    per_category: int = 50,
    images_per_prompt: int = 2,
    batch_size: int = 64,
    seed: int = 0,
    progress=None,
    **sampling,
) -> dict:
    """Generate `images_per_prompt` images for each prompt of the free-form suite built from the held-out
    scenes of `data_dir` (`free_prompt_suite`) and judge them (`suite_scores`), with the scenes' real renders
    judged the same way as the ceiling. `sampling` is passed on to the pipeline (steps, guidance scales)."""
    if per_category < 1 or images_per_prompt < 1:
        raise ValueError(f"need per_category >= 1 and images_per_prompt >= 1, got {per_category}, {images_per_prompt}")
    rows = free_prompt_suite(read_metadata(Path(data_dir)), per_category, seed)
    if not rows:
        raise ValueError(f"{data_dir}: no scene graph there can be asked for as a GenEval category")
    prompts = [row["prompt"] for row in rows]
    images = generate_for_prompts(pipeline, prompts, images_per_prompt, batch_size, seed, progress, **sampling)
    drawn_for = [row for row in rows for _ in range(images_per_prompt)]
    judged = [judge_request(r["request"], d) for r, d in zip(drawn_for, detect_images(judge, images, batch_size))]
    real = load_images(data_dir, [row["record"] for row in rows], "file_name", images.shape[-1])
    real_judged = [judge_request(r["request"], d) for r, d in zip(rows, detect_images(judge, real, batch_size))]
    examples = {}
    for row in rows:
        examples.setdefault(row["request"]["category"], {}).setdefault(
            "held_out" if row["held_out"] else "seen", row["prompt"]
        )
    return {
        "suite": "free",
        "prompts": len(rows),
        "images_per_prompt": images_per_prompt,
        "images": len(images),
        "generated": suite_scores(drawn_for, judged),
        "real_renders": suite_scores(rows, real_judged),
        "examples": examples,
    }


def evaluate_prompts(
    pipeline,
    judge,
    prompts: list[str],
    images_per_prompt: int = 50,
    batch_size: int = 64,
    seed: int = 0,
    progress=None,
    **sampling,
) -> dict:
    """Generate `images_per_prompt` images for each of the user's `prompts` (seeds `seed`, `seed` + 1, ..., as
    `genvl generate PROMPT -n N --seed S` draws them) and judge them: for each prompt, what it was read as
    (`read_prompt`), its accuracy under GenEval's rules and under the strict reading (`strict`: "a red bicycle"
    is one red bicycle and nothing else)."""
    requests = [read_prompt(prompt) for prompt in prompts]
    unread = [prompt for prompt, request in zip(prompts, requests) if request is None]
    if unread:
        raise ValueError(f"prompt {unread[0]!r} is not one the world's words can read: its objects, colours, relations")
    rows = []
    for prompt, request in zip(prompts, requests):
        images = generate_for_prompts(pipeline, [prompt], images_per_prompt, batch_size, seed, progress, **sampling)
        judged = [judge_request(request, found) for found in detect_images(judge, images, batch_size)]
        category = request["category"]
        rows.append(
            {
                "prompt": prompt,
                "request": request,
                "images": len(images),
                "seeds": [seed, seed + len(images) - 1],
                category: sum(j[category] for j in judged) / len(judged),
                "strict": sum(j["strict"] for j in judged) / len(judged),
            }
        )
    return {"prompts": rows}
