"""Visual question answering scored on held-out scenes: questions drawn from their scene graphs, every kind and
every phrasing family (the one training uses and the held-out ones it never sees) on as many questions, and accuracy
reported per kind, per phrasing family (each held-out family, and all of them as `every_held_out`; and per phrasing),
per scene family, and for colour questions about one object and about several."""

from collections import defaultdict
from pathlib import Path


def normalise_answer(text: str) -> str:
    """An answer as it is compared: lower case, spaces collapsed, no trailing punctuation."""
    return " ".join(text.lower().split()).rstrip(" .!?")


def _accuracy(rows: list[bool]) -> float | None:
    return sum(rows) / len(rows) if rows else None


def evaluate_vqa(
    pipeline, data_dir, count: int, seed: int = 0, batch_size: int = 64, limit=None, progress=None, rewrite=True
):
    """Ask `count` questions (`genvl.world.questions.question_set(records, count, seed)`) about the scenes of the
    imagefolder `data_dir` and score the pipeline's answers by exact match. Each question is asked as the pipeline
    asks it (`asked_questions`: with `rewrite`, in training's phrasing where the world's reader reads it;
    `rewritten` counts those asked otherwise than typed). Questions are sorted by that text so that each pipeline
    call answers one question about many images. A question too long for the model's positions with its answer
    is scored wrong (`too_long` counts them)."""
    from ..io.imagefolder import read_metadata
    from ..pipelines.caption import question_prefix
    from ..world.questions import COLOUR_VERBS, KINDS, question_set
    from ..world.scenes import held_out

    data_dir = Path(data_dir)
    records = read_metadata(data_dir)[:limit]
    if not all(isinstance(r.get("scene"), dict) for r in records):
        raise ValueError(f"{data_dir}: every record needs a scene graph to ask questions of (genvl data scenes)")
    items = question_set(records, count, seed)
    # a question the model's positions cannot hold with its answer is answered wrong, not asked
    room = pipeline.settings().max_new_tokens
    asked = pipeline.asked_questions([item["question"] for item in items], rewrite)
    lefts = [pipeline.positions_left(text) for text in asked]
    fits = [left is None or room <= left for left in lefts]
    order = sorted((i for i in range(len(items)) if fits[i]), key=lambda i: (asked[i], i))
    answers = [""] * len(items)
    starts = range(0, len(order), batch_size)
    if progress is not None:
        starts = progress(starts, total=len(starts))
    for start in starts:
        rows = order[start : start + batch_size]
        images = [data_dir / records[items[i]["record"]]["file_name"] for i in rows]
        output = pipeline(images, question=[asked[i] for i in rows], num_return_sequences=1, rewrite_questions=False)
        for i, found in zip(rows, output.captions):
            answers[i] = found[0]
    right = [normalise_answer(answer) == item["answer"] for answer, item in zip(answers, items)]
    groups = defaultdict(list)
    for item, ok in zip(items, right):
        scene = records[item["record"]]["scene"]
        for key in (
            ("kinds", item["kind"]),
            ("phrasings", item["family"]),
            (f"{item['kind']}_by_phrasing", item["family"]),
            ("scenes", "held_out_family" if held_out(scene) else "in_family"),
            ("templates", f"{item['family']}: {item['template']}"),
        ):
            groups[key].append(ok)
        if item["family"] != "seen":
            groups["phrasings", "every_held_out"].append(ok)
        if item["kind"] == "colour":  # of one object, or of several of one kind ("what colour are the apples?")
            several = item["slots"]["is"] == COLOUR_VERBS["several"]["is"]
            groups["colour_by_number", "several" if several else "one"].append(ok)
    rewritten = sum(text != question_prefix(item["question"]) for text, item in zip(asked, items))
    report = {"questions": len(items), "accuracy": _accuracy(right), "too_long": fits.count(False)}
    report["rewritten"] = rewritten
    for (table, name), rows in sorted(groups.items()):
        report.setdefault(table, {})[name] = _accuracy(rows)
    report["scene_counts"] = {name: len(groups["scenes", name]) for name in ("in_family", "held_out_family")}
    report["kinds_not_asked"] = [kind for kind in KINDS if kind not in report["kinds"]]  # no scene answers them
    wrong = [(i, item, said) for i, (item, said, ok) in enumerate(zip(items, answers, right)) if not ok]
    report["wrong_examples"] = [
        {
            "image": records[item["record"]]["file_name"],
            "question": item["question"],
            "asked": asked[i],
            "answer": item["answer"],
            "said": said,
        }
        for i, item, said in wrong[:20]
    ]
    return report
