"""The text-to-image commands of `genvl`: generate, vary, interpolate and score, and the sampling flags and
pipeline loading that `genvl eval t2i` shares."""

import argparse
import glob
import json
import os
import random
import re
from pathlib import Path

from ..io.outputs import check_output_file, written_atomically
from ..pipelines.defaults import (
    DEFAULT_CAPTIONER,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_INFERENCE_STEPS,
    DEFAULT_TEXT_GUIDANCE,
    shipped_pipeline,
)
from .common import (
    UsageError,
    add_image_limit_flag,
    add_lora_flag,
    check_text,
    checked_type,
    load_loras,
    lora_folders,
    model_source,
    named_folder,
    plural,
    positive,
    quiet_libraries,
    seed_number,
    summarize,
    torch_dtype,
)

DEFAULT_T2I_MODEL = shipped_pipeline("genvl-unclip-small")
DEFAULT_JUDGE = shipped_pipeline("genvl-judge-small")
BATCH_HELP = (
    "images made at once, each alone on one CPU thread (default: one per core). An image is the same "
    "bit for bit whatever this is, so the seed recorded in its PNG reproduces it"
)
# name -> (diffusers scheduler class, config overrides); "dpm-sde" is DPM-Solver++'s stochastic variant at first
# order, which came closest to DDPM 25 + 25's judged accuracy at 12 + 12 steps; the second order and the ODE solver
# lose more (see the unCLIP model card)
SCHEDULERS = {
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpm": ("DPMSolverMultistepScheduler", {}),
    "dpm-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 1}),
}


GUIDANCE = checked_type(float, lambda value: value >= 0, "a number >= 0 (1 means no guidance)")
IMAGE_SIDE = checked_type(int, lambda side: 8 <= side <= 2048, "an integer in [8, 2048]")
# images a published checkpoint draws in its one call (one generator for the whole call, as diffusers draws them)
MAX_PUBLISHED_IMAGES = 16


def t2i_model_folder(name=None) -> Path:
    """The text-to-image pipeline a command reads: `name` (its --model), else GENVL_T2I_MODEL, else the shipped
    default; a shipped pipeline's name is its folder."""
    return model_source(name, "GENVL_T2I_MODEL", str(DEFAULT_T2I_MODEL))[0]


# ---- flags ---------------------------------------------------------------------------------------------------


def add_parsers(commands) -> None:
    """Register generate, vary, interpolate and score on the `genvl` subparsers."""
    generate = commands.add_parser(
        "generate", help="generate images from a prompt", epilog='example: genvl generate "a red apple" -n 4 --seed 0'
    )
    generate.add_argument("prompt")
    generate.add_argument("-n", "--num-images", type=positive(int), default=1)
    generate.add_argument("--batch-size", type=positive(int), help=BATCH_HELP)
    generate.add_argument("--negative", default=None, help="negative prompt (default: the empty prompt)")
    add_lora_flag(generate)
    add_sampling_flags(generate, text=True)
    add_published_flags(generate, super_res=True)
    add_t2i_runtime_flags(generate)
    add_safety_flag(generate)

    vary = commands.add_parser("vary", help="variations of an image", epilog="example: genvl vary img.png -n 4")
    vary.add_argument("image")
    vary.add_argument("-n", "--num-images", type=positive(int), default=4)
    vary.add_argument("--batch-size", type=positive(int), help=BATCH_HELP)
    add_sampling_flags(vary, prior=False)
    add_published_flags(vary)
    add_t2i_runtime_flags(vary)
    add_safety_flag(vary)

    interpolate = commands.add_parser(
        "interpolate",
        help="frames between two prompts or images (slerp in CLIP space)",
        epilog='example: genvl interpolate "a red apple" "a blue car" --frames 6',
    )
    interpolate.add_argument("start", help="a prompt or an image file")
    interpolate.add_argument("end", help="a prompt or an image file")
    interpolate.add_argument("--frames", type=checked_type(int, lambda frames: frames >= 2, ">= 2"), default=5)
    interpolate.add_argument(
        "--captions",
        action="store_true",
        help="caption each frame (the path described in words): printed after its path, kept in its PNG and --json",
    )
    interpolate.add_argument(
        "--captioner", metavar="DIR", help=f"the captioner of --captions (default: the shipped {DEFAULT_CAPTIONER})"
    )
    add_sampling_flags(interpolate)
    add_published_flags(interpolate)
    add_t2i_runtime_flags(interpolate)
    add_safety_flag(interpolate)

    score = commands.add_parser(
        "score",
        help="CLIP similarity of an image with texts, or with --itm the probability that each describes it",
        epilog='example: genvl score img.png "a red apple" "a blue car"',
    )
    score.add_argument("image")
    score.add_argument("texts", nargs="+")
    score.add_argument("--json", action="store_true", help="one JSON object on stdout")
    score.add_argument(
        "--itm",
        action="store_true",
        help="score with a captioner's image-text matching head instead: --model then names a captioner folder "
        f"(default: the shipped {DEFAULT_CAPTIONER})",
    )
    add_t2i_runtime_flags(score)


