"""`genvl caption`, and the captioner's decoding flags and loading that `genvl eval caption` shares."""

import json
import math
import os
import sys
from pathlib import Path

from ..io.outputs import check_output_file, process_tag, temporary_file, temporary_name, written_atomically
from ..pipelines.defaults import DEFAULT_CAPTIONER, shipped_pipeline
from .common import (
    UsageError,
    add_lora_flag,
    add_runtime_flags,
    check_text,
    checked_type,
    load_loras,
    lora_folders,
    model_source,
    non_negative,
    plural,
    positive,
    quiet_libraries,
    seed_number,
    summarize,
    torch_dtype,
)

DEFAULT_CAPTION_MODEL = shipped_pipeline(DEFAULT_CAPTIONER)

# settings names as the user typed them, for error messages
FLAG_NAMES = {
    "num_return_sequences": "--num-captions",
    "num_beams": "--beam",
    "max_new_tokens": "--max-new-tokens",
    "min_new_tokens": "--min-new-tokens",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "min_p": "--min-p",
    "stop_strings": "--stop",
    "temperature": "--temperature",
    "repetition_penalty": "--repetition-penalty",
    "no_repeat_ngram_size": "--no-repeat-ngram-size",
}


def caption_model_folder(name=None, default: str = DEFAULT_CAPTIONER) -> Path:
    """The captioner a command reads: `name` (its --model or --captioner), else GENVL_CAPTION_MODEL, else the shipped
    pipeline `default`; a shipped pipeline's name is its folder."""
    return model_source(name, "GENVL_CAPTION_MODEL", str(shipped_pipeline(default)))[0]


def add_parser(commands) -> None:
    """Register `genvl caption` on the `genvl` subparsers."""
    caption = commands.add_parser(
        "caption",
        help="caption images",
        description="Caption images and folders of images.",
        epilog="example: genvl caption examples/images/ --beam 5 --json",
    )
    caption.add_argument("images", nargs="+", help="image files, folders, or tar shards (data/{000..009}.tar)")
    add_decoding_flags(caption)
    add_lora_flag(caption)
    add_runtime_flags(caption, f"captioner folder (default: the shipped {DEFAULT_CAPTIONER})")
    caption.add_argument("--json", action="store_true", help="one JSON record per image on stdout")
    caption.add_argument(
        "--output",
        help="write the JSON records to this JSONL file instead (needed when run as "
        "several processes with accelerate launch: each takes a share)",
    )
    caption.add_argument(
        "--attention-map",
        metavar="PNG",
        help="with one image file: also write a figure of its best caption's content words, each word's "
        "cross-attention (averaged over heads and layers) as a heat map over the image",
    )


def add_decoding_flags(parser):
    group = parser.add_argument_group("decoding (defaults come from the model's generation_config.json)")
    group.add_argument("--beam", type=positive(int), dest="num_beams", help="beam search with N beams")
    group.add_argument("--temperature", type=positive(float), help="sample with this temperature")
    group.add_argument(
        "--top-k",
        type=non_negative(int),
        help="sample from the K most likely tokens (default 50, as transformers; 0: all)",
    )
    group.add_argument(
        "--top-p",
        type=checked_type(float, lambda p: 0 < p <= 1, "in (0, 1]"),
        help="nucleus sampling: smallest token set with this probability",
    )
    group.add_argument(
        "--min-p",
        type=checked_type(float, lambda p: 0 <= p <= 1, "in [0, 1]"),
        help="sample from the tokens at least this fraction as likely as the likeliest",
    )
    group.add_argument("--repetition-penalty", type=positive(float))
    group.add_argument("--no-repeat-ngram-size", type=non_negative(int))
    group.add_argument("--length-penalty", type=checked_type(float, lambda _: True, "a finite number"))
    group.add_argument(
        "--num-captions",
        type=positive(int),
        dest="num_return_sequences",
        help="captions per image (<= --beam, or with sampling)",
    )
    group.add_argument("--max-new-tokens", type=positive(int))
    group.add_argument("--min-new-tokens", type=non_negative(int))
    group.add_argument("--prefix", help='text every caption must continue, e.g. "a photo of"')
    group.add_argument(
        "--stop",
        action="append",
        dest="stop_strings",
        metavar="TEXT",
        help="end a caption on the token that writes TEXT (repeatable)",
    )
    group.add_argument("--seed", type=seed_number, help="seed for sampling (recorded in --json output)")
    group.add_argument(
        "--rerank",
        type=positive(int),
        metavar="K",
        help="decode K captions (K beams, or K samples when sampling) and keep the one the captioner's matcher "
        "scores highest; its score is then the matching probability",
    )


