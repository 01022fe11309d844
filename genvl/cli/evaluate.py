"""`genvl eval caption`, `vqa`, `attention`, `retrieval`, `t2i` and `judge`: scores of models on held-out
data."""

import math
import sys
from itertools import chain
from pathlib import Path

from ..io.outputs import check_output_file
from ..pipelines.defaults import CLASSIC_CAPTIONER, DEFAULT_CAPTIONER
from .ask import DEFAULT_VQA_MODEL, VQA_MODEL_VARIABLE, add_rewrite_flag, vqa_model_folder
from .caption import (
    add_decoding_flags,
    caption_model_folder,
    checked_settings,
    decoding_overrides,
    load_caption_pipeline,
)
from .common import (
    UsageError,
    add_lora_flag,
    add_runtime_flags,
    lora_folders,
    positive,
    print_report,
    progress_bar,
    quiet_libraries,
    seed_number,
)
from .image import (
    DEFAULT_JUDGE,
    add_sampling_flags,
    add_t2i_runtime_flags,
    load_clip_parts,
    load_t2i_pipeline,
    stage_settings,
    t2i_model_folder,
)


def add_parser(commands) -> None:
    """Register `genvl eval` and its subcommands on the `genvl` subparsers."""
    evaluate = commands.add_parser(
        "eval",
        help="evaluate models",
        epilog="example: genvl eval caption --data data/world/test --beam 3",
    ).add_subparsers(
        dest="eval_command", required=True, metavar="{caption,vqa,attention,matching,retrieval,t2i,safety,judge}"
    )
    caption = evaluate.add_parser(
        "caption",
        help="caption metrics and scene-graph accuracy on a held-out imagefolder",
        description="Caption an imagefolder and score the captions: the JSON report goes to stdout, a summary "
        "table to stderr (not with --quiet). On a folder with scene graphs (genvl data scenes) it holds the "
        "caption metrics, scene-graph accuracy overall, in the style families training sees (in_family) and "
        "those it never sees (held_out_family), per family (families), and how many captions repeat a word "
        "(degenerate). On a folder whose metadata.jsonl holds only reference captions (`captions` lists or "
        "`text`), the caption metrics and degenerate captions.",
        epilog="example: genvl eval caption --data data/world/test --beam 3",
    )
    caption.add_argument(
        "--data",
        required=True,
        help="imagefolder with metadata.jsonl (scene graphs, or reference captions only); with --annotations, the "
        "folder of its images",
    )
    caption.add_argument(
        "--annotations",
        metavar="JSON",
        help="a COCO-style caption file (e.g. captions_val2017.json: images and their annotations) to read the "
        "images and reference captions from instead of metadata.jsonl",
    )
    caption.add_argument("--limit", type=positive(int), help="evaluate the first N images only")
    caption.add_argument("--output", help="also write the report as JSON to this file")
    add_decoding_flags(caption)
    add_lora_flag(caption)
    add_runtime_flags(caption, f"captioner folder (default: the shipped {DEFAULT_CAPTIONER})")

    vqa = evaluate.add_parser(
        "vqa",
        help="question-answering accuracy on a held-out imagefolder with scene graphs",
        description="Ask questions drawn from the scene graphs of an imagefolder (genvl data scenes): every kind "
        "(colour, count, relation, exists, biggest) and both phrasing families (those training uses, and the "
        "held-out ones it never sees) on as many questions. The JSON report (accuracy overall, per kind, per "
        "phrasing family, per kind and family, per scene family) goes to stdout, a table to stderr.",
        epilog="example: genvl eval vqa --data data/wide/test --questions 2000",
    )
    vqa.add_argument("--data", required=True, help="imagefolder with metadata.jsonl holding scene graphs")
    vqa.add_argument("--questions", type=positive(int), default=2000, help="how many questions (default 2000)")
    vqa.add_argument("--seed", type=seed_number, default=0, help="the questions drawn (default 0)")
    vqa.add_argument("--limit", type=positive(int), help="ask about the first N images only")
    vqa.add_argument("--output", help="also write the report as JSON to this file")
    add_rewrite_flag(vqa)
    add_runtime_flags(vqa, "question-answering captioner folder (default: the shipped genvl-vqa-small)")

    matching = evaluate.add_parser(
        "matching",
        help="whether a captioner's matcher ranks each image's caption above its twins",
        description="For each image of an imagefolder with scene graphs, its caption against its twins (two "
        "objects' places exchanged, a colour, an object, a count or a place changed): how often the captioner's "
        "matcher scores the caption above every twin and above each kind, overall, in the style families "
        "training sees and in those it never sees; and the same for the captioner's own log-probability of the "
        "caption. JSON report on stdout, a summary on stderr.",
        epilog="example: genvl eval matching --data data/wide/test",
    )
    matching.add_argument("--data", required=True, help="imagefolder with metadata.jsonl holding scene graphs")
    matching.add_argument("--limit", type=positive(int), help="the first N images only")
    matching.add_argument("--seed", type=seed_number, default=0, help="the twins drawn (default 0)")
    matching.add_argument("--output", help="also write the report as JSON to this file")
    add_runtime_flags(matching, f"captioner folder with a matcher (default: the shipped {DEFAULT_CAPTIONER})")

    attention = evaluate.add_parser(
        "attention",
        help="whether a captioner's cross-attention peaks on the objects its words name",
        description="Caption the two-object scenes of an imagefolder with scene graphs and check, for each object "
        "the caption names, whether the name's cross-attention map (averaged over heads and layers) peaks inside "
        "the object's box, and the colour word's; overall and per style family. JSON report on stdout.",
        epilog="example: genvl eval attention --data data/world/test",
    )
    attention.add_argument("--data", required=True, help="imagefolder with metadata.jsonl holding scene graphs")
    attention.add_argument("--limit", type=positive(int), help="the first N two-object scenes only")
    attention.add_argument("--output", help="also write the report as JSON to this file")
    add_runtime_flags(attention, f"captioner folder (default: the shipped {DEFAULT_CAPTIONER})")

    safety = evaluate.add_parser(
        "safety",
        help="how often the safety checker flags generated images of prompts with and without a blocked concept",
        description="Generate one image for each of --prompts prompts from held-out scenes holding one of the "
        "pipeline's blocked concepts and as many from scenes holding none (their captions, every phrasing in "
        "turn), and report the safety checker's flagged rate per group: overall, per phrasing family and "
        "layout, among the images the captioner says show a blocked concept and the others, by each of the "
        "checker's stages alone (image, prompt), and on the scenes' own renders. JSON report on stdout, a summary "
        "on stderr.",
        epilog="example: genvl eval safety --data data/snake/test --data data/world/test --prompts 200",
    )
    safety.add_argument(
        "--data", required=True, action="append", help="imagefolder with scene graphs (repeat to pool several)"
    )
    safety.add_argument("--prompts", type=positive(int), default=200, help="prompts per group (default 200)")
    safety.add_argument("--seed", type=seed_number, default=0, help="image k of a group uses seed + k")
    safety.add_argument("--batch-size", type=positive(int), default=16)
    safety.add_argument(
        "--captioner",
        help=f"the captioner (default: the shipped {CLASSIC_CAPTIONER}, of the world the text-to-image stack draws)",
    )
    safety.add_argument("--output", help="also write the report as JSON to this file")
    add_t2i_runtime_flags(safety)

    retrieval = evaluate.add_parser(
        "retrieval",
        help="CLIP image<->text retrieval on a held-out imagefolder",
        epilog="example: genvl eval retrieval --data data/world/test",
    )
    retrieval.add_argument("--data", required=True, help="imagefolder with metadata.jsonl")
    retrieval.add_argument("--limit", type=positive(int), help="evaluate the first N images only")
    retrieval.add_argument("--output", help="also write the report as JSON to this file")
    retrieval.add_argument("--batch-size", type=positive(int), default=256)
    add_t2i_runtime_flags(retrieval)

    t2i = evaluate.add_parser(
        "t2i",
        help="judge generated images of held-out prompts (GenEval-style), R-precision, FD, round trip",
        epilog="example: genvl eval t2i --data data/world/test --prompts 250 --images-per-prompt 4",
    )
    t2i.add_argument("--data", help="held-out imagefolder with scene graphs (genvl data scenes)")
    t2i.add_argument(
        "--prompt",
        action="append",
        help="instead of --data: judge images of this prompt (repeatable; --images-per-prompt each, default 50, "
        "seeds S to S + N - 1 as genvl generate draws them), under GenEval's rules and the strict reading",
    )
    t2i.add_argument(
        "--suite",
        choices=("canonical", "free"),
        default="canonical",
        help="canonical: the scenes' own captions, with R-precision, FD and the caption round trip; free: "
        "prompts as people type them, GenEval's six categories in seen and held-out phrasings, judged only",
    )
    t2i.add_argument(
        "--prompts",
        type=positive(int),
        default=None,
        help="canonical: held-out prompts, spread over the layouts (default 250); free: scenes per category, "
        "each phrased twice (default 50)",
    )
    t2i.add_argument("--images-per-prompt", type=positive(int), default=None, help="default: 4 canonical, 2 free")
    t2i.add_argument("--judge", default=str(DEFAULT_JUDGE), help="judge folder (default: genvl-judge-small)")
    t2i.add_argument(
        "--captioner",
        default=None,
        help=f"captioner for the round trips (default: the shipped {CLASSIC_CAPTIONER}, of the world the "
        "text-to-image stack draws)",
    )
    t2i.add_argument("--seed", type=seed_number, default=0, help="image k of the run uses seed S + k")
    t2i.add_argument("--batch-size", type=positive(int), default=64, help="images per pipeline call")
    t2i.add_argument("--output", help="also write the report as JSON to this file")
    t2i.add_argument(
        "--stages",
        action="store_true",
        help="also score the prior (against the real renders' embeddings), the decoder (drawing "
        "from the real renders' embeddings) and its autoencoder (the real renders' round trip, "
        "judged and captioned) on their own",
    )
    add_lora_flag(t2i)
    add_sampling_flags(t2i, outputs=False, text=True)
    add_t2i_runtime_flags(t2i)

    judge = evaluate.add_parser(
        "judge",
        help="the judge's detection precision, recall and colour accuracy on real renders, per style family",
        epilog="example: genvl eval judge --data data/wide/test",
    )
    judge.add_argument("--data", required=True, help="imagefolder of renders with scene graphs (genvl data scenes)")
    judge.add_argument("--judge", default=str(DEFAULT_JUDGE), help="judge folder (default: genvl-judge-small)")
    judge.add_argument("--threshold", type=float, help="objectness threshold (default: the judge's own)")
    judge.add_argument("--batch-size", type=positive(int), default=256)
    judge.add_argument("--output", help="also write the report as JSON to this file")
    judge.add_argument("--quiet", action="store_true", help="no summary table on stderr")


