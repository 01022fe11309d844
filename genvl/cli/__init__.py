"""The `genvl` command line: `build_parser`, and `main` (the console entry point), which runs one command and
turns its errors into one line and an exit code. The commands live one module per concern: `caption`, `ask`, `image`
(generate, vary, interpolate, score), `evaluate`, `data`, `recipes` (train, export), with what they share in
`common`. Heavy imports (torch, transformers) happen inside the commands, so that `genvl --help` stays instant."""

import argparse
import os
import sys
import threading
import time

from .. import __version__
from ..io.folders import first_line, is_panic, native_failure
from ..io.outputs import terminate_cleanly
from . import ask, caption, data, evaluate, image, recipes
from .common import Parser, UsageError, check_device

EXAMPLES = """examples:
  genvl caption examples/images/ --beam 5
  genvl generate "a red bicycle" -n 4 --seed 0
  genvl score img.png "a red apple" "a blue car"

Results go to stdout, logs and progress bars to stderr. Exit codes: 0 done, 1 failed, 2 bad usage."""

# command -> its run function, or (the attribute naming its subcommand, subcommand -> run function)
COMMANDS = {
    "caption": caption.run_caption,
    "ask": ask.run_ask,
    **image.RUNS,
    "data": ("data_command", data.RUNS),
    "eval": ("eval_command", evaluate.RUNS),
    **recipes.RUNS,
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="genvl",
        description="Caption images and generate images from text.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    parser.add_argument("--version", action="version", version=f"genvl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)
    caption.add_parser(commands)  # in the order `genvl --help` lists them
    ask.add_parser(commands)
    data.add_parser(commands)
    evaluate.add_parser(commands)
    image.add_parsers(commands)
    recipes.add_parsers(commands)
    return parser


def run_function(args):
    """The function that runs the command `args` names."""
    run = COMMANDS[args.command]
    if isinstance(run, tuple):
        attribute, runs = run
        run = runs[getattr(args, attribute)]
    return run


# the flags that name a file or folder: an empty one is a usage error, not the flag left out
PATH_FLAGS = ("output", "out", "attention_map", "model", "prior", "captioner", "data", "judge", "image_dir")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in PATH_FLAGS:
        if getattr(args, name, None) == "":  # `if args.output:` would read it as not given
            parser.exit(2, f"genvl: error: --{name.replace('_', '-')} is empty; expected a path\n")
    args.started = time.perf_counter()
    log_warnings()
    if threading.current_thread() is threading.main_thread():  # only there can a signal handler be set
        terminate_cleanly()  # SIGTERM unwinds like Ctrl-C: temporaries are removed on the way out
    if getattr(args, "device", None) is not None:
        try:
            check_device(args.device)
        except UsageError as err:
            parser.exit(2, f"genvl: error: {err}\n")
    if getattr(args, "max_image_pixels", None) is not None:
        from ..io.images import set_max_image_pixels

        set_max_image_pixels(args.max_image_pixels)
    try:
        return run_function(args)(args)
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
    except BaseException as err:  # PyO3 raises a Rust library's panic (a tokenizer's regex, say) as a BaseException
        if args.debug or not is_panic(err):
            raise
        print(f"genvl: error: {native_failure(err)} (run with --debug for the traceback)", file=sys.stderr)
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
