"""The training scripts' arguments: typed dataclasses parsed from flags and a `--config` file, their checks, the
run config saved in the output folder (with the architecture the run resolved), and `run_script`, which ends a
script's failure in one line."""

import argparse
import dataclasses
import json
import math
import os
import sys
import typing
from contextlib import contextmanager
from pathlib import Path

from genvl.io.outputs import weights_readable_as_umask

# the schedules of diffusers' get_scheduler that need nothing but the warmup and total steps (piecewise_constant
# needs step rules)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
RUN_CONFIG = "train_config.json"
# the key of RUN_CONFIG holding the content of the architecture the run built its model from (None when it
# started from a saved model instead); runs saved before it existed hold only the path, `architecture`
ARCHITECTURE_CONFIG = "architecture_config"


def parse_args(args_class, argv=None):
    """Build an argparse parser from a dataclass, with `--config FILE` giving defaults (unknown keys rejected).
    A run's saved `train_config.json` is a valid `--config`: the architecture it resolved is read again from its
    `architecture` path."""
    parser = argparse.ArgumentParser(description=args_class.__doc__)
    # a usage error in one line, not after the whole usage block (the block is what --help is for)
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")
    parser.add_argument("--config", default=None, help="JSON file of argument values; flags override it")
    hints = typing.get_type_hints(args_class)
    for field in dataclasses.fields(args_class):
        kind = hints[field.name]
        origin = typing.get_args(kind)
        if kind is bool:
            parser.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction, default=None)
        elif origin:  # Optional[X]
            parser.add_argument(f"--{field.name}", type=origin[0], default=None)
        else:
            parser.add_argument(f"--{field.name}", type=kind, default=None)
    ns = parser.parse_args(argv)
    values = {}
    if ns.config:
        try:
            values = json.loads(Path(ns.config).read_text())
        except (OSError, json.JSONDecodeError) as err:
            parser.error(f"--config {ns.config}: {err}")
        if not isinstance(values, dict):
            parser.error(f"--config {ns.config}: expected a JSON object of flag values, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(args_class)}
        if "architecture" in known and isinstance(values, dict):
            values.pop(ARCHITECTURE_CONFIG, None)  # what a saved run resolved, not a flag
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"{ns.config}: unknown keys {unknown}")
    values.update({k: v for k, v in vars(ns).items() if v is not None and k != "config"})
    try:
        return args_class(**values)
    except (TypeError, ValueError) as err:
        parser.error(str(err))


def run_script(main) -> None:
    """Run a training or export script's `main()` so that it never ends in a traceback: a failure is one line on
    stderr and exit code 1 (GENVL_DEBUG=1 shows the traceback), Ctrl-C exit code 130; argparse's usage errors
    keep their exit code 2."""
    from ..io.folders import first_line, is_panic, native_failure

    script = Path(sys.argv[0]).name
    try:
        main()
    except KeyboardInterrupt:
        print(f"{script}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001  (one line, not a traceback; GENVL_DEBUG=1 shows it)
        if os.environ.get("GENVL_DEBUG", "0") not in ("", "0"):
            raise
        known = isinstance(err, (OSError, ValueError, RuntimeError))  # OSError covers missing files
        prefix = "" if known else f"unexpected {type(err).__name__}: "
        hint = "" if known else " (GENVL_DEBUG=1 shows the traceback)"
        print(f"{script}: error: {prefix}{first_line(err)}{hint}", file=sys.stderr)
        sys.exit(1)
    except BaseException as err:  # a Rust library's panic (see genvl.io.folders.is_panic)
        if os.environ.get("GENVL_DEBUG", "0") not in ("", "0") or not is_panic(err):
            raise
        print(f"{script}: error: {native_failure(err)} (GENVL_DEBUG=1 shows the traceback)", file=sys.stderr)
        sys.exit(1)


def save_run_config(args, output_dir, architecture=None) -> None:
    """Write `args` into `output_dir/train_config.json`; for a script with an `--architecture`, with the content
    of `architecture` (a `JsonArchitecture`, as resolved: None until the script has built its model) beside the
    path, so that the run says what it built without the file it was read from."""
    config = dataclasses.asdict(args)
    if "architecture" in config:
        config[ARCHITECTURE_CONFIG] = None if architecture is None else architecture.to_dict()
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / RUN_CONFIG).write_text(json.dumps(config, indent=2))