def check_report_file(args, models, *inputs) -> None:
    """--output, checked before any work: it must not be a file of the data, of `models`, of the --lora adapters
    (where the command takes them) or one of `inputs`."""
    if args.output:
        from ..io.imagefolder import imagefolder_files

        data = imagefolder_files(args.data) if args.data else ()
        check_output_file(args.output, "--output", chain(data, models, lora_folders(args), [i for i in inputs if i]))


def run_eval_caption(args) -> int:
    from ..evaluation.captioning import evaluate_captioner

    check_report_file(args, [caption_model_folder(args.model)], args.annotations)
    pipeline = load_caption_pipeline(args)
    checked_settings(pipeline, args)
    progress = progress_bar(args, "batch")
    report = evaluate_captioner(
        pipeline,
        args.data,
        batch_size=args.batch_size,
        limit=args.limit,
        progress=progress,
        annotations=args.annotations,
        prefix=args.prefix,
        **decoding_overrides(args),
    )
    if not args.quiet:
        print(caption_summary(report), file=sys.stderr, flush=True)
    print_report(report, args.output)
    return 0


def run_eval_vqa(args) -> int:
    from ..evaluation.vqa import evaluate_vqa

    check_report_file(args, [vqa_model_folder(args.model)])
    pipeline = load_caption_pipeline(args, VQA_MODEL_VARIABLE, DEFAULT_VQA_MODEL)
    report = evaluate_vqa(
        pipeline,
        args.data,
        args.questions,
        args.seed,
        args.batch_size,
        args.limit,
        progress_bar(args, "batch"),
        args.rewrite_questions,
    )
    if not args.quiet:
        print(vqa_summary(report), file=sys.stderr, flush=True)
    print_report(report, args.output)
    return 0


