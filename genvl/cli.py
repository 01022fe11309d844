"""The `genvl` command line. Heavy imports (torch, transformers) happen inside the commands, so that
`genvl --help` stays instant."""

import argparse
import json
import math
import os
import sys
import threading
import time
import unicodedata
from pathlib import Path

from . import __version__
from .io.folders import first_line
from .io.outputs import (check_output_file, process_tag, temporary_file, temporary_name, terminate_cleanly,
                      written_atomically)

DEFAULT_CAPTION_MODEL = Path(__file__).resolve().parent.parent / "pipelines" / "genvl-caption-small"


class UsageError(Exception):
    """A bad flag value: reported with exit code 2."""


def default_caption_model() -> str:
    return os.environ.get("GENVL_CAPTION_MODEL", str(DEFAULT_CAPTION_MODEL))


def model_source(args, variable: str, default: str) -> tuple[Path, str]:
    """(the model folder a command uses, how to name it in an error): --model, else the environment variable
    `variable`, else the shipped `default`."""
    if args.model:
        return Path(args.model), f"--model {args.model}"
    if os.environ.get(variable):
        return Path(os.environ[variable]), f"{variable}={os.environ[variable]}"
    return Path(default), f"the shipped model {default}"


def check_device(name: str) -> None:
    """A usage error unless `name` is a torch device this machine has (torch would fail after the model loaded)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name}: not a device; expected cpu, cuda or mps (cuda:1 for a second GPU)") \
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name}: genvl runs on cpu, cuda or mps")


def check_text(text: str, name: str) -> str:
    """Text from the command line: valid UTF-8 and not blank, else a usage error naming it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # argv bytes that were not UTF-8 arrive as lone surrogates
        raise UsageError(f"{name} is not valid UTF-8 text") from None
    if all(char.isspace() or unicodedata.category(char) in INVISIBLE for char in text):
        raise UsageError(f"{name} is empty" + (" (it holds only invisible characters)" if text else ""))
    return text


# Unicode categories that draw nothing: format characters (zero-width spaces and joiners, direction marks),
# controls, and unassigned or private code points; a prompt of these and spaces is as good as empty
INVISIBLE = ("Cf", "Cc", "Cn", "Co", "Cs")


def checked_type(kind, ok, rule: str):
    """An argparse type: `kind(text)`, refused unless `ok(value)`, with "must be {rule}" as the message."""

    def parse(text):
        value = kind(text)
        if (isinstance(value, float) and not math.isfinite(value)) or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        if isinstance(value, int) and value > sys.maxsize:
            raise argparse.ArgumentTypeError(f"must be at most {sys.maxsize}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value: 'x'"
    return parse


def positive(kind):
    return checked_type(kind, lambda value: value > 0, "> 0")


def non_negative(kind):
    return checked_type(kind, lambda value: value >= 0, ">= 0")


# a seed for torch.Generator.manual_seed: an integer in [0, 2**63), so that S + i still fits
seed_number = checked_type(int, lambda value: 0 <= value < 2**63, "an integer in [0, 2**63)")


def add_decoding_flags(parser):
    group = parser.add_argument_group("decoding (defaults come from the model's generation_config.json)")
    group.add_argument("--beam", type=positive(int), dest="num_beams", help="beam search with N beams")
    group.add_argument("--temperature", type=positive(float), help="sample with this temperature")
    group.add_argument("--top-k", type=non_negative(int), help="sample from the K most likely tokens")
    group.add_argument("--top-p", type=checked_type(float, lambda p: 0 < p <= 1, "in (0, 1]"),
                       help="nucleus sampling: smallest token set with this probability")
    group.add_argument("--repetition-penalty", type=positive(float))
    group.add_argument("--no-repeat-ngram-size", type=non_negative(int))
    group.add_argument("--length-penalty", type=checked_type(float, lambda _: True, "a finite number"))
    group.add_argument("--num-captions", type=positive(int), dest="num_return_sequences",
                       help="captions per image (<= --beam, or with sampling)")
    group.add_argument("--max-new-tokens", type=positive(int))
    group.add_argument("--min-new-tokens", type=non_negative(int))
    group.add_argument("--prefix", help='text every caption must continue, e.g. "a photo of"')
    group.add_argument("--seed", type=seed_number, help="seed for sampling (recorded in --json output)")


def add_runtime_flags(parser, model_help):
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    parser.add_argument("--model", default=None, help=model_help)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=positive(int), default=16)
    parser.add_argument("--quiet", action="store_true", help="no progress bars or logs on stderr")
    add_image_limit_flag(parser)