# the flags that name what a run reads (a model, data, a tower to lock): its --output_dir may not be one of them
INPUT_SUFFIXES = ("_name_or_path", "_data_dir", "_tower", "_from_judge")


def check_output_dir(args) -> None:
    """Refuse, before anything is written, an --output_dir that exists and is not a training run's folder (it
    holds files but no run config or checkpoint: genvl never writes over what it did not write), or that is, or
    lies inside, a folder the run reads (`INPUT_SUFFIXES`: the model it starts from, its data)."""
    output = Path(args.output_dir)
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        if not field.name.endswith(INPUT_SUFFIXES) or not isinstance(value, str) or not os.path.isdir(value):
            continue
        if output.resolve().is_relative_to(Path(value).resolve()):
            raise ValueError(f"--output_dir {output}: would write into --{field.name} {value}, which the run reads")
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output_dir {output}: exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not is_run_folder(output):
        raise FileExistsError(
            f"--output_dir {output}: holds files and is not a training run's folder (no {RUN_CONFIG} or "
            "checkpoint); choose a new or empty folder"
        )


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` is a training run's: it holds the run config or a complete checkpoint."""
    from .checkpoints import complete_checkpoints

    return (folder / RUN_CONFIG).is_file() or bool(complete_checkpoints(folder))


@contextmanager
def saving_run(output_dir, losses: list):
    """Wrap what a finished run saves in `output_dir`: its weights files are opened to whoever the umask lets read
    its other files, and its losses are written beside them."""
    with weights_readable_as_umask(output_dir):
        yield
    (Path(output_dir) / "train_losses.json").write_text(json.dumps(losses))


def save_architecture(accelerator, args, architecture) -> None:
    """Record in the run config the architecture the script resolved and builds its model from (main process)."""
    if accelerator.is_main_process:
        save_run_config(args, args.output_dir, architecture)


def read_run_config(run_dir) -> dict:
    """The `train_config.json` a training run saved in `run_dir`."""
    path = Path(run_dir) / RUN_CONFIG
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def run_architecture(config: dict, architecture_class):
    """The architecture a run built its model from: the content its run config holds or, for a run saved before
    runs kept it (or one that started from a saved model), the file its `architecture` path names."""
    content = config.get(ARCHITECTURE_CONFIG)
    if content is not None:
        return architecture_class.from_dict(content, source=f"{RUN_CONFIG} {ARCHITECTURE_CONFIG}")
    return architecture_class.from_json(config["architecture"])


@dataclasses.dataclass
class TrainArgs:
    """Flags every training script shares (the diffusers examples' names)."""

    train_data_dir: str = "data/train"
    output_dir: str = "runs/model"
    image_column: str = "file_name"
    caption_column: str = "text"
    resolution: int = 64
    train_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    adam_weight_decay: float = 0.01
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 500
    max_train_steps: int = 6000
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None
    use_ema: bool = True
    ema_decay: float = 0.999
    seed: int = 0
    logging_steps: int = 50
    report_to: str | None = None
    enable_xformers_memory_efficient_attention: bool = False
    gradient_checkpointing: bool = False
    streaming: bool = False  # stream the shards of --train_data_dir instead of decoding them all into memory

    def __post_init__(self):
        check_numbers(self)  # the subclasses' fields too: a --config file can hold any JSON value
        if self.streaming:
            from ..io.shards import is_shard_spec

            if not is_shard_spec(self.train_data_dir):
                raise ValueError(f"--streaming reads tar shards; --train_data_dir {self.train_data_dir} names none")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"--mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"--lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler!r}")
        check_at_least(
            self,
            1,
            "train_batch_size",
            "gradient_accumulation_steps",
            "max_train_steps",
            "resolution",
            "checkpointing_steps",
            "logging_steps",
            "checkpoints_total_limit",
        )
        check_at_least(self, 0, "lr_warmup_steps", "adam_weight_decay", "seed")
        check_above(self, 0, "max_grad_norm")
        check_at_least(self, 0, "learning_rate")  # 0 is allowed: it trains nothing, e.g. to check a starting point
        check_fraction(self, "ema_decay")
        if self.seed >= 2**32:  # set_seed seeds numpy, whose seeds are 32 bits
            raise ValueError(f"--seed must be < 2**32, got {self.seed}")


@dataclasses.dataclass
class JudgeEncoderArgs:
    """Flags of the captioner-architecture scripts for the encoder: with `encoder_from_judge` (a judge folder such
    as genvl-judge-small) the encoder becomes a grid encoder holding the judge's body, and with `picture_positions`
    a grid encoder reads its cell positions within the picture (`genvl.training.pretrained.prepare_encoder`)."""

    encoder_from_judge: str | None = None
    freeze_encoder: bool = False  # train the decoder (and a grid encoder's cell embeddings) only
    picture_positions: bool = False  # a grid encoder's cell positions read within the picture (see grid_encoder)


@dataclasses.dataclass
class LoraTrainArgs(TrainArgs):
    """TrainArgs plus a model to start from and, with `adapter` (or `rank`), a PEFT adapter to train on it
    instead of every weight."""

    pretrained_model_name_or_path: str | None = None
    adapter: str | None = None  # "lora" or "ia3"; --rank alone means lora
    rank: int | None = None  # LoRA rank (default 8)
    lora_alpha: float | None = None  # LoRA scale numerator (default: the rank)
    lora_target_modules: str | None = None  # comma-separated module names (default: genvl.lora.LORA_TARGETS)

    def __post_init__(self):
        super().__post_init__()
        if self.adapter is None and self.rank is not None:
            self.adapter = "lora"
        if self.adapter not in (None, "lora", "ia3"):
            raise ValueError(f"--adapter must be lora or ia3, got {self.adapter!r}")
        if self.adapter != "lora" and (self.rank, self.lora_alpha, self.lora_target_modules) != (None,) * 3:
            raise ValueError(
                f"--rank, --lora_alpha and --lora_target_modules are LoRA settings; --adapter is {self.adapter}"
            )
        check_at_least(self, 1, "rank")
        if self.adapter is not None and not self.pretrained_model_name_or_path:
            raise ValueError(f"--adapter {self.adapter} needs --pretrained_model_name_or_path, the model to adapt")


def check_numbers(args) -> None:
    """Raise unless every bool, int, float and str field of dataclass `args` holds a value of its type (an int
    will do for a float), every float a finite one."""
    hints = typing.get_type_hints(type(args))
    for field in dataclasses.fields(args):
        value, kinds = getattr(args, field.name), typing.get_args(hints[field.name]) or (hints[field.name],)
        if value is None and type(None) in kinds:
            continue
        kind = kinds[0]
        if kind is str:  # a path, a name or a list of kinds: a --config file's 5 or [..] is none
            if not isinstance(value, str):
                raise ValueError(f"--{field.name} must be a string, got {json.dumps(value)[:60]}")
            continue
        if kind not in (bool, int, float):
            continue
        if kind is bool:
            fits = isinstance(value, bool)
        else:  # True is an int to Python, not a number to a flag
            fits = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
        if not fits:
            raise ValueError(f"--{field.name} must be {'a number' if kind is float else kind.__name__}, got {value!r}")
        if kind is float and not math.isfinite(value):
            raise ValueError(f"--{field.name} must be a finite number, got {value}")


def check_at_least(args, low, *names: str) -> None:
    """Raise unless each field `names` of `args` that is set is >= `low`."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < low:
            raise ValueError(f"--{name} must be >= {low}, got {value}")


def check_above(args, low, *names: str) -> None:
    """Raise unless each field `names` of `args` that is set is > `low`."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= low:
            raise ValueError(f"--{name} must be > {low}, got {value}")


def check_fraction(args, *names: str) -> None:
    """Raise unless each field `names` of `args` that is set lies in [0, 1]."""
    for name in names:
        value = getattr(args, name)
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"--{name} must be between 0 and 1, got {value}")