def add_sampling_flags(parser, prior: bool = True, outputs: bool = True, text: bool = False):
    """`text`: the command decodes prompts' words too (generate, eval t2i), so it takes --decoder-text-guidance."""
    group = parser.add_argument_group("sampling")
    group.add_argument(
        "--steps",
        type=positive(int),
        help=f"inference steps of each stage (default {DEFAULT_NUM_INFERENCE_STEPS}; a published checkpoint's "
        "own defaults)",
    )
    group.add_argument(
        "--guidance",
        type=GUIDANCE,
        help=f"classifier-free guidance scale of each stage, the decoder's towards the image embedding (default "
        f"{DEFAULT_GUIDANCE_SCALE:g}; a published checkpoint's own defaults)",
    )
    if prior:
        group.add_argument("--prior-steps", type=positive(int), help="prior steps (default: --steps)")
        group.add_argument("--prior-guidance", type=GUIDANCE, help="prior guidance (default: --guidance)")
        group.add_argument(
            "--no-rewrite",
            action="store_true",
            help="draw from a prompt as typed: a pipeline whose text side learnt only its world's captions "
            "(model_index.json's prompt_world) otherwise draws from the caption of a scene the prompt asks for, "
            "its open details drawn from the seed (recorded as drawn_prompt, or drawn_start and drawn_end)",
        )
    group.add_argument("--decoder-steps", type=positive(int), help="decoder steps (default: --steps)")
    group.add_argument("--decoder-guidance", type=GUIDANCE, help="decoder guidance (default: --guidance)")
    if text:
        group.add_argument(
            "--decoder-text-guidance",
            type=GUIDANCE,
            default=DEFAULT_TEXT_GUIDANCE,
            help="decoder guidance towards the prompt's words, on top of --decoder-guidance's towards "
            f"the image embedding (default {DEFAULT_TEXT_GUIDANCE:g}; the same value as "
            "--decoder-guidance guides both together, with two rows per image in each decoder "
            "step instead of three)",
        )
        group.add_argument(
            "--candidates",
            type=positive(int),
            default=1,
            help="draw K images for each one kept, and keep the one the pipeline's reranker (or "
            "else its CLIP) scores most alike the prompt: K times the work (default 1)",
        )
    group.add_argument(
        "--scheduler",
        choices=sorted(SCHEDULERS),
        default="ddpm",
        help="diffusers scheduler: ddpm (default), ddim, dpm (DPM-Solver++), dpm-sde (its "
        "stochastic variant, first order: with --prior-steps 8 --decoder-steps 17 it halves the "
        "network evaluations)",
    )
    if outputs:
        group.add_argument(
            "--seed",
            type=seed_number,
            help="image i uses seed S + i (interpolate: every frame S), recorded in the PNG; default random",
        )
        group.add_argument("--out", default="outputs", help="folder for the PNGs (default: outputs)")
        group.add_argument(
            "--json",
            action="store_true",
            help="one JSON record per image on stdout (path, seed, settings) instead of its path",
        )


