"""The text-to-image commands of `genvl`: generate, vary, interpolate, score, eval retrieval, eval t2i."""

import argparse
import json
import os
import random
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from .cli import (UsageError, add_image_limit_flag, add_lora_flag, check_text, checked_type, plural, positive,
                  seed_number, summarize)
from .io.outputs import check_output_file, written_atomically

DEFAULT_T2I_MODEL = Path(__file__).resolve().parent.parent / "pipelines" / "genvl-unclip-small"
DEFAULT_JUDGE = DEFAULT_T2I_MODEL.parent / "genvl-judge-small"
BATCH_HELP = ("images made at once, each alone on one CPU thread (default: one per core). An image is the same "
              "bit for bit whatever this is, so the seed recorded in its PNG reproduces it")
# name -> (diffusers scheduler class, config overrides); "dpm-sde" is DPM-Solver++'s stochastic variant at first
# order, which came closest to DDPM 25 + 25's judged accuracy at 12 + 12 steps; the second order and the ODE solver
# lose more (see the unCLIP model card)
SCHEDULERS = {"ddpm": ("DDPMScheduler", {}), "ddim": ("DDIMScheduler", {}),
              "dpm": ("DPMSolverMultistepScheduler", {}),
              "dpm-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 1})}


GUIDANCE = checked_type(float, lambda value: value >= 0, "a number >= 0 (1 means no guidance)")


def default_t2i_model() -> str:
    return os.environ.get("GENVL_T2I_MODEL", str(DEFAULT_T2I_MODEL))


def add_sampling_flags(parser, prior: bool = True, outputs: bool = True, text: bool = False):
    """`text`: the command decodes prompts' words too (generate, eval t2i), so it takes --decoder-text-guidance."""
    group = parser.add_argument_group("sampling")
    group.add_argument("--steps", type=positive(int), default=25, help="inference steps of each stage (default 25)")
    group.add_argument("--guidance", type=GUIDANCE, default=4.0,
                       help="classifier-free guidance scale of each stage (the decoder's towards the image embedding)")
    if prior:
        group.add_argument("--prior-steps", type=positive(int), help="prior steps (default: --steps)")
        group.add_argument("--prior-guidance", type=GUIDANCE, help="prior guidance (default: --guidance)")
    group.add_argument("--decoder-steps", type=positive(int), help="decoder steps (default: --steps)")
    group.add_argument("--decoder-guidance", type=GUIDANCE, help="decoder guidance (default: --guidance)")
    if text:
        # 8.0 is the pipeline's DEFAULT_TEXT_GUIDANCE, not imported here to keep torch out of the parser
        group.add_argument("--decoder-text-guidance", type=GUIDANCE, default=8.0,
                           help="decoder guidance towards the prompt's words, on top of --decoder-guidance's towards "
                                "the image embedding (default 8; the same value as --decoder-guidance guides both "
                                "together, with two rows per image in each decoder step instead of three)")
        group.add_argument("--candidates", type=positive(int), default=1,
                           help="draw K images for each one kept, and keep the one the pipeline's reranker (or "
                                "else its CLIP) scores most alike the prompt: K times the work (default 1)")
    group.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="ddpm",
                       help="diffusers scheduler: ddpm (default), ddim, dpm (DPM-Solver++), dpm-sde (its "
                            "stochastic variant, first order: with --prior-steps 8 --decoder-steps 17 it halves the "
                            "network evaluations)")
    if outputs:
        group.add_argument("--seed", type=seed_number,
                           help="image i uses seed S + i (recorded in the PNG); default random")
        group.add_argument("--out", default="outputs", help="folder for the PNGs (default: outputs)")
        group.add_argument("--json", action="store_true",
                           help="one JSON record per image on stdout (path, seed, settings) instead of its path")


def add_t2i_runtime_flags(parser):
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    parser.add_argument("--model", default=None,
                        help="text-to-image pipeline folder (default: genvl-unclip-small); score and eval retrieval "
                             "also take a CLIP folder")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--quiet", action="store_true", help="no progress bars or logs on stderr")
    add_image_limit_flag(parser)