def add_image_limit_flag(parser):
    from .io.images import DEFAULT_MAX_IMAGE_PIXELS

    # the default is applied, not left to Pillow, so that the number --help states is the one every refusal states
    parser.add_argument("--max-image-pixels", type=positive(int), metavar="N", default=DEFAULT_MAX_IMAGE_PIXELS,
                        help="refuse images over N pixels as possible decompression bombs (default: "
                             f"{DEFAULT_MAX_IMAGE_PIXELS:,}, Pillow's limit)")


def lora_spec(text: str) -> str:
    """An argparse type: `PATH[:SCALE]` whose scale, if any, is in range (the text is kept as it is)."""
    from .lora import parse_lora_spec

    try:
        parse_lora_spec(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def add_lora_flag(parser):
    parser.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]", type=lora_spec,
                        help="load a LoRA adapter folder (PEFT format), scaled by SCALE (default 1, at most 10 "
                             "either way); repeatable")


def load_loras(pipeline, specs) -> None:
    from .lora import parse_lora_spec

    for spec in specs:
        path, scale = parse_lora_spec(spec)
        if not Path(path).is_dir():
            raise FileNotFoundError(f"--lora {path}: no such adapter folder")
        pipeline.load_lora_weights(path, weight=scale)


EXAMPLES = """examples:
  genvl caption examples/images/ --beam 5
  genvl generate "a red bicycle" -n 4 --seed 0
  genvl score img.png "a red apple" "a blue car"

Results go to stdout, logs and progress bars to stderr. Exit codes: 0 done, 1 failed, 2 bad usage."""


class Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the flag, exit code 2 (argparse would print the whole usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="genvl", description="Caption images and generate images from text.",
                    formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    parser.add_argument("--version", action="version", version=f"genvl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    caption = commands.add_parser(
        "caption", help="caption images", description="Caption images and folders of images.",
        epilog="example: genvl caption examples/images/ --beam 5 --json",
    )
    caption.add_argument("images", nargs="+", help="image files, folders, or tar shards (data/{000..009}.tar)")
    add_decoding_flags(caption)
    add_lora_flag(caption)
    add_runtime_flags(caption, "captioner folder (default: the shipped genvl-caption-small)")
    caption.add_argument("--json", action="store_true", help="one JSON record per image on stdout")
    caption.add_argument("--output", help="write the JSON records to this JSONL file instead (needed when run as "
                                          "several processes with accelerate launch: each takes a share)")

    data = commands.add_parser(
        "data", help="make datasets", epilog="example: genvl data scenes --out data/world --num-images 1000",
    ).add_subparsers(dest="data_command", required=True, metavar="{scenes,shards}")
    scenes = data.add_parser(
        "scenes", help="render procedural scenes as an imagefolder",
        epilog="example: genvl data scenes --out data/world --num-images 1000 --split test",
    )
    scenes.add_argument("--out", required=True, help="dataset root; the split goes to OUT/SPLIT/")
    scenes.add_argument("--num-images", type=positive(int), required=True)
    scenes.add_argument("--seed", type=seed_number, default=0)
    scenes.add_argument("--split", choices=["train", "val", "test"], default="train")
    scenes.add_argument("--resolution", type=positive(int), default=64)
    scenes.add_argument("--workers", type=positive(int), default=1, help="processes rendering the images")
    scenes.add_argument("--require", metavar="OBJECT",
                        help="keep only scenes holding this object, which may be a held-out one (e.g. robot)")
    scenes.add_argument("--overwrite", action="store_true",
                        help="replace an existing OUT/SPLIT/ that genvl wrote (refused if it holds anything else)")
    scenes.add_argument("--quiet", action="store_true")
    shards = data.add_parser(
        "shards", help="pack an imagefolder into WebDataset tar shards",
        epilog="example: genvl data shards --data data/world/test --out 'shards/test-%%06d.tar'",
    )
    shards.add_argument("--data", required=True, help="imagefolder with metadata.jsonl")
    shards.add_argument("--out", required=True, help="shard name with a %%d field for the shard's number")
    shards.add_argument("--samples-per-shard", type=positive(int), default=1000)
    shards.add_argument("--quiet", action="store_true", help="no summary line on stderr")

    evaluate = commands.add_parser(
        "eval", help="evaluate models", epilog="example: genvl eval caption --data data/world/test --beam 3",
    ).add_subparsers(dest="eval_command", required=True, metavar="{caption,retrieval,t2i}")
    eval_caption = evaluate.add_parser(
        "caption", help="caption metrics and scene-graph accuracy on a held-out imagefolder",
        epilog="example: genvl eval caption --data data/world/test --beam 3",
    )
    eval_caption.add_argument("--data", required=True, help="imagefolder with metadata.jsonl")
    eval_caption.add_argument("--limit", type=positive(int), help="evaluate the first N images only")
    eval_caption.add_argument("--output", help="also write the report as JSON to this file")
    add_decoding_flags(eval_caption)
    add_lora_flag(eval_caption)
    add_runtime_flags(eval_caption, "captioner folder (default: the shipped genvl-caption-small)")

    from .cli_image import add_parsers

    add_parsers(commands, evaluate)
    return parser


# settings names as the user typed them, for error messages
FLAG_NAMES = {
    "num_return_sequences": "--num-captions", "num_beams": "--beam", "max_new_tokens": "--max-new-tokens",
    "min_new_tokens": "--min-new-tokens", "top_k": "--top-k", "top_p": "--top-p", "temperature": "--temperature",
    "repetition_penalty": "--repetition-penalty", "no_repeat_ngram_size": "--no-repeat-ngram-size",
}


def decoding_overrides(args) -> dict:
    names = ["num_beams", "temperature", "top_k", "top_p", "repetition_penalty", "no_repeat_ngram_size",
             "length_penalty", "num_return_sequences", "max_new_tokens", "min_new_tokens", "seed"]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def checked_settings(pipeline, args):
    """The decoding settings (model defaults, then flags). A bad value from the model folder is an error naming
    its generation config (exit 1); a bad combination with the flags is a usage error naming the flags."""
    if args.prefix is not None:
        check_text(args.prefix, "--prefix")
    folder = model_source(args, "GENVL_CAPTION_MODEL", str(DEFAULT_CAPTION_MODEL))[0]
    try:
        defaults = pipeline.settings()
    except (TypeError, ValueError) as err:
        raise ValueError(f"{folder}: its generation config is not usable ({first_line(err)})") from None
    try:
        settings = pipeline.settings(**decoding_overrides(args))
    except (TypeError, ValueError) as err:
        message = str(err)
        for name, flag in FLAG_NAMES.items():
            message = message.replace(name, flag)
        raise UsageError(message) from None
    prefix = len(pipeline.tokenizer(args.prefix).input_ids) if args.prefix else 0
    positions = pipeline.model.config.decoder.n_positions
    if 1 + prefix + settings.max_new_tokens > positions:
        if args.max_new_tokens is not None:
            raise UsageError(f"--max-new-tokens {settings.max_new_tokens} is too many: with the start and prefix "
                             f"tokens ({1 + prefix}) the model's decoder has only {positions} positions")
        if 1 + prefix + defaults.max_new_tokens <= positions:  # the flags changed the default (e.g. --beam)
            raise UsageError(f"these flags make {settings.max_new_tokens} new tokens, more than the model's decoder "
                             f"has positions for ({positions}); pass a smaller --max-new-tokens")
        if prefix:
            raise UsageError(f"--prefix is {prefix} tokens long: with the {settings.max_new_tokens} new tokens of "
                             f"the model's generation config it passes the decoder's {positions} positions; pass a "
                             "shorter --prefix or a smaller --max-new-tokens")
        raise ValueError(f"{folder}: its generation config asks for {settings.max_new_tokens} new tokens, but the "
                         f"decoder has only {positions} positions; pass a smaller --max-new-tokens")
    return settings


def quiet_libraries(args):
    """Loading bars for a few small files are noise next to a command's own progress bar, and library notices
    (e.g. the PIL fallback of image processors) are not the user's business unless debugging."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if not args.debug:
        transformers.utils.logging.set_verbosity_error()


def torch_dtype(args):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]


def load_caption_pipeline(args):
    from .pipelines.caption import CaptionPipeline

    quiet_libraries(args)
    path, name = model_source(args, "GENVL_CAPTION_MODEL", str(DEFAULT_CAPTION_MODEL))
    if not path.is_dir():
        raise FileNotFoundError(f"{name}: no such model folder")
    pipeline = CaptionPipeline.from_pretrained(path, dtype=torch_dtype(args))
    load_loras(pipeline, getattr(args, "lora", []))
    pipeline.set_progress_bar_config(disable=args.quiet)
    device = args.device
    if device == "cuda" and process_layout()[0] > 1:  # one GPU per process
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    return pipeline.to(device)


def find_inputs(specs) -> list:
    """Image files, folders (searched recursively) and tar shard specs -> Paths and (shard, key) refs."""
    from .io.images import find_images
    from .io.shards import is_shard_spec, list_image_samples, shard_paths

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
    from .io.images import EncodedImage
    from .io.shards import read_sample_images

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


def run_caption(args) -> int:
    paths = find_inputs(args.images)
    processes, rank = process_layout()
    if processes > 1 and not args.output:
        raise UsageError("several processes write one file: pass --output FILE")
    # each process captions one contiguous share; image i keeps its global index (and sampling seed)
    first, last = rank * len(paths) // processes, (rank + 1) * len(paths) // processes
    output = None
    if args.output:
        from .lora import parse_lora_spec

        # an image, a shard, a model or adapter file: the inputs --output must not overwrite
        inputs = [*dict.fromkeys(item[0] if isinstance(item, tuple) else item for item in paths),
                  args.model or default_caption_model(), *(parse_lora_spec(spec)[0] for spec in args.lora)]
        output = check_output_file(args.output, "--output", inputs)
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
    records = caption_records(pipeline, paths[first:last], first, base_seed, args, overrides)
    if output is None:
        for record in records:
            print_record(record, args.json)
        summarize(args, f"captioned {plural(last - first, 'image')}")
        return 0
    write_part(records, output, processes, rank)
    if rank == 0:
        summarize(args, f"captioned {plural(len(paths), 'image')} into {output}")
    return 0


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


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def summarize(args, done: str) -> None:
    """The closing line of a run on stderr: what was done and how long it took (not with --quiet)."""
    if not args.quiet:
        print(f"genvl: {done} in {time.perf_counter() - args.started:.1f} s", file=sys.stderr)


def process_layout() -> tuple[int, int]:
    """(processes, this process's rank) when started by accelerate launch / torchrun, else (1, 0)."""
    return int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))


