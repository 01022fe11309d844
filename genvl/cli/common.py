"""What every `genvl` command shares: the usage error, the parser, flag types and flags, and the helpers that load
models and report a run. Heavy imports (torch, transformers) happen inside the functions."""

import argparse
import json
import math
import os
import sys
import time
import unicodedata
from pathlib import Path

from ..io.outputs import written_atomically


class UsageError(Exception):
    """A bad flag value: reported with exit code 2."""


class Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the flag, exit code 2 (argparse would print the whole usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---- flag types ----------------------------------------------------------------------------------------------


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


def lora_spec(text: str) -> str:
    """An argparse type: `PATH[:SCALE]` whose scale, if any, is in range (the text is kept as it is)."""
    from ..lora import parse_lora_spec

    try:
        parse_lora_spec(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


# Unicode categories that draw nothing: format characters (zero-width spaces and joiners, direction marks),
# controls, and unassigned or private code points; a prompt of these and spaces is as good as empty
INVISIBLE = ("Cf", "Cc", "Cn", "Co", "Cs")


def check_text(text: str, name: str) -> str:
    """Text from the command line: valid UTF-8 and not blank, else a usage error naming it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # argv bytes that were not UTF-8 arrive as lone surrogates
        raise UsageError(f"{name} is not valid UTF-8 text") from None
    if all(char.isspace() or unicodedata.category(char) in INVISIBLE for char in text):
        raise UsageError(f"{name} is empty" + (" (it holds only invisible characters)" if text else ""))
    return text


# ---- flags more than one command takes -----------------------------------------------------------------------


def add_runtime_flags(parser, model_help):
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    parser.add_argument("--model", default=None, help=model_help)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=positive(int), default=16)
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        help="int8: the decoder's linear layers quantized dynamically, for CPU inference (fp32, no --lora)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or logs on stderr")
    add_image_limit_flag(parser)


def add_image_limit_flag(parser):
    from ..io.images import DEFAULT_MAX_IMAGE_PIXELS

    # the default is applied, not left to Pillow, so that the number --help states is the one every refusal states
    parser.add_argument(
        "--max-image-pixels",
        type=positive(int),
        metavar="N",
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="refuse images over N pixels as possible decompression bombs (default: "
        f"{DEFAULT_MAX_IMAGE_PIXELS:,}, Pillow's limit)",
    )


def add_lora_flag(parser):
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:SCALE]",
        type=lora_spec,
        help="load a LoRA adapter folder (PEFT format), scaled by SCALE (default 1, at most 10 either way); repeatable",
    )


# ---- loading models ------------------------------------------------------------------------------------------


def model_source(name, variable: str, default: str, flag: str = "--model") -> tuple[Path, str]:
    """(the model folder a command uses, how to name it in an error): `name` (given as `flag`), else the
    environment variable `variable`, else the shipped `default`; a shipped pipeline's name is its folder
    (`named_folder`)."""
    if name:
        return named_folder(name), f"{flag} {name}"
    if os.environ.get(variable):
        return named_folder(os.environ[variable]), f"{variable}={os.environ[variable]}"
    return Path(default), f"the shipped model {default}"


def named_folder(name: str) -> Path:
    """The folder `name` names; where there is none, a shipped pipeline of that name (`genvl-caption-tiny`), found
    in a checkout or an installed wheel alike. A name with a path separator is only ever a path."""
    from ..pipelines.defaults import shipped_pipeline

    path = Path(name)
    if not path.exists() and name.startswith("genvl-") and path.name == name:
        shipped = shipped_pipeline(name)
        if shipped.is_dir():
            return shipped
    return path


def check_device(name: str) -> None:
    """A usage error unless `name` is a torch device this machine has (torch would fail after the model loaded)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(
            f"--device {name}: not a device; expected cpu, cuda or mps (cuda:1 for a second GPU)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name}: genvl runs on cpu, cuda or mps")


def torch_dtype(args):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]


def load_loras(pipeline, specs) -> None:
    from ..lora import parse_lora_spec

    for spec in specs:
        path, scale = parse_lora_spec(spec)
        if not Path(path).is_dir():
            raise FileNotFoundError(f"--lora {path}: no such adapter folder")
        pipeline.load_lora_weights(path, weight=scale)


def lora_folders(args) -> list[str]:
    """The adapter folders of --lora (none for a command without the flag)."""
    from ..lora import parse_lora_spec

    return [parse_lora_spec(spec)[0] for spec in getattr(args, "lora", [])]


def quiet_libraries(args):
    """Loading bars for a few small files are noise next to a command's own progress bar, and library notices
    (e.g. the PIL fallback of image processors) are not the user's business unless debugging."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if not args.debug:  # e.g. diffusers' claim that fp16 pipelines cannot run on the CPU, where genvl's do
        transformers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.set_verbosity_error()


# ---- reporting a run -----------------------------------------------------------------------------------------


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def summarize(args, done: str) -> None:
    """The closing line of a run on stderr: what was done and how long it took (not with --quiet)."""
    if not args.quiet:
        print(f"genvl: {done} in {time.perf_counter() - args.started:.1f} s", file=sys.stderr)


def progress_bar(args, unit: str):
    """A `progress(iterable, total=N)` wrapper drawing on stderr, or None with --quiet."""
    if args.quiet:
        return None
    from tqdm import tqdm

    return lambda iterable, total: tqdm(iterable, total=total, unit=unit, file=sys.stderr)


def json_safe(value):
    """`value` with every float that is not finite as None: JSON has no NaN (a score over no items, say), and
    strict readers refuse Python's `NaN`."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def print_report(report: dict, output=None):
    """Print `report` as JSON, then with `output` also write it there (whole or not at all): should the write
    fail, the report is still on stdout."""
    text = json.dumps(json_safe(report), indent=2, allow_nan=False)
    print(text, flush=True)
    if output:
        with written_atomically(output, "--output") as tmp:
            tmp.write_text(text + "\n")