def add_parsers(commands, evaluate):
    """Register the text-to-image commands on the `genvl` subparsers and the `genvl eval` subparsers."""
    generate = commands.add_parser("generate", help="generate images from a prompt",
                                   epilog='example: genvl generate "a red apple" -n 4 --seed 0')
    generate.add_argument("prompt")
    generate.add_argument("-n", "--num-images", type=positive(int), default=1)
    generate.add_argument("--batch-size", type=positive(int), help=BATCH_HELP)
    generate.add_argument("--negative", default=None, help="negative prompt (default: the empty prompt)")
    add_lora_flag(generate)
    add_sampling_flags(generate, text=True)
    add_t2i_runtime_flags(generate)

    vary = commands.add_parser("vary", help="variations of an image", epilog="example: genvl vary img.png -n 4")
    vary.add_argument("image")
    vary.add_argument("-n", "--num-images", type=positive(int), default=4)
    vary.add_argument("--batch-size", type=positive(int), help=BATCH_HELP)
    add_sampling_flags(vary, prior=False)
    add_t2i_runtime_flags(vary)

    interpolate = commands.add_parser(
        "interpolate", help="frames between two prompts or images (slerp in CLIP space)",
        epilog='example: genvl interpolate "a red apple" "a blue car" --frames 6')
    interpolate.add_argument("start", help="a prompt or an image file")
    interpolate.add_argument("end", help="a prompt or an image file")
    interpolate.add_argument("--frames", type=checked_type(int, lambda frames: frames >= 2, ">= 2"), default=5)
    add_sampling_flags(interpolate)
    add_t2i_runtime_flags(interpolate)

    score = commands.add_parser("score", help="CLIP similarity of an image with texts",
                                epilog='example: genvl score img.png "a red apple" "a blue car"')
    score.add_argument("image")
    score.add_argument("texts", nargs="+")
    score.add_argument("--json", action="store_true", help="one JSON object on stdout")
    add_t2i_runtime_flags(score)

    retrieval = evaluate.add_parser("retrieval", help="CLIP image<->text retrieval on a held-out imagefolder",
                                    epilog="example: genvl eval retrieval --data data/world/test")
    retrieval.add_argument("--data", required=True, help="imagefolder with metadata.jsonl")
    retrieval.add_argument("--limit", type=positive(int), help="evaluate the first N images only")
    retrieval.add_argument("--output", help="also write the report as JSON to this file")
    retrieval.add_argument("--batch-size", type=positive(int), default=256)
    add_t2i_runtime_flags(retrieval)

    t2i = evaluate.add_parser(
        "t2i", help="judge generated images of held-out prompts (GenEval-style), R-precision, FD, round trip",
        epilog="example: genvl eval t2i --data data/world/test --prompts 250 --images-per-prompt 4")
    t2i.add_argument("--data", required=True, help="held-out imagefolder with scene graphs (genvl data scenes)")
    t2i.add_argument("--prompts", type=positive(int), default=250, help="held-out prompts, spread over the layouts")
    t2i.add_argument("--images-per-prompt", type=positive(int), default=4)
    t2i.add_argument("--judge", default=str(DEFAULT_JUDGE), help="judge folder (default: genvl-judge-small)")
    t2i.add_argument("--captioner", default=None, help="captioner for the round trip (default: the shipped one)")
    t2i.add_argument("--seed", type=seed_number, default=0, help="image k of the run uses seed S + k")
    t2i.add_argument("--batch-size", type=positive(int), default=64, help="images per pipeline call")
    t2i.add_argument("--output", help="also write the report as JSON to this file")
    t2i.add_argument("--stages", action="store_true",
                     help="also score the prior (against the real renders' embeddings), the decoder (drawing "
                          "from the real renders' embeddings) and its autoencoder (the real renders' round trip, "
                          "judged and captioned) on their own")
    add_lora_flag(t2i)
    add_sampling_flags(t2i, outputs=False, text=True)
    add_t2i_runtime_flags(t2i)