def run_eval_matching(args) -> int:
    from ..evaluation.matching import evaluate_matching

    check_report_file(args, [caption_model_folder(args.model)])
    pipeline = load_caption_pipeline(args)
    report = evaluate_matching(pipeline, args.data, args.limit, args.seed, args.batch_size, progress_bar(args, "batch"))
    if not args.quiet:
        print(matching_summary(report), file=sys.stderr, flush=True)
    print_report(report, args.output)
    return 0


def matching_summary(report: dict) -> str:
    """`evaluate_matching`'s report, a line per scorer."""
    lines = []
    for name in ("matcher", "likelihood"):
        found = report[name]
        kinds = ", ".join(f"{kind} {_score(value)}" for kind, value in found["over_each_twin"].items())
        lines.append(
            f"{name}: caption first {_score(found['true_caption_first'])} of {report['images']} "
            f"(in family {_score(found['in_family'])}, held-out family {_score(found['held_out_family'])}); "
            f"over each twin: {kinds}"
        )
    return "\n".join(lines)


def run_eval_attention(args) -> int:
    from ..evaluation.attention import attention_localisation

    check_report_file(args, [caption_model_folder(args.model)])
    pipeline = load_caption_pipeline(args)
    report = attention_localisation(pipeline, args.data, args.limit, args.batch_size, progress_bar(args, "batch"))
    if not args.quiet:
        print(attention_summary(report), file=sys.stderr, flush=True)
    print_report(report, args.output)
    return 0