# ---- the captioner and its decoding settings -----------------------------------------------------------------


def decoding_overrides(args) -> dict:
    names = [
        "num_beams",
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "repetition_penalty",
        "no_repeat_ngram_size",
        "length_penalty",
        "num_return_sequences",
        "max_new_tokens",
        "min_new_tokens",
        "stop_strings",
        "seed",
        "rerank",
    ]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def checked_settings(pipeline, args):
    """The decoding settings (model defaults, then flags). A bad value from the model folder is an error naming
    its generation config (exit 1); a bad combination with the flags is a usage error naming the flags."""
    if args.prefix is not None:
        check_text(args.prefix, "--prefix")
    folder = caption_model_folder(args.model)
    defaults = pipeline.settings()  # CaptionPipeline.from_pretrained refused a generation config it cannot use
    overrides = decoding_overrides(args)
    rerank = overrides.pop("rerank", 1)
    if rerank > 1:
        if pipeline.matcher is None:
            raise UsageError(f"--rerank needs a captioner with a matcher; {folder} has none (genvl train matching)")
        if args.num_return_sequences is not None:
            raise UsageError("--rerank keeps one caption per image: drop --num-captions")
        overrides = pipeline.rerank_decoding(overrides, rerank)
    try:
        settings = pipeline.settings(**overrides)
    except (TypeError, ValueError) as err:
        message = str(err)
        for name, flag in FLAG_NAMES.items():
            message = message.replace(name, flag)
        raise UsageError(message) from None
    from ..generation.decoder import decoder_positions

    positions = decoder_positions(pipeline.model.config.decoder)
    if positions is not None:
        check_decoder_positions(args, folder, settings, defaults, len(pipeline.prefix_ids(args.prefix)), positions)
    return settings


def check_decoder_positions(args, folder, settings, defaults, prefix: int, positions: int) -> None:
    """An error unless the start token, `prefix` tokens and the new tokens fit the decoder's `positions`: a usage
    error when the flags made them too many, else one naming the model folder's generation config."""
    if 1 + prefix + settings.max_new_tokens <= positions:
        return
    if args.max_new_tokens is not None:
        raise UsageError(
            f"--max-new-tokens {settings.max_new_tokens} is too many: with the start and prefix "
            f"tokens ({1 + prefix}) the model's decoder has only {positions} positions"
        )
    if 1 + prefix + defaults.max_new_tokens <= positions:  # the flags changed the default (e.g. --beam)
        raise UsageError(
            f"these flags make {settings.max_new_tokens} new tokens, more than the model's decoder "
            f"has positions for ({positions}); pass a smaller --max-new-tokens"
        )
    if prefix:
        raise UsageError(
            f"--prefix is {prefix} tokens long: with the {settings.max_new_tokens} new tokens of "
            f"the model's generation config it passes the decoder's {positions} positions; pass a "
            "shorter --prefix or a smaller --max-new-tokens"
        )
    raise ValueError(
        f"{folder}: its generation config asks for {settings.max_new_tokens} new tokens, but the "
        f"decoder has only {positions} positions; pass a smaller --max-new-tokens"
    )


def load_caption_pipeline(
    args, variable: str = "GENVL_CAPTION_MODEL", default=DEFAULT_CAPTION_MODEL, flag: str = "--model"
):
    """The captioner of --model (or the flag `flag` that gave `args.model`), else of the environment variable
    `variable`, else the shipped `default`."""
    from ..io.folders import no_model_folder
    from ..pipelines.caption import CaptionPipeline

    quiet_libraries(args)
    path, name = model_source(args.model, variable, str(default), flag)
    if not path.is_dir():
        raise no_model_folder(path, name)
    quantize = getattr(args, "quantize", None)
    if quantize and (args.device != "cpu" or args.dtype != "fp32" or getattr(args, "lora", None)):
        raise UsageError("--quantize int8 runs on the CPU in fp32, without --lora")
    pipeline = CaptionPipeline.from_pretrained(path, dtype=torch_dtype(args))
    load_loras(pipeline, getattr(args, "lora", []))
    if quantize:
        pipeline.quantize(quantize)
    pipeline.set_progress_bar_config(disable=args.quiet)
    device = args.device
    if device == "cuda" and process_layout()[0] > 1:  # one GPU per process
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    return pipeline.to(device)