def load_t2i_pipeline(args):
    import diffusers

    from .cli import load_loras, model_source, quiet_libraries, torch_dtype
    from .io.folders import check_model_folder
    from .pipelines.text_to_image import TextToImagePipeline

    quiet_libraries(args)
    path, name = model_source(args, "GENVL_T2I_MODEL", str(DEFAULT_T2I_MODEL))
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{name}: not a text-to-image pipeline folder (no model_index.json)")
    check_model_folder(path)  # its files are regular before the step counts read any
    check_step_counts(args, path)
    pipeline = TextToImagePipeline.from_pretrained(path, dtype=torch_dtype(args))
    load_loras(pipeline, getattr(args, "lora", []))
    scheduler = getattr(args, "scheduler", "ddpm")
    if scheduler != "ddpm":
        name, config = SCHEDULERS[scheduler]
        pipeline.set_schedulers(getattr(diffusers, name), **config)
    pipeline.set_progress_bar_config(disable=args.quiet)
    return pipeline.to(args.device)


def check_step_counts(args, path: Path) -> None:
    """A usage error, before the networks load, for more inference steps than a stage's scheduler has timesteps."""
    from .io.folders import read_json

    if not hasattr(args, "steps"):  # score and eval retrieval run no diffusion
        return
    for stage in ("prior", "decoder"):
        steps = getattr(args, f"{stage}_steps", None)
        flag, count = (f"--{stage}-steps", steps) if steps is not None else ("--steps", args.steps)
        config = path / f"{stage}_scheduler" / "scheduler_config.json"
        if not hasattr(args, f"{stage}_steps") or not config.is_file():
            continue
        settings = read_json(config)
        limit = settings.get("num_train_timesteps", 1000) if isinstance(settings, dict) else None  # else: the loader
        if isinstance(limit, int) and count > limit:
            raise UsageError(f"{flag} {count}: the {stage}'s scheduler has only {limit} timesteps")


def stage_settings(args, prior: bool = True) -> dict:
    def either(value, default):
        return default if value is None else value

    settings = dict(decoder_num_inference_steps=either(args.decoder_steps, args.steps),
                    decoder_guidance_scale=either(args.decoder_guidance, args.guidance))
    if prior:
        settings.update(prior_num_inference_steps=either(args.prior_steps, args.steps),
                        prior_guidance_scale=either(args.prior_guidance, args.guidance))
        if hasattr(args, "decoder_text_guidance"):
            settings["decoder_text_guidance_scale"] = args.decoder_text_guidance
            settings["num_candidates"] = args.candidates
    return settings


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "image"


def save_png(image, path: Path, metadata: dict, flag: str = "--out", inputs=()) -> Path:
    """Write `image` with `metadata` as PNG text chunks; written to a temporary name, then renamed. `path` is
    checked first as `check_output_file(path, flag, inputs)` does: an existing file is replaced only if it is a
    regular file and none of `inputs`."""
    from PIL.PngImagePlugin import PngInfo

    check_output_file(path, flag, inputs)
    info = PngInfo()
    for key, value in metadata.items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    with written_atomically(path, flag) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def base_seed(args) -> int:
    """--seed, or a fresh random one: image i of the run uses base + i."""
    return args.seed if args.seed is not None else random.randrange(2**31)


def write_images(args, images, name: str, metadata: dict):
    """Save each (index, seed, image) as it comes, print its path (or JSON record), then a summary on stderr."""
    from .lora import parse_lora_spec

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: is a file; expected a folder for the PNGs")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise type(err)(f"--out {out}: cannot make the folder ({err.strerror or err})") from None
    if not os.access(out, os.W_OK):
        raise PermissionError(f"--out {out}: cannot write in it")
    # the source image (vary), image ends (interpolate), model and adapters: files a PNG must not overwrite
    sources = [getattr(args, end, None) for end in ("image", "start", "end")]
    inputs = [*filter(None, sources), args.model or default_t2i_model(),
              *(parse_lora_spec(spec)[0] for spec in getattr(args, "lora", []))]
    count = 0
    for i, seed, image in images:
        path = save_png(image, out / f"{name}-{seed}-{i}.png", {**metadata, "seed": str(seed)}, "--out", inputs)
        print(json.dumps({"path": str(path), **metadata, "seed": seed}) if args.json else path, flush=True)
        count += 1
    summarize(args, f"wrote {plural(count, 'image')} to {out}")


