"""Pieces shared by the training scripts in `train/`: typed arguments, the loop, data reading and order (the
checkpoints are in `genvl.checkpoints`)."""

import argparse
import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import typing
from pathlib import Path

from .checkpoints import (  # noqa: F401  (also imported from here by the training scripts and tests)
    COMPLETE_MARKER, EMA_WEIGHTS, LEGACY_EMA_STATE, check_checkpoint_names, checkpoint_damage, checkpoint_step,
    complete_checkpoints,
    copy_ema_weights, load_accelerator_state, load_ema_state, read_ema_state, read_marker, resolve_resume,
    save_checkpoint, save_ema_state, warn,
)

# the schedules of diffusers' get_scheduler that need nothing but the warmup and total steps (piecewise_constant
# needs step rules)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


def parse_args(args_class, argv=None):
    """Build an argparse parser from a dataclass, with `--config FILE` giving defaults (unknown keys rejected)."""
    parser = argparse.ArgumentParser(description=args_class.__doc__)
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
        known = {f.name for f in dataclasses.fields(args_class)}
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
    from .io.folders import first_line

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


def save_run_config(args, output_dir):
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "train_config.json").write_text(json.dumps(dataclasses.asdict(args), indent=2))


def epoch_order(num_items: int, seed: int, epoch: int):
    """The sample order of one epoch: a permutation that depends only on (seed, epoch), so resuming is exact."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_items, generator=generator)


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

    def __post_init__(self):
        check_numbers(self)  # the subclasses' fields too: a --config file can hold any JSON value
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"--mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"--lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler!r}")
        check_at_least(self, 1, "train_batch_size", "gradient_accumulation_steps", "max_train_steps", "resolution",
                       "checkpointing_steps", "logging_steps", "checkpoints_total_limit")
        check_at_least(self, 0, "lr_warmup_steps", "adam_weight_decay", "seed")
        check_above(self, 0, "max_grad_norm")
        check_at_least(self, 0, "learning_rate")  # 0 is allowed: it trains nothing, e.g. to check a starting point
        check_fraction(self, "ema_decay")
        if self.seed >= 2**32:  # set_seed seeds numpy, whose seeds are 32 bits
            raise ValueError(f"--seed must be < 2**32, got {self.seed}")


def check_numbers(args) -> None:
    """Raise unless every bool, int and float field of dataclass `args` holds a value of its type (an int will
    do for a float), every float a finite one."""
    hints = typing.get_type_hints(type(args))
    for field in dataclasses.fields(args):
        value, kinds = getattr(args, field.name), typing.get_args(hints[field.name]) or (hints[field.name],)
        if value is None and type(None) in kinds:
            continue
        kind = kinds[0]
        if kind not in (bool, int, float):
            continue
        if kind is bool:
            fits = isinstance(value, bool)
        else:  # True is an int to Python, not a number to a flag
            fits = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
        if not fits:
            raise ValueError(f"--{field.name} must be {'a number' if kind is float else kind.__name__}, "
                             f"got {value!r}")
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
            raise ValueError(f"--rank, --lora_alpha and --lora_target_modules are LoRA settings; --adapter is "
                             f"{self.adapter}")
        check_at_least(self, 1, "rank")
        if self.adapter is not None and not self.pretrained_model_name_or_path:
            raise ValueError(f"--adapter {self.adapter} needs --pretrained_model_name_or_path, the model to adapt")


def add_training_adapter(accelerator, model, network: str, args: LoraTrainArgs) -> list:
    """With `args.adapter`, wrap `model`'s target layers with a fresh adapter; returns the parameters to train."""
    if args.adapter is not None:
        from .lora import add_adapter, adapter_config

        targets = args.lora_target_modules.split(",") if args.lora_target_modules else None
        add_adapter(model, adapter_config(args.adapter, network, args.rank, args.lora_alpha, targets))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        accelerator.print(f"{args.adapter} adapter on the {network}: {trainable:,} trainable parameters "
                          f"({trainable / sum(p.numel() for p in model.parameters()):.2%})")
    return [p for p in model.parameters() if p.requires_grad]


def pretrained_part(path, subfolder: str) -> Path:
    """`path/subfolder` when `path` is a pipeline or run folder holding that part, else `path` itself."""
    path = Path(path)
    return path / subfolder if (path / subfolder).is_dir() else path


