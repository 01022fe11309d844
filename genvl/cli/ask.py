"""`genvl ask`: answer a question about images with a question-answering captioner."""

import json
from pathlib import Path

from ..pipelines.defaults import shipped_pipeline
from .caption import caption_records, find_inputs, load_caption_pipeline
from .common import UsageError, add_runtime_flags, check_text, model_source, plural, positive, summarize

DEFAULT_VQA_MODEL = shipped_pipeline("genvl-vqa-small")
VQA_MODEL_VARIABLE = "GENVL_VQA_MODEL"


def vqa_model_folder(name=None) -> Path:
    """The question-answering captioner a command reads: `name` (its --model), else GENVL_VQA_MODEL, else the
    shipped default; a shipped pipeline's name is its folder."""
    return model_source(name, VQA_MODEL_VARIABLE, str(DEFAULT_VQA_MODEL))[0]


def add_parser(commands) -> None:
    """Register `genvl ask` on the `genvl` subparsers."""
    ask = commands.add_parser(
        "ask",
        help="answer a question about images",
        description="Answer one question about each image: colours, counts, what is left of or above an "
        "object, whether there is one, which is biggest. Prints `path<TAB>answer` per image.",
        epilog='example: genvl ask examples/images/three_green_butterflies.png "how many butterflies are there?"',
    )
    ask.add_argument("images", nargs="+", help="image files, folders, or tar shards (data/{000..009}.tar)")
    ask.add_argument("question", help="the question, asked of every image")
    ask.add_argument("--beam", type=positive(int), dest="num_beams", help="beam search with N beams")
    ask.add_argument("--json", action="store_true", help="one JSON record per image on stdout")
    add_rewrite_flag(ask)
    add_runtime_flags(ask, "question-answering captioner folder (default: the shipped genvl-vqa-small)")


def add_rewrite_flag(parser) -> None:
    parser.add_argument(
        "--no-rewrite",
        dest="rewrite_questions",
        action="store_false",
        help="ask questions as typed; by default a model of genvl's world is asked a question it can read in the "
        "phrasing training used (the JSON record's `asked`)",
    )


def run_ask(args) -> int:
    from ..io.images import printable_path
    from ..pipelines.caption import question_prefix

    question = question_prefix(check_text(args.question, "the question"))
    paths = find_inputs(args.images)
    pipeline = load_caption_pipeline(args, VQA_MODEL_VARIABLE, DEFAULT_VQA_MODEL)
    asked = pipeline.asked_questions([question], args.rewrite_questions)[0]
    overrides = {"num_beams": args.num_beams} if args.num_beams else {}
    settings = pipeline.settings(**overrides)
    left = pipeline.positions_left(asked)
    if left is not None and settings.max_new_tokens > left:
        raise UsageError(
            f"the question leaves the model positions for {max(left, 0)} answer tokens, not the "
            f"{settings.max_new_tokens} it may take: ask a shorter one"
        )
    asking = {**overrides, "question": asked, "rewrite_questions": False}
    for record in caption_records(pipeline, paths, 0, None, args, asking):
        answer, score = record["captions"][0]["text"], record["captions"][0]["score"]
        if args.json:
            record = {"path": record["path"], "question": question, "asked": asked, "answer": answer, "score": score}
            print(json.dumps(record), flush=True)
        else:
            print(f"{printable_path(record['path'])}\t{printable_path(answer)}", flush=True)
    summarize(args, f"answered the question for {plural(len(paths), 'image')}")
    return 0