@contextmanager
def one_torch_thread():
    """torch's intra-op threads set to 1 inside (yielding the previous count), restored afterwards: kernels then
    split their work the same way however many cores the machine has."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def one_image_each(args, pipeline, make):
    """(index, seed, image) of `args.num_images` images, in order, each made alone by `make(pipeline, generators)`
    with its own generator seeded S + i, on one CPU thread. Matrix kernels round differently for other batch
    shapes and thread splits, so this is what makes an image the same bit for bit whatever --batch-size is and
    however many cores run it. --batch-size images (default: one per core) are made at once, one per thread, each
    thread with its own copy of the pipeline's schedulers and tokenizer."""
    import collections
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from tqdm import tqdm

    base = base_seed(args)
    local = threading.local()

    def one(i):
        if not hasattr(local, "pipeline"):
            local.pipeline = pipeline.for_another_thread()
            local.pipeline.set_progress_bar_config(disable=True)  # one bar over the images instead
        return make(local.pipeline, [torch.Generator().manual_seed(base + i)])[0]

    with one_torch_thread() as threads:
        workers = min(args.batch_size or threads, args.num_images)
        pool = ThreadPoolExecutor(workers)
        # at most two images per thread are under way or waiting to be written, whatever -n is
        pending = collections.deque()
        try:
            with tqdm(total=args.num_images, unit="img", file=sys.stderr, disable=args.quiet) as bar:
                for i in range(args.num_images):
                    pending.append(pool.submit(one, i))
                    while pending and (len(pending) >= 2 * workers or i == args.num_images - 1):
                        index = i - len(pending) + 1
                        image = pending.popleft().result()
                        bar.update()
                        yield index, base + index, image
        finally:  # on an error or Ctrl-C, images not yet started are dropped
            pool.shutdown(wait=True, cancel_futures=True)


def run_generate(args) -> int:
    check_text(args.prompt, "PROMPT")
    if args.negative:
        check_text(args.negative, "--negative")
    settings = stage_settings(args)
    pipeline = load_t2i_pipeline(args)
    images = one_image_each(args, pipeline, lambda pipe, generators: pipe(
        args.prompt, negative_prompt=args.negative, generator=generators, **settings).images)
    metadata = {"prompt": args.prompt, "negative_prompt": args.negative or "", "scheduler": args.scheduler,
                "settings": settings, "model": str(args.model or default_t2i_model())}
    write_images(args, images, slug(args.prompt), metadata)
    return 0


def run_vary(args) -> int:
    import torch

    from .io.images import load_image

    settings = stage_settings(args, prior=False)
    image = load_image(args.image)
    pipeline = load_t2i_pipeline(args)
    with one_torch_thread(), torch.no_grad():  # encoded once, on one thread like each image's own work
        embeds = pipeline.encode_image([image])
    images = one_image_each(args, pipeline, lambda pipe, generators: pipe.image_variation(
        image_embeds=embeds, generator=generators, **settings).images)
    metadata = {"source": str(args.image), "scheduler": args.scheduler, "settings": settings}
    write_images(args, images, slug(Path(args.image).stem) + "-variation", metadata)
    return 0


def interpolation_end(text: str, name: str):
    """An image (see `names_an_image_file`) or else a prompt."""
    from .io.images import load_image, names_an_image_file

    return load_image(text) if names_an_image_file(text) else check_text(text, name)