def read_training_records(source, caption_column: str, image_column: str, log=None) -> tuple[list, list]:
    """(records, skipped) of an imagefolder or of WebDataset shards (`data/train-{000..009}.tar`).

    Every sample is checked as it is read: one whose image cannot be decoded or whose caption is missing or
    empty is reported through `log`, listed in `skipped` as {"sample", "reason"} and left out.
    """
    from .io.images import load_image
    from .io.shards import is_shard_spec, iter_samples, sample_record, shard_paths
    from .io.imagefolder import read_metadata

    skipped = []

    def skip(where, reason):
        skipped.append({"sample": where, "reason": reason})
        if log is not None:
            log(f"skipping {where}: {reason}")

    def check(record, where):
        caption = record.get(caption_column)
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"caption column {caption_column!r} is empty")
        image = record["image_bytes"] if "image_bytes" in record else Path(source) / record[image_column]
        try:  # genvl's decoder, which refuses decompression bombs from Pillow's limit on (Pillow only warns)
            load_image(image, name="the image")
        except (OSError, ValueError) as err:
            raise ValueError(str(err)) from None

    records = []
    if is_shard_spec(source):
        candidates = ((f"{s['__url__']}#{s['__key__']}", s) for s in iter_samples(shard_paths(source), skip))
    else:
        candidates = ((f"{Path(source) / r[image_column]}", r) for r in read_metadata(source, caption_column,
                                                                                      image_column))
    for where, item in candidates:
        try:
            record = sample_record(item, image_column, caption_column) if "__key__" in item else item
            check(record, where)
        except ValueError as err:
            skip(where, str(err))
            continue
        records.append(record)
    if not records:
        raise ValueError(f"{source}: no usable samples ({len(skipped)} skipped)")
    return records, skipped


def read_training_data(accelerator, args: "TrainArgs") -> list[dict]:
    """The records of `--train_data_dir` (imagefolder or shards) with bad samples logged on stderr by the main
    process, counted, and listed in `output_dir/data_summary.json`."""
    check_data_source(args.train_data_dir, "--train_data_dir")
    log = functools.partial(warn, accelerator=accelerator)
    records, skipped = read_training_records(args.train_data_dir, args.caption_column, args.image_column, log)
    accelerator.print(f"{len(records)} samples read from {args.train_data_dir}, {len(skipped)} bad ones skipped")
    if accelerator.is_main_process:
        summary = {"source": str(args.train_data_dir), "samples": len(records), "skipped": len(skipped),
                   "skipped_samples": skipped}
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "data_summary.json").write_text(json.dumps(summary, indent=2))
    return records


def check_data_source(source, flag: str) -> None:
    """Raise, naming `flag`, unless `source` is a folder or names shards that all exist: before any work is done
    rather than once the data is read."""
    from .io.shards import is_shard_spec, shard_paths

    if is_shard_spec(source):
        shard_paths(source)  # names the first missing shard
    elif not Path(source).exists():
        raise FileNotFoundError(f"{flag} {source}: no such folder")
    elif not Path(source).is_dir():
        raise NotADirectoryError(f"{flag} {source}: not a folder; expected an imagefolder (a folder with a "
                                 f"metadata.jsonl) or tar shards such as data/train-{{000..009}}.tar")