# ---- the images in ---------------------------------------------------------------------------------------------


def find_inputs(specs) -> list:
    """Image files, folders (searched recursively) and tar shard specs -> Paths and (shard, key) refs."""
    from ..io.images import find_images
    from ..io.shards import is_shard_spec, list_image_samples, shard_paths

    items = []
    for spec in specs:
        if is_shard_spec(spec):
            refs = list_image_samples(shard_paths(spec))
            if not refs:
                raise ValueError(f"{spec}: the shards hold no images")
            items.extend(refs)
        else:
            items.extend(find_images([spec]))
    return items


def open_inputs(items):
    """Yield (label, image) per item, nothing decoded: a path as it is, a shard sample as an `EncodedImage`
    named `shard#key` (the pipeline decodes both, one at a time), each run of samples of one shard set read as
    a stream."""
    from ..io.images import EncodedImage
    from ..io.shards import read_sample_images

    start = 0
    while start < len(items):
        end, is_ref = start, isinstance(items[start], tuple)
        while end < len(items) and isinstance(items[end], tuple) == is_ref:
            end += 1
        run, start = items[start:end], end
        if not is_ref:
            yield from ((str(path), path) for path in run)
            continue
        for (path, key), data in zip(run, read_sample_images(run)):
            yield f"{path}#{key}", EncodedImage(data, name=f"{path}#{key}")


# ---- the command -----------------------------------------------------------------------------------------------


def run_caption(args) -> int:
    paths = find_inputs(args.images)
    processes, rank = process_layout()
    if processes > 1 and not args.output:
        raise UsageError("several processes write one file: pass --output FILE")
    # each process captions one contiguous share; image i keeps its global index (and sampling seed)
    first, last = rank * len(paths) // processes, (rank + 1) * len(paths) // processes
    output = None
    if args.output:
        # an image, a shard, a model or adapter file: the inputs --output must not overwrite
        inputs = [
            *dict.fromkeys(item[0] if isinstance(item, tuple) else item for item in paths),
            caption_model_folder(args.model),
            *lora_folders(args),
        ]
        output = check_output_file(args.output, "--output", inputs)
    figure = None
    if args.attention_map:
        if len(paths) != 1 or isinstance(paths[0], tuple) or processes > 1:
            raise UsageError("--attention-map takes one image file (and one process)")
        if output is not None and os.path.abspath(args.attention_map) == os.path.abspath(output):
            raise UsageError("--attention-map and --output name one file; give each its own")
        inputs = [paths[0], caption_model_folder(args.model), *lora_folders(args)]
        figure = check_output_file(args.attention_map, "--attention-map", [*inputs, *([output] if output else [])])
    pipeline = load_caption_pipeline(args)
    settings = checked_settings(pipeline, args)
    overrides = decoding_overrides(args)
    base_seed = None
    if settings.do_sample:
        import random

        # image i is sampled with its own generator seeded base + i: captions do not depend on the batch
        # size, and the recorded per-image seed reproduces that image's captions on its own
        base_seed = settings.seed if settings.seed is not None else random.randrange(2**31)
        if processes > 1 and settings.seed is None:
            raise UsageError("sampling in several processes needs --seed, so that they share one base seed")
        overrides.pop("seed", None)
    drawn = []
    records = caption_records(pipeline, paths[first:last], first, base_seed, args, overrides, drawn if figure else None)
    if figure is not None:
        records = list(records)  # captioned before the figure is drawn
        write_attention_figure(paths[0], drawn[0], figure, pipeline.config.get("pad_to_square", False))
    if output is None:
        for record in records:
            print_record(record, args.json)
        summarize(args, f"captioned {plural(last - first, 'image')}")
        return 0
    write_part(records, output, processes, rank)
    if rank == 0:
        summarize(args, f"captioned {plural(len(paths), 'image')} into {output}")
    return 0