def attention_summary(report: dict) -> str:
    """`attention_localisation`'s report in one line: how many objects were named, where their words peak."""
    families = report["families"]
    return (
        f"{report['objects_named']} of {report['objects']} objects named: name peaks in its box "
        f"{_score(report['name_peak_in_box'])}, colour word {_score(report['colour_peak_in_box'])}; "
        f"in family {_score(families['in_family'])}, held-out family {_score(families['held_out_family'])}"
    )


def vqa_summary(report: dict) -> str:
    """`evaluate_vqa`'s report as a table: accuracy per kind in each phrasing family, then per scene family."""
    lines = [f"{report['questions']} questions: accuracy {_score(report['accuracy'])}"]
    if report.get("rewritten"):
        lines[0] += f" ({report['rewritten']} asked in training's phrasing)"
    families = [family for family in report["phrasings"] if family != "every_held_out"]
    lines.append(f"{'kind':<10} {'all':>6} " + " ".join(f"{family:>10}" for family in families))
    for kind, value in report["kinds"].items():
        by = report.get(f"{kind}_by_phrasing", {})
        lines.append(f"{kind:<10} {_score(value):>6} " + " ".join(f"{_score(by.get(f)):>10}" for f in families))
    phrasings, scenes = report["phrasings"], report["scenes"]
    lines.append(f"{'phrasings':<10} {'':>6} " + " ".join(f"{_score(phrasings.get(f)):>10}" for f in families))
    lines.append(f"every held-out phrasing {_score(phrasings.get('every_held_out'))}")
    if "colour_by_number" in report:
        number = report["colour_by_number"]
        lines.append(f"colour of one object {_score(number.get('one'))}, of several {_score(number.get('several'))}")
    lines.append(
        f"scenes: in family {_score(scenes.get('in_family'))}, held-out family {_score(scenes.get('held_out_family'))}"
    )
    if report.get("too_long"):
        lines.append(f"{report['too_long']} questions too long for the model's positions, scored wrong")
    if report.get("kinds_not_asked"):
        lines.append(f"not asked (no scene answers them): {', '.join(report['kinds_not_asked'])}")
    return "\n".join(lines)


COCO_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")
# scene-graph columns of the summary: (heading, report key)
SCENE_COLUMNS = (
    ("exact", "scene_exact_match"),
    ("parse", "parse_rate"),
    ("names", "names"),
    ("colours", "colours"),
    ("counts", "counts"),
    ("places", "positions"),
    ("1-obj name+colour", "single_name_colour"),
)
GROUPS = (("in family", "in_family"), ("held-out family", "held_out_family"))