def make_accelerator(args: TrainArgs, project: str):
    """An Accelerator for `args`, the seed set, the run config saved and trackers started."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    accelerator = Accelerator(
        mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.report_to,
        # some weights take no part in the loss (the ViT pooler, the prior's embedding statistics, frozen
        # layers around an adapter): DDP must not wait for their gradients
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(args.seed)
    if accelerator.is_main_process:
        save_run_config(args, args.output_dir)
    if args.report_to:
        accelerator.init_trackers(project, config=dataclasses.asdict(args))
    return accelerator


def train_loop(accelerator, args: TrainArgs, model, parameters, num_items: int, compute_loss) -> list[float]:
    """Optimise `parameters` of `model` for `args.max_train_steps` steps; returns the per-step losses (from step 1,
    also when resumed: they are kept in the checkpoints).

    `compute_loss(model, batch, step)` gets the prepared (possibly wrapped) model, the indices of one process's
    micro-batch (drawn in a per-epoch order fixed
    by the seed, so a resumed run sees the same samples as an uninterrupted one) and the optimiser step, and
    returns the loss. Handles AdamW, the LR schedule, clipping, EMA (its weights are copied into `parameters`
    at the end), logging, crash-safe checkpoints, `--resume_from_checkpoint`, and the memory switches
    `--enable_xformers_memory_efficient_attention` and `--gradient_checkpointing`.
    """
    import time

    import numpy as np
    import torch

    from .attention import enable_gradient_checkpointing, set_attention_backend

    if args.enable_xformers_memory_efficient_attention:
        set_attention_backend(model, "xformers")
    if args.gradient_checkpointing and not enable_gradient_checkpointing(model):
        raise ValueError("--gradient_checkpointing: none of the models trained here supports it")
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    parameters = list(parameters)
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    scheduler = get_scheduler(
        args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    names = {id(p): name for name, p in model.named_parameters()}
    trained = [names[id(p)] for p in parameters]
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    # FSDP replaces the parameters with sharded ones: clipping and EMA must follow the model's current ones
    current = dict(accelerator.unwrap_model(model).named_parameters())
    parameters = [current[name] for name in trained]
    # foreach: one fused update for all the weights instead of a few small kernels per tensor
    ema = EMAModel(parameters, decay=args.ema_decay, foreach=True) if args.use_ema else None

    global_step, losses = 0, []
    resume = resolve_resume(args.output_dir, args.resume_from_checkpoint,
                            log=functools.partial(warn, accelerator=accelerator))
    if resume is not None:
        if (resume / LEGACY_EMA_STATE).is_file():
            raise ValueError(f"{resume}: its EMA was saved by an older genvl as a pickle, which resuming would "
                             f"have to unpickle; export its weights (train/export_*.py) and start a run from them")
        load_accelerator_state(accelerator, resume)
        if ema is not None:  # loaded onto the CPU; its update mixes it with the parameters
            load_ema_state(ema, resume)
            ema.to(accelerator.device)
        marker = read_marker(resume)
        global_step, losses = marker["step"], marker.get("losses", [])  # older checkpoints hold no losses
        accelerator.print(f"resumed from {resume} at step {global_step}")
    elif args.resume_from_checkpoint:
        accelerator.print(f"no complete checkpoint in {args.output_dir}: starting from step 0")

    saved = [*range(global_step + args.checkpointing_steps - global_step % args.checkpointing_steps,
                    args.max_train_steps, args.checkpointing_steps), args.max_train_steps]
    check_checkpoint_names(args.output_dir, saved)  # before any work, not when the first one is saved
    per_step = args.train_batch_size * accelerator.num_processes
    batches_per_epoch = num_items // per_step
    if batches_per_epoch < 1:
        raise ValueError(f"{num_items} samples cannot fill one batch of {per_step}")
    micro_step = global_step * args.gradient_accumulation_steps
    model.train()
    # the step losses stay on the device until they are logged or saved: reading each one at once would make
    # the host wait for the device every step
    started, first_step, running_loss, pending = time.time(), global_step, 0.0, []

    def flush_losses():
        if pending:
            losses.extend(torch.stack(pending).float().tolist())
            pending.clear()

    while global_step < args.max_train_steps:
        epoch, index = divmod(micro_step, batches_per_epoch)
        order = epoch_order(num_items, args.seed, epoch)
        start = index * per_step + accelerator.process_index * args.train_batch_size
        batch = order[start : start + args.train_batch_size]
        with accelerator.accumulate(model):
            loss = compute_loss(model, batch, global_step)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(parameters, args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        micro_step += 1
        running_loss = running_loss + accelerator.gather(loss.detach()).mean() / args.gradient_accumulation_steps
        if not accelerator.sync_gradients:
            continue
        if ema is not None:
            ema.step(parameters)
        global_step += 1
        pending.append(running_loss)
        running_loss = 0.0
        if global_step % args.logging_steps == 0 or global_step == args.max_train_steps:
            flush_losses()
            rate = (global_step - first_step) / max(1e-9, time.time() - started)
            recent = float(np.mean(losses[-args.logging_steps:]))
            accelerator.print(f"step {global_step}/{args.max_train_steps} loss {recent:.4f} "
                              f"lr {scheduler.get_last_lr()[0]:.2e} ({rate:.2f} steps/s)", flush=True)
            accelerator.log({"loss": recent, "lr": scheduler.get_last_lr()[0]}, step=global_step)
        if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
            # the losses so far travel with the checkpoint, so a resumed run reports its whole history
            flush_losses()
            save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit,
                            extra={"losses": losses}, ema=ema)
    accelerator.wait_for_everyone()
    if ema is not None:
        ema.copy_to(parameters)
    return losses


def phrasing_table(records, caption_column: str):
    """(texts, index): the distinct phrasings of all records, and an (N, P) tensor of indices into `texts`
    giving each record's P phrasings (the caption column first; records with fewer repeat theirs)."""
    import torch

    phrasings = [r.get("captions") or [r[caption_column]] for r in records]
    count = max(len(p) for p in phrasings)
    texts, position = [], {}
    index = torch.empty(len(records), count, dtype=torch.long)
    for i, options in enumerate(phrasings):
        for j in range(count):
            text = options[j % len(options)]
            if text not in position:
                position[text] = len(texts)
                texts.append(text)
            index[i, j] = position[text]
    return texts, index


