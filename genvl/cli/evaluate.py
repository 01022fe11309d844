"""`genvl eval caption`, `genvl eval retrieval` and `genvl eval t2i`: scores of models on held-out data."""

from itertools import chain
from pathlib import Path

from ..io.outputs import check_output_file
from .caption import (
    add_decoding_flags,
    checked_settings,
    decoding_overrides,
    default_caption_model,
    load_caption_pipeline,
)
from .common import (
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
    default_t2i_model,
    load_clip_parts,
    load_t2i_pipeline,
    stage_settings,
)


def add_parser(commands) -> None:
    """Register `genvl eval` and its subcommands on the `genvl` subparsers."""
    evaluate = commands.add_parser(
        "eval",
        help="evaluate models",
        epilog="example: genvl eval caption --data data/world/test --beam 3",
    ).add_subparsers(dest="eval_command", required=True, metavar="{caption,retrieval,t2i}")
    caption = evaluate.add_parser(
        "caption",
        help="caption metrics and scene-graph accuracy on a held-out imagefolder",
        epilog="example: genvl eval caption --data data/world/test --beam 3",
    )
    caption.add_argument("--data", required=True, help="imagefolder with metadata.jsonl")
    caption.add_argument("--limit", type=positive(int), help="evaluate the first N images only")
    caption.add_argument("--output", help="also write the report as JSON to this file")
    add_decoding_flags(caption)
    add_lora_flag(caption)
    add_runtime_flags(caption, "captioner folder (default: the shipped genvl-caption-small)")

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
    t2i.add_argument("--data", required=True, help="held-out imagefolder with scene graphs (genvl data scenes)")
    t2i.add_argument("--prompts", type=positive(int), default=250, help="held-out prompts, spread over the layouts")
    t2i.add_argument("--images-per-prompt", type=positive(int), default=4)
    t2i.add_argument("--judge", default=str(DEFAULT_JUDGE), help="judge folder (default: genvl-judge-small)")
    t2i.add_argument("--captioner", default=None, help="captioner for the round trip (default: the shipped one)")
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


def check_report_file(args, models) -> None:
    """--output, checked before any work: it must not be a file of the data or of `models`."""
    if args.output:
        from ..io.imagefolder import imagefolder_files

        check_output_file(args.output, "--output", chain(imagefolder_files(args.data), models))


def run_eval_caption(args) -> int:
    from ..evaluation.captioning import evaluate_captioner

    check_report_file(args, [args.model or default_caption_model(), *lora_folders(args)])
    pipeline = load_caption_pipeline(args)
    checked_settings(pipeline, args)
    progress = progress_bar(args, "batch")
    report = evaluate_captioner(
        pipeline,
        args.data,
        batch_size=args.batch_size,
        limit=args.limit,
        progress=progress,
        prefix=args.prefix,
        **decoding_overrides(args),
    )
    print_report(report, args.output)
    return 0


def run_eval_retrieval(args) -> int:
    from ..evaluation.retrieval import evaluate_retrieval

    check_report_file(args, [args.model or default_t2i_model()])
    report = evaluate_retrieval(*load_clip_parts(args), args.data, limit=args.limit, batch_size=args.batch_size)
    print_report(report, args.output)
    return 0


def run_eval_t2i(args) -> int:
    from ..evaluation.text_to_image import evaluate_text_to_image
    from ..models.judge import SceneJudge
    from ..pipelines.caption import CaptionPipeline

    settings = stage_settings(args)
    check_report_file(
        args,
        [args.model or default_t2i_model(), args.judge, args.captioner or default_caption_model(), *lora_folders(args)],
    )
    pipeline = load_t2i_pipeline(args)
    pipeline.set_progress_bar_config(disable=True)
    quiet_libraries(args)
    if not (Path(args.judge) / "config.json").is_file():
        raise FileNotFoundError(f"--judge {args.judge}: not a judge folder (no config.json)")
    judge = SceneJudge.from_pretrained(args.judge).to(args.device).eval()
    captioner = CaptionPipeline.from_pretrained(args.captioner or default_caption_model()).to(args.device)
    report = evaluate_text_to_image(
        pipeline,
        judge,
        args.data,
        captioner=captioner,
        num_prompts=args.prompts,
        images_per_prompt=args.images_per_prompt,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=progress_bar(args, "batch"),
        stages=args.stages,
        **settings,
    )
    report["settings"] = {"scheduler": args.scheduler, **settings}
    print_report(report, args.output)
    return 0


RUNS = {"caption": run_eval_caption, "retrieval": run_eval_retrieval, "t2i": run_eval_t2i}