def wait_for_processes(processes: int) -> None:
    if processes > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def caption_records(pipeline, paths, first: int, base_seed, args, overrides):
    """One record per image: {"path", "captions": [{"text", "score"}], "seed" when sampling}."""
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
            output = pipeline(list(batch), prefix=args.prefix, generator=generators, **overrides)
            for i, (label, captions, scores) in enumerate(zip(labels, output.captions, output.scores)):
                if not all(math.isfinite(score) for score in scores):  # NaN is not JSON, nor a caption's score
                    raise RuntimeError(f"{label}: the model gave non-finite caption scores (its weights or --dtype "
                                       "overflow?)")
                record = {"path": label, "captions": [{"text": c, "score": s} for c, s in zip(captions, scores)]}
                if seeds:
                    record["seed"] = seeds[i]
                yield record
            bar.update(len(batch))


def print_record(record: dict, as_json: bool) -> None:
    """One JSON line, or `path<TAB>caption` lines with control characters in the path or caption escaped, so
    that a file name holding a tab or newline cannot split or forge a line."""
    from .io.images import printable_path

    if as_json:
        print(json.dumps(record), flush=True)
        return
    path = printable_path(record["path"])
    if len(record["captions"]) == 1:
        print(f"{path}\t{printable_path(record['captions'][0]['text'])}", flush=True)
    else:
        for caption in record["captions"]:
            print(f"{path}\t{printable_path(caption['text'])}\t{caption['score']:.3f}", flush=True)


def progress_bar(args, unit: str):
    """A `progress(iterable, total=N)` wrapper drawing on stderr, or None with --quiet."""
    if args.quiet:
        return None
    from tqdm import tqdm

    return lambda iterable, total: tqdm(iterable, total=total, unit=unit, file=sys.stderr)


def run_data_scenes(args) -> int:
    from .world.dataset import write_imagefolder

    progress = progress_bar(args, "img")
    out = write_imagefolder(args.out, args.num_images, seed=args.seed, split=args.split,
                            resolution=args.resolution, progress=progress, require=args.require,
                            workers=args.workers, overwrite=args.overwrite)
    print(out)
    return 0