def pick_phrasings(index, batch, seed: int, step: int, process_index: int = 0, num_processes: int = 1):
    """One phrasing per sample of `batch`, drawn from (seed, step) so a resumed run draws the same. The draw
    covers the global batch and each process takes its rows, so the choice does not depend on the processes."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + step * 64)
    choice = torch.randint(0, index.shape[1], (len(batch) * num_processes,), generator=generator)
    return index[batch, choice[process_index * len(batch) : (process_index + 1) * len(batch)]]


def step_generator(seed: int, step: int):
    """The generator of a step's random draws (dropout, noise, timesteps), so a resumed run draws the same."""
    import torch

    return torch.Generator().manual_seed(seed * 7_919 + step * 64)


def gather_with_grad(x, accelerator):
    """Every process's `x` (the same shape on each), concatenated in process order, with gradients flowing
    back to the process each row came from: the sum over processes of the loss gradients for its rows."""
    if accelerator.num_processes == 1:
        return x
    return _gather_function().apply(x)


@functools.cache
def _gather_function():
    import torch
    import torch.distributed as dist

    class GatherWithGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
            parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, x.contiguous())
            return torch.cat(parts)

        @staticmethod
        def backward(ctx, grad):
            grad = grad.contiguous()
            dist.all_reduce(grad)  # a sum; gloo has no reduce-scatter
            return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]

    return GatherWithGrad


def process_rows(batch_size: int, accelerator) -> tuple[slice, int]:
    """This process's rows of the global batch, and the global batch size."""
    index = accelerator.process_index
    return slice(index * batch_size, (index + 1) * batch_size), batch_size * accelerator.num_processes


def add_training_noise(scheduler, x0, generator, rows: slice | None = None, total: int | None = None):
    """(noise, timesteps, noisy x0): one uniform timestep per sample, as diffusion models are trained. Given
    `rows` and `total`, the draws cover the global batch of `total` samples and this process keeps its rows, so
    every sample gets the same randomness however the batch is split over processes."""
    import torch

    rows, total = rows or slice(None), total or len(x0)
    noise = torch.randn((total, *x0.shape[1:]), generator=generator)[rows].to(x0.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (total,), generator=generator)[rows].to(x0.device)
    return noise, t, scheduler.add_noise(x0, noise, t)