def caption_records(pipeline, paths, first: int, base_seed, args, overrides, attentions=None):
    """One record per image: {"path", "captions": [{"text", "score"}], "seed" when sampling}. With `attentions`
    (a list), each image's best caption's words and attention maps are appended to it. `overrides` go to the
    pipeline (decoding settings, or `question=` for answers)."""
    import itertools

    import torch
    from tqdm import tqdm

    inputs = open_inputs(paths)
    # closed by `with` on an error too, so that the error is not printed onto the bar's line
    with tqdm(total=len(paths), unit="img", file=sys.stderr, disable=args.quiet or len(paths) <= 8) as bar:
        for start in range(0, len(paths), args.batch_size):
            labels, batch = zip(*itertools.islice(inputs, args.batch_size))
            seeds = [base_seed + first + start + i for i in range(len(batch))] if base_seed is not None else None
            generators = [torch.Generator().manual_seed(seed) for seed in seeds] if seeds else None
            output = pipeline(
                list(batch),
                prefix=getattr(args, "prefix", None),
                generator=generators,
                output_attentions=attentions is not None,
                **overrides,
            )
            if attentions is not None:
                attentions += [found[0] for found in output.attentions]
            for i, (label, captions, scores) in enumerate(zip(labels, output.captions, output.scores)):
                if not all(math.isfinite(score) for score in scores):  # NaN is not JSON, nor a caption's score
                    raise RuntimeError(
                        f"{label}: the model gave non-finite caption scores (its weights or --dtype overflow?)"
                    )
                record = {"path": label, "captions": [{"text": c, "score": s} for c, s in zip(captions, scores)]}
                if seeds:
                    record["seed"] = seeds[i]
                yield record
            bar.update(len(batch))


def write_attention_figure(image_path, words, output, padded: bool = False) -> None:
    """The `attention_figure` of an image's best caption (`padded`: the pipeline pads pictures to a square),
    written to `output` whole or not at all."""
    from ..io.images import load_image
    from ..pipelines.caption import attention_figure

    with written_atomically(output, "--attention-map") as tmp:
        attention_figure(load_image(image_path), words, padded=padded).save(tmp, format="PNG")


def print_record(record: dict, as_json: bool) -> None:
    """One JSON line, or `path<TAB>caption` lines with control characters in the path or caption escaped, so
    that a file name holding a tab or newline cannot split or forge a line."""
    from ..io.images import printable_path

    if as_json:
        print(json.dumps(record), flush=True)
        return
    path = printable_path(record["path"])
    if len(record["captions"]) == 1:
        print(f"{path}\t{printable_path(record['captions'][0]['text'])}", flush=True)
    else:
        for caption in record["captions"]:
            print(f"{path}\t{printable_path(caption['text'])}\t{caption['score']:.3f}", flush=True)


# ---- the records out, as one process or several ----------------------------------------------------------------


def process_layout() -> tuple[int, int]:
    """(processes, this process's rank) when started by accelerate launch / torchrun, else (1, 0)."""
    return int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))


def wait_for_processes(processes: int) -> None:
    if processes > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def write_part(records, output: Path, processes: int, rank: int) -> None:
    """Write the JSONL records to `output`, whole or not at all, leaving no temporary behind.

    As several processes, each writes its share to a part file beside `output`, and rank 0 joins the parts in
    order into `output` and removes them all, whether the join succeeds or not. The parts are named after rank 0's
    process (broadcast to the others): a name they agree on that no other run uses, and that tells a later run
    whether they are stale.
    """
    if processes == 1:
        with written_atomically(output, "--output") as tmp, open(tmp, "w") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
        return
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, parse_flag_from_env

    # join the process group (the one wait_for_processes then uses); on the CPU only when the launcher says so, as
    # Accelerator would: PartialState() alone would see no group there, and neither broadcast nor wait
    PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    owner = broadcast_object_list([process_tag()], from_process=0)[0]
    parts = [temporary_name(output, f"part{k}", owner) for k in range(processes)]
    with temporary_file(output, "--output", parts[rank]) as part, open(part, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    wait_for_processes(processes)
    if rank == 0:
        try:
            with written_atomically(output, "--output") as joined, open(joined, "w") as f:
                for part in parts:
                    f.write(part.read_text())
        finally:
            for part in parts:
                part.unlink(missing_ok=True)