def run_interpolate(args) -> int:
    import torch

    settings = stage_settings(args)
    ends = [interpolation_end(args.start, "START"), interpolation_end(args.end, "END")]
    pipeline = load_t2i_pipeline(args)
    seed = base_seed(args)
    chunks = pipeline.interpolation_frames(ends[0], ends[1], frames=args.frames,
                                           generator=torch.Generator().manual_seed(seed), **settings)

    def frames():  # written as each batch of frames is decoded, never all held at once
        index = 0
        for images, _ in chunks:
            for frame in pipeline.postprocess(images, "pil"):
                yield index, seed, frame
                index += 1

    metadata = {"start": args.start, "end": args.end, "scheduler": args.scheduler, "settings": settings}
    write_images(args, frames(), slug(f"{Path(args.start).stem}-to-{Path(args.end).stem}"), metadata)
    return 0


def load_clip_parts(args):
    """(clip, tokenizer, image processor) of --model: a text-to-image pipeline folder or a CLIP folder."""
    from .cli import quiet_libraries, torch_dtype
    from .models.clip import load_clip

    path = Path(args.model or default_t2i_model())
    if (path / "model_index.json").is_file():
        pipeline = load_t2i_pipeline(args)
        return pipeline.clip, pipeline.tokenizer, pipeline.image_processor
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--model {path}: neither a text-to-image pipeline nor a CLIP folder")
    quiet_libraries(args)
    clip, tokenizer, processor = load_clip(path)
    return clip.to(args.device, torch_dtype(args)).eval(), tokenizer, processor


def run_score(args) -> int:
    from .io.images import load_image
    from .models.clip import clip_similarity

    for text in args.texts:
        check_text(text, "TEXT")
    image = load_image(args.image)
    scores = clip_similarity(*load_clip_parts(args), [image], args.texts)[0].tolist()
    if args.json:
        print(json.dumps({"image": args.image, "scores": dict(zip(args.texts, scores))}))
    else:
        for text, value in sorted(zip(args.texts, scores), key=lambda pair: -pair[1]):
            print(f"{value:.4f}\t{text}")
    return 0


def run_eval_retrieval(args) -> int:
    from .cli import print_report
    from .evaluation.retrieval import evaluate_retrieval

    if args.output:
        from itertools import chain

        from .io.imagefolder import imagefolder_files

        model = args.model or default_t2i_model()
        check_output_file(args.output, "--output", chain(imagefolder_files(args.data), [model]))
    report = evaluate_retrieval(*load_clip_parts(args), args.data, limit=args.limit, batch_size=args.batch_size)
    print_report(report, args.output)
    return 0


def run_eval_t2i(args) -> int:
    from .cli import default_caption_model, print_report, progress_bar, quiet_libraries
    from .models.judge import SceneJudge
    from .evaluation.text_to_image import evaluate_text_to_image
    from .pipelines.caption import CaptionPipeline

    settings = stage_settings(args)
    if args.output:
        from itertools import chain

        from .lora import parse_lora_spec
        from .io.imagefolder import imagefolder_files

        models = [args.model or default_t2i_model(), args.judge, args.captioner or default_caption_model(),
                  *(parse_lora_spec(spec)[0] for spec in args.lora)]
        check_output_file(args.output, "--output", chain(imagefolder_files(args.data), models))
    pipeline = load_t2i_pipeline(args)
    pipeline.set_progress_bar_config(disable=True)
    quiet_libraries(args)
    if not (Path(args.judge) / "config.json").is_file():
        raise FileNotFoundError(f"--judge {args.judge}: not a judge folder (no config.json)")
    judge = SceneJudge.from_pretrained(args.judge).to(args.device).eval()
    captioner = CaptionPipeline.from_pretrained(args.captioner or default_caption_model()).to(args.device)
    report = evaluate_text_to_image(
        pipeline, judge, args.data, captioner=captioner, num_prompts=args.prompts,
        images_per_prompt=args.images_per_prompt, batch_size=args.batch_size, seed=args.seed,
        progress=progress_bar(args, "batch"), stages=args.stages, **settings)
    report["settings"] = {"scheduler": args.scheduler, **settings}
    print_report(report, args.output)
    return 0


HANDLERS = {"generate": run_generate, "vary": run_vary, "interpolate": run_interpolate, "score": run_score}