def load_or_train_tokenizer(accelerator, output_dir, train):
    """This run's tokenizer: `output_dir/tokenizer` when resuming, else `train()`'s, saved there."""
    from .io.components import load_tokenizer

    tokenizer_dir = Path(output_dir) / "tokenizer"
    if (tokenizer_dir / "tokenizer.json").exists():
        return load_tokenizer(tokenizer_dir)
    tokenizer = train()
    if accelerator.is_main_process:
        # written aside and renamed into place: a run killed while saving it still resumes
        tmp = tokenizer_dir.with_name(".tokenizer.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(tokenizer_dir, ignore_errors=True)  # one without tokenizer.json: a save cut short
        tmp.rename(tokenizer_dir)
    return tokenizer


def cached_features(path, key: dict, compute) -> dict:
    """The tensors of `compute()` (a dict), kept in the safetensors file `path` with `key` in its metadata: a
    later run with the same key (a resumed one, say) loads them instead of computing them again."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path, stamp = Path(path), json.dumps(key, sort_keys=True)
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") == stamp:
                return load_file(str(path))
    tensors = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # several processes may write it at once
    save_file({name: value.contiguous() for name, value in tensors.items()}, str(tmp), metadata={"key": stamp})
    tmp.replace(path)
    return tensors


def frozen_text_states(text_dir, data_dir, records, caption_column: str, cache_dir=None, device=None):
    """(token states (N, L, H) in float16, masks (N, L)) of the text tower `load_decoder_text_encoder(text_dir)`
    reads, over the rows of `frozen_clip_features` (every distinct phrasing, then ""); kept, with `cache_dir`, in
    `cache_dir/text_states.safetensors`."""
    import torch

    from .models.clip import embed_texts, load_decoder_text_encoder

    text_encoder, tokenizer = load_decoder_text_encoder(text_dir)
    texts, _ = phrasing_table(records, caption_column)

    def compute():
        length = getattr(text_encoder.config, "text_config", text_encoder.config).max_position_embeddings
        text_encoder.eval().to(device or "cpu")
        _, states, masks = embed_texts(text_encoder, tokenizer, texts + [""], length, states_dtype=torch.float16)
        text_encoder.to("cpu")
        return {"states": states, "masks": masks}

    if cache_dir is None:
        features = compute()
    else:
        key = {"text_encoder": file_stamp(text_dir), "data": data_stamp(data_dir), "records": len(records),
               "texts": len(texts), "caption_column": caption_column}
        features = cached_features(Path(cache_dir) / "text_states.safetensors", key, compute)
    return features["states"], features["masks"]


def data_stamp(source) -> dict:
    """`file_stamp` of an imagefolder's metadata.jsonl, or of every shard a shard spec names."""
    from .io.shards import is_shard_spec, shard_paths

    if is_shard_spec(source):
        return {"shards": [file_stamp(path) for path in shard_paths(source)]}
    return file_stamp(Path(source) / "metadata.jsonl")


def file_stamp(path) -> dict:
    """Where a model or data folder is and when its files last changed, to key cached features on."""
    path = Path(path).resolve()
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return {"path": str(path), "mtime": max((p.stat().st_mtime for p in files), default=0.0)}


def frozen_clip_features(clip_dir, data_dir, records, image_column: str, caption_column: str, cache_dir=None,
                         device=None):
    """Features of a frozen CLIP for training the prior or the decoder, computed once (on `device`, the CPU by
    default, and, with `cache_dir`, kept in `cache_dir/clip_features.safetensors` for resumed runs).

    Returns (clip, image_embeds (N, E), phrasings (N, P) indices into the text rows, text_embeds, token states,
    masks); the text rows are the distinct phrasings followed by the empty prompt (the last row). The token
    states are kept in float16: at 3 phrasings per image they are the largest tensor of a run.
    """
    import torch

    from .io.imagefolder import load_images
    from .models.clip import embed_images, embed_texts, load_clip

    clip, tokenizer, image_processor = load_clip(clip_dir)
    clip.eval()
    texts, phrasings = phrasing_table(records, caption_column)

    def compute():
        images = load_images(data_dir, records, image_column, clip.config.vision_config.image_size)
        length = clip.config.text_config.max_position_embeddings
        clip.to(device or "cpu")
        text_embeds, states, masks = embed_texts(clip, tokenizer, texts + [""], length, states_dtype=torch.float16)
        image_embeds = embed_images(clip, image_processor, images)
        clip.to("cpu")  # the features come back on the CPU, and so does the model that made them
        return {"image_embeds": image_embeds, "text_embeds": text_embeds, "states": states, "masks": masks}

    if cache_dir is None:
        features = compute()
    else:
        key = {"clip": file_stamp(clip_dir), "data": data_stamp(data_dir),
               "records": len(records), "texts": len(texts), "image_column": image_column,
               "caption_column": caption_column}
        features = cached_features(Path(cache_dir) / "clip_features.safetensors", key, compute)
    return (clip, features["image_embeds"], phrasings, features["text_embeds"], features["states"],
            features["masks"])