def run_data_shards(args) -> int:
    from .io.images import load_image
    from .io.shards import write_shards
    from .io.imagefolder import read_metadata

    try:
        args.out % 0
    except (TypeError, ValueError):
        raise UsageError(f"--out {args.out}: expected one %d field for the shard number, e.g. out/train-%06d.tar")
    records = read_metadata(args.data)
    for index in range(math.ceil(len(records) / args.samples_per_shard)):  # every shard's name, before any work
        shard = Path(args.out % index)
        if shard.parent.is_dir():
            check_output_file(shard, "--out", inputs=[args.data])
    written = write_shards(records, lambda r: load_image(Path(args.data) / r["file_name"]), args.out,
                           args.samples_per_shard)
    for path in written:
        print(path)
    summarize(args, f"packed {plural(len(records), 'sample')} into {plural(len(written), 'shard')}")
    return 0


def run_eval_caption(args) -> int:
    from .evaluation.captioning import evaluate_captioner

    if args.output:
        from itertools import chain

        from .lora import parse_lora_spec
        from .io.imagefolder import imagefolder_files

        models = [args.model or default_caption_model(), *(parse_lora_spec(spec)[0] for spec in args.lora)]
        check_output_file(args.output, "--output", chain(imagefolder_files(args.data), models))
    pipeline = load_caption_pipeline(args)
    checked_settings(pipeline, args)
    progress = progress_bar(args, "batch")
    report = evaluate_captioner(pipeline, args.data, batch_size=args.batch_size, limit=args.limit,
                                progress=progress, prefix=args.prefix, **decoding_overrides(args))
    print_report(report, args.output)
    return 0


def print_report(report: dict, output=None):
    """Print `report` as JSON, then with `output` also write it there (whole or not at all): should the write
    fail, the report is still on stdout."""
    text = json.dumps(report, indent=2)
    print(text, flush=True)
    if output:
        with written_atomically(output, "--output") as tmp:
            tmp.write_text(text + "\n")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.started = time.perf_counter()
    log_warnings()
    if threading.current_thread() is threading.main_thread():  # only there can a signal handler be set
        terminate_cleanly()  # SIGTERM unwinds like Ctrl-C: temporaries are removed on the way out
    from .cli_image import HANDLERS, run_eval_retrieval, run_eval_t2i

    handlers = {"caption": run_caption, **HANDLERS}
    if args.command == "data":
        handlers["data"] = {"scenes": run_data_scenes, "shards": run_data_shards}[args.data_command]
    if args.command == "eval":
        evaluators = {"caption": run_eval_caption, "retrieval": run_eval_retrieval, "t2i": run_eval_t2i}
        handlers["eval"] = evaluators[args.eval_command]
    if getattr(args, "device", None) is not None:
        try:
            check_device(args.device)
        except UsageError as err:
            parser.exit(2, f"genvl: error: {err}\n")
    if getattr(args, "max_image_pixels", None) is not None:
        from .io.images import set_max_image_pixels

        set_max_image_pixels(args.max_image_pixels)
    try:
        return handlers[args.command](args)
    except UsageError as err:
        if args.debug:
            raise
        parser.exit(2, f"genvl: error: {first_line(err)}\n")
    except KeyboardInterrupt:
        print("genvl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `genvl caption ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    except Exception as err:  # noqa: BLE001  (one line, not a traceback; --debug shows it)
        if args.debug:
            raise
        known = isinstance(err, (ValueError, OSError, RuntimeError))  # OSError covers missing files
        prefix = "" if known else f"unexpected {type(err).__name__}: "
        hint = "" if known else " (run with --debug for the traceback)"
        print(f"genvl: error: {prefix}{first_line(err)}{hint}", file=sys.stderr)
        return 1


def log_warnings() -> None:
    """genvl's own warnings (e.g. a prompt longer than the model reads) go to stderr as `genvl: warning: ...`."""
    import logging

    class StderrHandler(logging.StreamHandler):
        stream = property(lambda self: sys.stderr, lambda self, value: None)  # sys.stderr as it is when writing

    logger = logging.getLogger("genvl")
    if not logger.handlers:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("genvl: warning: %(message)s"))
        handler.setLevel(logging.WARNING)
        logger.addHandler(handler)
        logger.propagate = False


if __name__ == "__main__":  # run as `python -m genvl.cli`: use the module's one import, whose errors the rest raise
    from genvl.cli import main as package_main

    sys.exit(package_main())