def add_published_flags(parser, super_res: bool = False):
    group = parser.add_argument_group(
        "published checkpoints",
        "for --model a Kandinsky 2.2 decoder folder" + (" or a Karlo (UnCLIPPipeline) folder" if super_res else ""),
    )
    group.add_argument("--prior", metavar="DIR", help="the Kandinsky 2.2 prior folder of a Kandinsky decoder")
    if super_res:
        group.add_argument("--super-res-steps", type=positive(int), help="Karlo's super-resolution steps (default 7)")
    for side in ("height", "width"):
        group.add_argument(f"--{side}", type=IMAGE_SIDE, help=f"Kandinsky's image {side} (default 512)")


def add_t2i_runtime_flags(parser):
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    parser.add_argument(
        "--model",
        default=None,
        help="text-to-image pipeline folder (default: genvl-unclip-small); score and eval retrieval "
        "also take a CLIP folder",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--quiet", action="store_true", help="no progress bars or logs on stderr")
    add_image_limit_flag(parser)


def add_safety_flag(parser):
    parser.add_argument(
        "--no-safety-checker",
        action="store_true",
        help="do not run the pipeline's safety checker (by default an image showing a blocked concept, or made for "
        "a prompt naming one, is blacked out and reported as flagged)",
    )


# ---- the pipeline and its settings ---------------------------------------------------------------------------


def load_t2i_pipeline(args, safety: bool = False):
    """The text-to-image pipeline of --model and the sampling flags; with `safety`, its safety checker (if the
    folder has one) unless --no-safety-checker, and a note on stderr when there is none to run."""
    import diffusers

    from ..io.folders import check_model_folder, no_model_folder
    from ..pipelines.text_to_image import TextToImagePipeline

    quiet_libraries(args)
    path, name = model_source(args.model, "GENVL_T2I_MODEL", str(DEFAULT_T2I_MODEL))
    if not path.is_dir():
        raise no_model_folder(path, name)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{name}: not a text-to-image pipeline folder (no model_index.json)")
    check_model_folder(path)  # its files are regular before the step counts read any
    check_step_counts(args, path)
    checking = safety and not args.no_safety_checker
    components = {} if checking else {"safety_checker": None}
    pipeline = TextToImagePipeline.from_pretrained(path, dtype=torch_dtype(args), **components)
    if checking and pipeline.safety_checker is None:
        summarize(args, f"{name} has no safety checker: the images are not checked")
    load_loras(pipeline, getattr(args, "lora", []))
    scheduler = getattr(args, "scheduler", "ddpm")
    if scheduler != "ddpm":
        name, config = SCHEDULERS[scheduler]
        pipeline.set_schedulers(getattr(diffusers, name), **config)
    pipeline.set_progress_bar_config(disable=args.quiet)
    return pipeline.to(args.device)


def check_step_counts(args, path: Path) -> None:
    """A usage error, before the networks load, for more inference steps than a stage's scheduler has timesteps."""
    if not hasattr(args, "steps"):  # score and eval retrieval run no diffusion
        return
    for stage in ("prior", "decoder"):
        steps = getattr(args, f"{stage}_steps", None)
        flag, count = (f"--{stage}-steps", steps) if steps is not None else ("--steps", either_steps(args))
        if hasattr(args, f"{stage}_steps"):
            check_timesteps(flag, count, stage, path / f"{stage}_scheduler")


def either(value, default):
    return default if value is None else value


def either_steps(args) -> int:
    return args.steps if args.steps is not None else DEFAULT_NUM_INFERENCE_STEPS


def steps_flag(args, stage: str) -> str:
    """The flag that set `stage`'s step count: its own (`--prior-steps`, ...) if given, else `--steps`."""
    own = f"{stage}_steps"
    return f"--{own.replace('_', '-')}" if getattr(args, own, None) is not None else "--steps"


def check_timesteps(flag: str, count: int | None, stage: str, folder: Path) -> None:
    """A usage error if `count` steps are more than the scheduler in `folder` has timesteps."""
    from ..io.folders import read_json

    config = folder / "scheduler_config.json"
    if count is None or not config.is_file():
        return
    settings = read_json(config)
    limit = settings.get("num_train_timesteps", 1000) if isinstance(settings, dict) else None  # else: the loader
    if isinstance(limit, int) and count > limit:
        raise UsageError(f"{flag} {count}: the {stage}'s scheduler has only {limit} timesteps")


def stage_settings(args, prior: bool = True) -> dict:
    steps, guidance = either_steps(args), either(args.guidance, DEFAULT_GUIDANCE_SCALE)
    settings = dict(
        decoder_num_inference_steps=either(args.decoder_steps, steps),
        decoder_guidance_scale=either(args.decoder_guidance, guidance),
    )
    if prior:
        settings.update(
            prior_num_inference_steps=either(args.prior_steps, steps),
            prior_guidance_scale=either(args.prior_guidance, guidance),
            rewrite_prompts=not args.no_rewrite,
        )
        if hasattr(args, "decoder_text_guidance"):
            settings["decoder_text_guidance_scale"] = args.decoder_text_guidance
            settings["num_candidates"] = args.candidates
    return settings


def base_seed(args) -> int:
    """--seed, or a fresh random one: image i of the run uses base + i, which must stay a seed --seed takes (so
    that each image can be made again alone)."""
    if args.seed is None:
        return random.randrange(2**31)
    count = getattr(args, "num_images", None) or 1
    if args.seed + count - 1 >= 2**63:
        raise UsageError(f"--seed {args.seed} with -n {count}: the last image's seed would pass 2**63 - 1")
    return args.seed


# ---- the images out ------------------------------------------------------------------------------------------


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


def output_folder(args) -> Path:
    """The folder --out names, made if missing; an error naming --out if it cannot hold the PNGs."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: is a file; expected a folder for the PNGs")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise type(err)(f"--out {out}: cannot make the folder ({err.strerror or err})") from None
    if not os.access(out, os.W_OK):
        raise PermissionError(f"--out {out}: cannot write in it")
    return out


def write_images(args, images, name: str, metadata: dict, describe=None):
    """Save each (index, seed, image, own) as it comes, print its path (or JSON record), then a summary on
    stderr. `own`: the image's own fields for its PNG, line and record (see `checked`): `flagged`, the blocked
    concepts the safety checker found in it (it is then black), where a checker ran; `drawn_prompt`, where it
    was drawn from a rewritten prompt. `describe(image, seed)`, when given, adds more (its caption)."""
    from ..io.images import printable_path

    out = output_folder(args)
    # the source image (vary), image ends (interpolate), model, prior, captioner and adapters: files a PNG must not
    # overwrite
    sources = [getattr(args, end, None) for end in ("image", "start", "end", "prior", "captioner")]
    inputs = [
        *map(named_folder, filter(None, sources)),
        t2i_model_folder(args.model),
        *lora_folders(args),
    ]
    for entry in out.glob(f"{glob.escape(name)}-*-*.png"):  # what this run's names may meet there, before any work
        check_output_file(entry, "--out", inputs)
    count, blocked = 0, {}
    for i, seed, image, own in images:
        own = {**own, **(describe(image, seed) if describe else {})}
        flagged = own.get("flagged")
        for concept in flagged or ():
            blocked[concept] = blocked.get(concept, 0) + 1
        fields = {**metadata, **own, "seed": str(seed)}
        path = save_png(image, out / f"{name}-{seed}-{i}.png", fields, "--out", inputs)
        if args.json:
            print(json.dumps({"path": str(path), **metadata, **own, "seed": seed}), flush=True)
        else:
            words = [printable_path(value) for key, value in own.items() if key != "flagged"]
            if flagged:
                words.append("flagged: " + ", ".join(flagged))
            print("\t".join([str(path), *words]), flush=True)
        count += 1
    found = ", ".join(f"{concept} in {number}" for concept, number in sorted(blocked.items()))
    note = f" (the safety checker found {found}: blacked out)" if blocked else ""
    summarize(args, f"wrote {plural(count, 'image')} to {out}{note}")


# ---- the commands --------------------------------------------------------------------------------------------


def each_alone(args, pipeline, make):
    """(index, seed, image, own fields) of the images of `make`, each alone on one CPU thread with its own seed
    (see `one_image_each`); `make` gives [(image, own fields)] (see `checked`)."""
    from ..pipelines.threads import one_image_each

    made = one_image_each(pipeline, make, args.num_images, base_seed(args), args.batch_size, args.quiet)
    return ((index, seed, image, own) for index, seed, (image, own) in made)


def checked(output, prompt: str | None = None) -> list[tuple]:
    """[(image, its own fields)] of a pipeline's output: `flagged`, the concepts the safety checker found in it,
    where a checker ran; `drawn_prompt`, the text it was drawn from, where that is not `prompt`, the one asked."""
    count = len(output.images)
    made = []
    for image, flagged, drawn in zip(output.images, output.flagged or [None] * count, output.prompts or [None] * count):
        own = {} if flagged is None else {"flagged": flagged}
        if drawn is not None and drawn != prompt:
            own["drawn_prompt"] = drawn
        made.append((image, own))
    return made


def run_generate(args) -> int:
    check_text(args.prompt, "PROMPT")
    if args.negative:
        check_text(args.negative, "--negative")
    layout, path = published_model(args)
    if layout is not None:
        return run_generate_published(args, layout, path)
    settings = stage_settings(args)
    pipeline = load_t2i_pipeline(args, safety=True)
    images = each_alone(
        args,
        pipeline,
        lambda pipe, generators: checked(
            pipe(args.prompt, negative_prompt=args.negative, generator=generators, **settings), args.prompt
        ),
    )
    metadata = {
        "prompt": args.prompt,
        "negative_prompt": args.negative or "",
        "scheduler": args.scheduler,
        "settings": settings,
        "model": str(t2i_model_folder(args.model)),
    }
    write_images(args, images, slug(args.prompt), metadata)
    return 0


def published_model(args) -> tuple:
    """(layout, folder) of --model: its `published_layout`, or None for a genvl pipeline folder, whose commands
    refuse the flags only published checkpoints take."""
    quiet_libraries(args)  # before the published pipelines' module imports diffusers' (their notices)
    from ..pipelines.published import published_layout

    path = t2i_model_folder(args.model)
    layout = published_layout(path) if path.is_dir() else None
    given = [flag for flag in ("prior", "super_res_steps", "height", "width") if getattr(args, flag, None)]
    if layout is None and given:
        flag = "--" + given[0].replace("_", "-")
        raise UsageError(f"{flag} is for a published checkpoint (Karlo or Kandinsky 2.2), not a genvl pipeline")
    return layout, path


def published_what(args, layout: str) -> str:
    from ..pipelines.published import PUBLISHED

    return f"--model {t2i_model_folder(args.model)} is {PUBLISHED[layout]} folder"


def published_stages(args) -> tuple[dict, dict]:
    """(steps, guidance) of each stage of a published checkpoint as the flags give them; None keeps the pipeline's
    own default."""
    steps = {
        "prior": either(getattr(args, "prior_steps", None), args.steps),
        "decoder": either(args.decoder_steps, args.steps),
        "super_res": getattr(args, "super_res_steps", None),
    }
    guidance = {
        "prior": either(getattr(args, "prior_guidance", None), args.guidance),
        "decoder": either(args.decoder_guidance, args.guidance),
    }
    return steps, guidance


def kandinsky_settings(args, steps: dict, guidance: dict) -> dict:
    """The Kandinsky pipeline's sampling arguments the flags give."""
    settings = dict(num_inference_steps=steps["decoder"], prior_num_inference_steps=steps["prior"])
    settings.update(guidance_scale=guidance["decoder"], prior_guidance_scale=guidance["prior"])
    settings.update(height=args.height, width=args.width)
    return {name: value for name, value in settings.items() if value is not None}


def load_published(args, layout: str, path: Path, steps: dict, images: int, asked: str):
    """The published checkpoint's pipeline, loaded, with --lora's adapters and --scheduler, on --device; before
    anything loads, a usage error for a Kandinsky decoder without --prior, more than `MAX_PUBLISHED_IMAGES`
    `images` in its one call (`asked`: the flags that asked for them), and more steps than a scheduler has."""
    from ..pipelines.published import KARLO, load_kandinsky, load_karlo, scheduler_folders

    what = published_what(args, layout)
    if layout != KARLO and args.prior is None:
        raise UsageError(f"{what}: pass its prior folder with --prior")
    if images > MAX_PUBLISHED_IMAGES:
        raise UsageError(f"{asked}: {what}, drawn in one call; at most {MAX_PUBLISHED_IMAGES} images")
    for stage, folder in scheduler_folders(layout, path, args.prior).items():
        check_timesteps(steps_flag(args, stage), steps[stage], stage.replace("_", "-"), folder)
    if layout == KARLO:
        pipeline = load_karlo(path, torch_dtype(args))
    else:
        pipeline = load_kandinsky(path, args.prior, torch_dtype(args))
    load_loras(pipeline, getattr(args, "lora", []))
    if args.scheduler != "ddpm":
        import diffusers

        name, config = SCHEDULERS[args.scheduler]
        pipeline.set_decoder_scheduler(getattr(diffusers, name), **config)
    pipeline.set_progress_bar_config(disable=args.quiet)
    if not args.no_safety_checker:  # diffusers' Karlo and Kandinsky pipelines run none either
        summarize(args, f"{path} has no safety checker: the images are not checked")
    return pipeline.to(args.device)


def run_mix_published(args, layout: str, path: Path, jobs, name: str, metadata: dict) -> int:
    """`genvl vary` and `genvl interpolate` on a Kandinsky 2.2 folder: for each job (sources, weights, images),
    images drawn from the weighted CLIP image embeddings of its sources (`KandinskyPipeline.mix`), each job with a
    generator seeded --seed."""
    import torch

    from ..pipelines.published import KARLO

    if layout == KARLO:
        what = published_what(args, layout)
        raise UsageError(f"{what}, which has no image tower to draw from images with: use Kandinsky 2.2's")
    if getattr(args, "no_rewrite", False):  # interpolate's: its own text sides read any prompt
        raise UsageError(f"--no-rewrite does not apply here: {published_what(args, layout)}")
    steps, guidance = published_stages(args)
    settings = kandinsky_settings(args, steps, guidance)
    count = max(images for _, _, images in jobs)
    pipeline = load_published(args, layout, path, steps, count, f"-n {count}")
    seed = base_seed(args)

    def images():  # drawn once write_images has checked --out
        index = 0
        for sources, weights, count in jobs:
            generator = torch.Generator().manual_seed(seed)
            for image in pipeline.mix(sources, weights, count, generator, **settings):
                yield index, seed, image, {}
                index += 1

    metadata = {**metadata, "scheduler": args.scheduler, "settings": settings, "model": str(path), "prior": args.prior}
    write_images(args, images(), name, metadata, frame_captions(args) if hasattr(args, "captions") else None)
    return 0


def published_settings(args, layout: str, steps: dict, guidance: dict) -> dict:
    """The diffusers call's sampling arguments the flags give (the rest keep the pipeline's own defaults), after
    refusing the flags that do not apply to `layout`."""
    from ..pipelines.published import KARLO

    karlo = layout == KARLO
    genvl_only = {
        "--decoder-text-guidance": args.decoder_text_guidance != DEFAULT_TEXT_GUIDANCE,
        "--batch-size": args.batch_size is not None,
        # Karlo steps its UnCLIPScheduler with arguments other schedulers do not take, and has no image tower
        "--scheduler": karlo and args.scheduler != "ddpm",
        "--candidates": karlo and args.candidates != 1,
        "--no-rewrite": args.no_rewrite,
    }
    genvl_only.update({"--negative": karlo and args.negative, "--prior": karlo and args.prior})
    genvl_only.update({"--height": karlo and args.height, "--width": karlo and args.width})
    genvl_only["--super-res-steps"] = not karlo and args.super_res_steps
    refused = [flag for flag, given in genvl_only.items() if given]
    if refused:
        raise UsageError(f"{refused[0]} does not apply here: {published_what(args, layout)}")
    if not karlo:
        settings = kandinsky_settings(args, steps, guidance)
        if args.negative:
            settings["negative_prompt"] = args.negative
        return settings
    settings = {f"{stage}_num_inference_steps": count for stage, count in steps.items()}
    settings.update({f"{stage}_guidance_scale": scale for stage, scale in guidance.items()})
    return {name: value for name, value in settings.items() if value is not None}


def run_generate_published(args, layout: str, path: Path) -> int:
    """`genvl generate` on a published checkpoint: one diffusers call drawing all -n images with one generator
    seeded --seed, as diffusers' pipelines draw them."""
    import torch

    steps, guidance = published_stages(args)
    settings = published_settings(args, layout, steps, guidance)
    k = args.candidates
    asked = f"-n {args.num_images} x --candidates {k}"
    pipeline = load_published(args, layout, path, steps, args.num_images * k, asked)
    seed = base_seed(args)

    def images():  # drawn once write_images has checked --out
        generator = torch.Generator().manual_seed(seed)
        count = args.num_images * k
        drawn = pipeline(args.prompt, num_images_per_prompt=count, generator=generator, **settings).images
        if k > 1:  # image i keeps the best of draws i K .. i K + K - 1, by the prior's CLIP
            scores = pipeline.clip_scores(drawn, args.prompt).view(args.num_images, k)
            drawn = [drawn[i * k + int(best)] for i, best in enumerate(scores.argmax(dim=1))]
        yield from ((i, seed, image, {}) for i, image in enumerate(drawn))

    metadata = {"prompt": args.prompt, "settings": settings, "scheduler": args.scheduler, "model": str(path)}
    if k > 1:
        metadata["candidates"] = k
    if args.prior:
        metadata["prior"] = str(args.prior)
    write_images(args, images(), slug(args.prompt), metadata)
    return 0


def run_vary(args) -> int:
    import torch

    from ..io.images import load_image
    from ..pipelines.threads import one_torch_thread

    image = load_image(args.image)
    layout, path = published_model(args)
    name, metadata = slug(Path(args.image).stem) + "-variation", {"source": str(args.image)}
    if layout is not None:
        return run_mix_published(args, layout, path, [([image], [1.0], args.num_images)], name, metadata)
    settings = stage_settings(args, prior=False)
    pipeline = load_t2i_pipeline(args, safety=True)
    with one_torch_thread(), torch.no_grad():  # encoded once, on one thread like each image's own work
        embeds = pipeline.encode_image([image])
    images = each_alone(
        args,
        pipeline,
        lambda pipe, generators: checked(pipe.image_variation(image_embeds=embeds, generator=generators, **settings)),
    )
    write_images(args, images, name, {**metadata, "scheduler": args.scheduler, "settings": settings})
    return 0


def interpolation_end(text: str, name: str):
    """An image (see `names_an_image_file`) or else a prompt."""
    from ..io.images import load_image, names_an_image_file

    return load_image(text) if names_an_image_file(text) else check_text(text, name)


def run_interpolate(args) -> int:
    import torch

    from ..pipelines.text_to_image import ends_text

    ends = [interpolation_end(args.start, "START"), interpolation_end(args.end, "END")]
    layout, path = published_model(args)
    name = slug(f"{Path(args.start).stem}-to-{Path(args.end).stem}")
    if layout is not None:
        weights = [index / (args.frames - 1) for index in range(args.frames)]
        jobs = [(ends, [1 - t, t], 1) for t in weights]
        return run_mix_published(args, layout, path, jobs, name, {"start": args.start, "end": args.end})
    settings = stage_settings(args)
    pipeline = load_t2i_pipeline(args, safety=True)
    seed = base_seed(args)
    drawn = pipeline.interpolation_ends(*ends, torch.Generator().manual_seed(seed), settings["rewrite_prompts"])
    chunks = pipeline.interpolation_frames(  # from the ends as drawn, rewritten already
        *drawn, args.frames, generator=torch.Generator().manual_seed(seed), **{**settings, "rewrite_prompts": False}
    )

    def frames():  # written as each batch of frames is decoded, never all held at once
        index = 0
        for images, _ in chunks:
            images, flagged = pipeline.run_safety_checker(images, [ends_text(*ends, *drawn)] * len(images))
            for frame, found in zip(pipeline.postprocess(images, "pil"), flagged or [None] * len(images)):
                yield index, seed, frame, {} if found is None else {"flagged": found}
                index += 1

    metadata = {"start": args.start, "end": args.end, "scheduler": args.scheduler, "settings": settings}
    for key, given, used in zip(("drawn_start", "drawn_end"), ends, drawn):
        if isinstance(used, str) and used != given:
            metadata[key] = used
    write_images(args, frames(), name, metadata, frame_captions(args))
    return 0


def frame_captions(args):
    """With --captions, `describe(frame, seed)` -> {"caption": the shipped (or --captioner) captioner's greedy
    caption}."""
    if not args.captions:
        if args.captioner:
            raise UsageError("--captioner names the captioner of --captions; pass --captions too")
        return None
    from .caption import load_caption_pipeline

    settings = argparse.Namespace(**{**vars(args), "model": args.captioner, "lora": []})
    captioner = load_caption_pipeline(settings, flag="--captioner")

    def describe(frame, seed) -> dict:
        return {"caption": captioner([frame]).captions[0][0]}

    return describe


def load_clip_parts(args):
    """(clip, tokenizer, image processor) of --model: a text-to-image pipeline folder or a CLIP folder."""
    from ..io.folders import no_model_folder
    from ..models.clip import load_clip

    path, name = model_source(args.model, "GENVL_T2I_MODEL", str(DEFAULT_T2I_MODEL))
    if not path.is_dir():
        raise no_model_folder(path, name)
    quiet_libraries(args)
    clip, tokenizer, processor = load_clip(path, torch_dtype(args))
    return clip.to(args.device).eval(), tokenizer, processor


def run_score(args) -> int:
    from ..io.images import load_image
    from ..models.clip import clip_similarity

    for text in args.texts:
        check_text(text, "TEXT")
    if len(set(args.texts)) != len(args.texts):  # --json keys its scores by text
        twice = next(text for text in args.texts if args.texts.count(text) > 1)
        raise UsageError(f"TEXT {twice!r} is given twice; give each text once")
    image = load_image(args.image)
    if args.itm:
        from .caption import load_caption_pipeline

        captioner = load_caption_pipeline(argparse.Namespace(**{**vars(args), "lora": []}))
        if captioner.matcher is None:
            raise UsageError(f"--itm needs a captioner with a matcher; {args.model or 'the default'} has none")
        scores = captioner.match([image], args.texts).tolist()
    else:
        scores = clip_similarity(*load_clip_parts(args), [image], args.texts)[0].tolist()
    if args.json:
        print(json.dumps({"image": args.image, "scores": dict(zip(args.texts, scores))}))
    else:
        from ..io.images import printable_path

        for text, value in sorted(zip(args.texts, scores), key=lambda pair: -pair[1]):
            print(f"{value:.4f}\t{printable_path(text)}")  # a tab or newline in a text cannot split the line
    return 0


RUNS = {"generate": run_generate, "vary": run_vary, "interpolate": run_interpolate, "score": run_score}