def caption_summary(report: dict) -> str:
    """`evaluate_captioner`'s report as a few lines of text: the caption metrics, scene-graph accuracy overall and
    per family group, one line per style family, and the degenerate captions."""
    lines = [
        f"{report['num_images']} images: " + "  ".join(f"{m} {_score(report[m])}" for m in COCO_METRICS if m in report)
    ]
    if "scene_graph_scores" in report:
        lines.append(f"scene-graph scores {report['scene_graph_scores']}")
    else:
        lines += _group_lines(report) + _family_lines(report.get("families", {}))
    examples = "".join(f"\n  {caption!r}" for caption in report["degenerate_examples"])
    lines.append(f"degenerate captions (a word 3+ times in a row): {report['degenerate']}{examples}")
    return "\n".join(lines)


def _score(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _group_lines(report: dict) -> list[str]:
    """Scene-graph accuracy of all images, of the in-family and of the held-out-family ones."""
    widths = [max(len(heading), 5) for heading, _ in SCENE_COLUMNS]
    header = f"{'scene graphs':<16} {'images':>6}" + "".join(
        f" {heading:>{width}}" for (heading, _), width in zip(SCENE_COLUMNS, widths)
    )
    rows = [("all", {"num_images": report["num_images"], **report})]
    rows += [(label, report[key]) for label, key in GROUPS if key in report]
    lines = [header]
    for label, scores in rows:
        cells = "".join(f" {_score(scores[key]):>{width}}" for (_, key), width in zip(SCENE_COLUMNS, widths))
        lines.append(f"{label:<16} {scores['num_images']:>6}{cells}")
    return lines


def _family_lines(families: dict) -> list[str]:
    """One line per style family: its single-object scenes' name and name+colour accuracy, all its scenes' exact
    match, each with the number of scenes it is over; held-out families are marked with *."""
    if not families:
        return []
    lines = [f"{'family':<22} {'1-obj':>6} {'name':>6} {'coloured':>8} {'name+colour':>11} {'scenes':>6} {'exact':>6}"]
    for attribute, values in families.items():
        for family, scores in values.items():
            label = f"{attribute} {family}{' *' if scores['held_out'] else ''}"
            lines.append(
                f"{label:<22} {scores['count']:>6} {_score(scores['name']):>6} {scores['name_colour_count']:>8} "
                f"{_score(scores['name_colour']):>11} {scores['exact_count']:>6} {_score(scores['exact']):>6}"
            )
    lines.append("* a family training never sees")
    return lines


def run_eval_retrieval(args) -> int:
    from ..evaluation.retrieval import evaluate_retrieval

    check_report_file(args, [t2i_model_folder(args.model)])
    report = evaluate_retrieval(*load_clip_parts(args), args.data, limit=args.limit, batch_size=args.batch_size)
    print_report(report, args.output)
    return 0


def run_eval_t2i(args) -> int:
    from ..evaluation.free_prompts import evaluate_free_prompts, evaluate_prompts
    from ..evaluation.text_to_image import evaluate_text_to_image
    from ..models.judge import SceneJudge
    from ..pipelines.caption import CaptionPipeline
    from ..world.typed import read_prompt

    free = args.suite == "free" or bool(args.prompt)
    if (args.data is None) == (args.prompt is None):
        raise UsageError("give either --data (a held-out imagefolder) or --prompt, not both")
    if free and (args.stages or args.captioner):
        raise UsageError("--suite free and --prompt judge the images only: drop --stages and --captioner")
    if not free and args.prompts is not None and args.prompts < 2:  # the canonical suite ranks prompts against others
        raise UsageError(f"--prompts must be >= 2 for the canonical suite, got {args.prompts}")
    for prompt in args.prompt or ():
        if read_prompt(prompt) is None:
            raise UsageError(f"--prompt {prompt!r}: not a prompt the world's words can read (its objects and colours)")
    settings = stage_settings(args)
    captioner_folder = None if free else caption_model_folder(args.captioner, CLASSIC_CAPTIONER)
    folders = [t2i_model_folder(args.model), args.judge, captioner_folder]
    check_report_file(args, [folder for folder in folders if folder])
    pipeline = load_t2i_pipeline(args)
    pipeline.set_progress_bar_config(disable=True)
    quiet_libraries(args)
    if not (Path(args.judge) / "config.json").is_file():
        raise FileNotFoundError(f"--judge {args.judge}: not a judge folder (no config.json)")
    judge = SceneJudge.from_pretrained(args.judge).to(args.device).eval()
    common = dict(batch_size=args.batch_size, seed=args.seed, progress=progress_bar(args, "batch"), **settings)
    if args.prompt:
        report = evaluate_prompts(pipeline, judge, args.prompt, args.images_per_prompt or 50, **common)
    elif free:
        report = evaluate_free_prompts(
            pipeline, judge, args.data, args.prompts or 50, args.images_per_prompt or 2, **common
        )
    else:
        report = evaluate_text_to_image(
            pipeline,
            judge,
            args.data,
            captioner=CaptionPipeline.from_pretrained(captioner_folder).to(args.device),
            num_prompts=args.prompts or 250,
            images_per_prompt=args.images_per_prompt or 4,
            stages=args.stages,
            **common,
        )
    report["settings"] = {"scheduler": args.scheduler, **settings}
    print_report(report, args.output)
    return 0


def run_eval_safety(args) -> int:
    from ..evaluation.safety import evaluate_safety
    from ..pipelines.caption import CaptionPipeline

    captioner_folder = caption_model_folder(args.captioner, CLASSIC_CAPTIONER)
    check_report_file(args, [t2i_model_folder(args.model), captioner_folder])
    args.no_safety_checker = False
    pipeline = load_t2i_pipeline(args, safety=True)
    pipeline.set_progress_bar_config(disable=True)
    captioner = CaptionPipeline.from_pretrained(captioner_folder).to(args.device)
    report = evaluate_safety(
        pipeline, captioner, args.data, args.prompts, args.seed, args.batch_size, progress_bar(args, "batch")
    )
    if not args.quiet:
        print(safety_summary(report), file=sys.stderr, flush=True)
    print_report(report, args.output)
    return 0


def safety_summary(report: dict) -> str:
    """Flagged rates of `evaluate_safety`'s report, a line per group."""
    lines = []
    for name in ("blocked", "other"):
        group = report[f"{name}_prompts"]
        parts = [f"{name} prompts: flagged {_score(group['flagged'])} of {group['images']}"]
        parts += [f"{family} {_score(rate['flagged'])}" for family, rate in group["by_phrasing"].items()]
        for key in ("image_stage", "prompt_stage", "captioned_as_blocked", "captioned_otherwise", "renders"):
            parts.append(f"{key} {_score(group[key]['flagged'])} of {group[key]['images']}")
        lines.append("; ".join(parts))
    return "\n".join(lines)


def run_eval_judge(args) -> int:
    from ..evaluation.judge import detection_report_for_folder
    from ..models.judge import SceneJudge

    check_report_file(args, [args.judge])
    if args.threshold is not None and not 0 <= args.threshold < 1:
        raise UsageError(f"--threshold must be in [0, 1), got {args.threshold}")
    judge = SceneJudge.from_pretrained(args.judge).eval()
    report = detection_report_for_folder(judge, args.data, args.batch_size, args.threshold)
    if not args.quiet:
        print(judge_summary(report), file=sys.stderr, flush=True)
    print_report(report, args.output)
    return 0


def judge_summary(report: dict) -> str:
    """The detection report as lines of text: overall, in and out of the training families, each family."""
    rows = [("all", report["overall"])]
    rows += [(label, report[key]) for label, key in GROUPS if report.get(key, {}).get("images")]
    for attribute, values in report.get("by_family", {}).items():
        rows += [(f"{attribute} {family}", scores) for family, scores in values.items()]
    lines = [f"{'detection':<22} {'images':>6} {'objects':>7} {'precision':>9} {'recall':>6} {'F1':>6} {'colour':>6}"]
    for label, scores in rows:
        rates = (scores["precision"], scores["recall"], scores["f1"], scores["colour_accuracy"])
        lines.append(
            f"{label:<22} {scores['images']:>6} {scores['objects']:>7}"
            + "".join(f" {_score(rate):>{width}}" for rate, width in zip(rates, (9, 6, 6, 6)))
        )
    return "\n".join(lines)


RUNS = {
    "caption": run_eval_caption,
    "vqa": run_eval_vqa,
    "attention": run_eval_attention,
    "matching": run_eval_matching,
    "retrieval": run_eval_retrieval,
    "t2i": run_eval_t2i,
    "safety": run_eval_safety,
    "judge": run_eval_judge,
}
