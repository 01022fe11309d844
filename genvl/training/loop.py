"""The training loop every script shares: the accelerator, AdamW with an LR schedule, clipping, EMA, logging,
crash-safe checkpoints and resuming from them. A script gives it a model and a `compute_loss`."""

import dataclasses
import functools
import time

from .args import TrainArgs, check_output_dir, save_run_config
from .checkpoints import (
    LEGACY_EMA_STATE,
    check_checkpoint_names,
    load_accelerator_state,
    load_ema_state,
    read_marker,
    resolve_resume,
    save_checkpoint,
    warn,
)
from .data import epoch_order


def make_accelerator(args: TrainArgs, project: str):
    """An Accelerator for `args`, the seed set, the run config saved and trackers started."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    check_output_dir(args)  # in every process, before any writes
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
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


@dataclasses.dataclass
class TrainingRun:
    """What the loop updates: the prepared model, optimiser and LR schedule, the trained parameters (the model's
    current ones, which FSDP may have replaced) and their EMA, and the progress: optimiser steps done and the loss
    of each (from step 1, also when resumed: the checkpoints keep them)."""

    model: object
    optimizer: object
    scheduler: object
    parameters: list
    ema: object | None
    step: int = 0
    losses: list = dataclasses.field(default_factory=list)
    data: object = None  # where the micro-batches come from (`IndexBatches`, or a stream)


class IndexBatches:
    """Micro-batches of indices into `num_items` samples held in memory: each optimiser step takes the next global
    batch of a per-epoch order fixed by the seed, and each process its slice of it."""

    def __init__(self, num_items: int, seed: int, accelerator):
        self.num_items, self.seed = num_items, seed
        self.process, self.processes = accelerator.process_index, accelerator.num_processes

    def batches_per_epoch(self, batch_size: int) -> int:
        per_step = batch_size * self.processes
        if self.num_items // per_step < 1:
            raise ValueError(f"{self.num_items} samples cannot fill one batch of {per_step}")
        return self.num_items // per_step

    def batch(self, micro_step: int, batch_size: int):
        epoch, index = divmod(micro_step, self.batches_per_epoch(batch_size))
        order = epoch_order(self.num_items, self.seed, epoch)
        start = (index * self.processes + self.process) * batch_size
        return order[start : start + batch_size]

    def state(self):
        return None  # the step alone says where the run is


def train_loop(accelerator, args: TrainArgs, model, parameters, data, compute_loss) -> list[float]:
    """Optimise `parameters` of `model` for `args.max_train_steps` steps; returns the per-step losses (from step 1,
    also when resumed: they are kept in the checkpoints).

    `data` is the number of samples held in memory, or a stream of them (`genvl.training.stream.ShardStream`).
    `compute_loss(model, batch, step)` gets the prepared (possibly wrapped) model, one process's micro-batch (the
    indices of in-memory samples, drawn in a per-epoch order fixed by the seed; or the stream's next samples) and
    the optimiser step, and returns the loss. Either way a resumed run sees the same samples as an uninterrupted
    one: the stream's place is saved with each checkpoint. Handles AdamW, the LR schedule, clipping,
    EMA (its weights are copied into `parameters` at the end), logging, crash-safe checkpoints,
    `--resume_from_checkpoint`, and the memory switches `--enable_xformers_memory_efficient_attention` and
    `--gradient_checkpointing`.
    """
    # 1. the memory switches, then AdamW, the LR schedule and the EMA, prepared by accelerate
    run = prepare_run(accelerator, args, model, parameters)
    run.data = IndexBatches(data, args.seed, accelerator) if isinstance(data, int) else data
    # 2. the state of the checkpoint to resume from, if there is one
    resume_run(accelerator, args, run)
    # 3. what can be checked before the first step
    check_plan(accelerator, args, run)
    # 4. the steps, logged and checkpointed
    run_steps(accelerator, args, run, compute_loss)
    accelerator.wait_for_everyone()
    if run.ema is not None:
        run.ema.copy_to(run.parameters)
    return run.losses


def prepare_run(accelerator, args: TrainArgs, model, parameters) -> TrainingRun:
    """Apply `args`' memory switches to `model`, and give AdamW, the LR schedule and (with `--use_ema`) an EMA of
    `parameters`, prepared by accelerate, as a run at step 0."""
    import torch
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from ..attention import enable_gradient_checkpointing, set_attention_backend

    if args.enable_xformers_memory_efficient_attention:
        set_attention_backend(model, "xformers")
    if args.gradient_checkpointing and not enable_gradient_checkpointing(model):
        raise ValueError("--gradient_checkpointing: none of the models trained here supports it")
    parameters = list(parameters)
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
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
    return TrainingRun(model, optimizer, scheduler, parameters, ema)


def resume_run(accelerator, args: TrainArgs, run: TrainingRun) -> None:
    """With `--resume_from_checkpoint`, load the checkpoint it resolves to into `run` (accelerate's state, the
    EMA, the step and the losses so far)."""
    resume = resolve_resume(
        args.output_dir, args.resume_from_checkpoint, log=functools.partial(warn, accelerator=accelerator)
    )
    if resume is not None:
        if (resume / LEGACY_EMA_STATE).is_file():
            raise ValueError(
                f"{resume}: its EMA was saved by an older genvl as a pickle, which resuming would "
                f"have to unpickle; export its weights (genvl/recipes/export_*.py) and start a run from them"
            )
        load_accelerator_state(accelerator, resume)
        if run.ema is not None:  # loaded onto the CPU; its update mixes it with the parameters
            load_ema_state(run.ema, resume)
            run.ema.to(accelerator.device)
        marker = read_marker(resume)
        run.step, run.losses = marker["step"], marker.get("losses", [])  # older checkpoints hold no losses
        if run.data.state() is not None:
            places = marker.get("data")
            if not isinstance(places, list) or len(places) != accelerator.num_processes:
                raise ValueError(
                    f"{resume}: holds no place in the data stream for {accelerator.num_processes} processes; "
                    "resume a streaming run with the number of processes it was saved with"
                )
            run.data.restore(places[accelerator.process_index])
        accelerator.print(f"resumed from {resume} at step {run.step}")
    elif args.resume_from_checkpoint:
        accelerator.print(f"no complete checkpoint in {args.output_dir}: starting from step 0")


def check_plan(accelerator, args: TrainArgs, run: TrainingRun) -> None:
    """Raise, before any work, if a checkpoint the run will save would replace a folder genvl did not complete or
    if the samples held in memory cannot fill one global batch."""
    step = run.step
    saved = [
        *range(
            step + args.checkpointing_steps - step % args.checkpointing_steps,
            args.max_train_steps,
            args.checkpointing_steps,
        ),
        args.max_train_steps,
    ]
    check_checkpoint_names(args.output_dir, saved)
    if isinstance(run.data, IndexBatches):
        run.data.batches_per_epoch(args.train_batch_size)


class StepLosses:
    """The losses of the steps since the last report, kept on the device until they are logged or saved: reading
    each one at once would make the host wait for the device every step."""

    def __init__(self, run: TrainingRun):
        self.run, self.pending = run, []
        self.started, self.first_step = time.time(), run.step

    def add(self, loss) -> None:
        self.pending.append(loss)

    def flush(self) -> None:
        """Move the pending losses into `run.losses`, as floats."""
        import torch

        if self.pending:
            self.run.losses.extend(torch.stack(self.pending).float().tolist())
            self.pending.clear()

    def steps_per_second(self) -> float:
        return (self.run.step - self.first_step) / max(1e-9, time.time() - self.started)


def run_steps(accelerator, args: TrainArgs, run: TrainingRun, compute_loss) -> None:
    """Train `run` from its step to `args.max_train_steps`: each optimiser step's micro-batches in order,
    gradients clipped when they are synchronised, then the EMA, the log and the checkpoints."""
    micro_step = run.step * args.gradient_accumulation_steps
    run.model.train()
    losses, running_loss = StepLosses(run), 0.0
    while run.step < args.max_train_steps:
        batch = run.data.batch(micro_step, args.train_batch_size)
        with accelerator.accumulate(run.model):
            loss = compute_loss(run.model, batch, run.step)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(run.parameters, args.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad()
        micro_step += 1
        running_loss = running_loss + accelerator.gather(loss.detach()).mean() / args.gradient_accumulation_steps
        if not accelerator.sync_gradients:
            continue
        if run.ema is not None:
            run.ema.step(run.parameters)
        run.step += 1
        losses.add(running_loss)
        running_loss = 0.0
        log_and_checkpoint(accelerator, args, run, losses)


def log_and_checkpoint(accelerator, args: TrainArgs, run: TrainingRun, losses: StepLosses) -> None:
    """After an optimiser step: every `--logging_steps` steps print and log the recent loss, every
    `--checkpointing_steps` save a checkpoint; both after the last step too."""
    import numpy as np

    last = run.step == args.max_train_steps
    if run.step % args.logging_steps == 0 or last:
        losses.flush()
        recent = float(np.mean(run.losses[-args.logging_steps :]))
        accelerator.print(
            f"step {run.step}/{args.max_train_steps} loss {recent:.4f} "
            f"lr {run.scheduler.get_last_lr()[0]:.2e} ({losses.steps_per_second():.2f} steps/s)",
            flush=True,
        )
        accelerator.log({"loss": recent, "lr": run.scheduler.get_last_lr()[0]}, step=run.step)
    if run.step % args.checkpointing_steps == 0 or last:
        # the losses so far travel with the checkpoint, so a resumed run reports its whole history; a stream's
        # place too, every process's
        losses.flush()
        extra = {"losses": run.losses}
        if run.data.state() is not None:
            from accelerate.utils import gather_object

            extra["data"] = gather_object([run.data.state()])
        save_checkpoint(accelerator, args.output_dir, run.step, args.checkpoints_total_limit, extra=extra, ema=run.ema)


def distillation_loss(
    student, teacher, pixel_values, decoder_input_ids, labels, tokens, alpha: float, temperature: float
):
    """(1 - alpha) x the student's `caption_loss` + alpha x the KL divergence from the teacher's next-token
    distribution to the student's, both softened by `temperature` and scaled by its square (Hinton et al.), at
    the label positions; summed and divided by `tokens`, as `caption_loss` is. The two share a vocabulary."""
    import torch
    import torch.nn.functional as F

    mask = (labels != -100).long()
    logits = student(pixel_values=pixel_values, decoder_input_ids=decoder_input_ids, decoder_attention_mask=mask).logits
    with torch.no_grad():
        target = teacher(pixel_values=pixel_values, decoder_input_ids=decoder_input_ids, decoder_attention_mask=mask)
    hard = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    soft_student = (logits.float() / temperature).log_softmax(-1)
    soft_teacher = (target.logits.float() / temperature).log_softmax(-1)
    divergence = (soft_teacher.exp() * (soft_teacher - soft_student)).sum(-1)
    soft = (divergence * mask).sum() * temperature**2
    return ((1 - alpha) * hard + alpha * soft) / tokens


def caption_loss(model, pixel_values, decoder_input_ids, labels, tokens=None, attention_mask=None):
    """Token cross-entropy, summed and divided by `tokens` (default: this batch's label tokens, i.e. the mean).
    `attention_mask` (default: the label positions, which for a caption are BOS + its tokens) is what the decoder
    attends to."""
    import torch.nn.functional as F

    if attention_mask is None:
        attention_mask = (labels != -100).long()
    logits = model(
        pixel_values=pixel_values, decoder_input_ids=decoder_input_ids, decoder_attention_mask=attention_mask
    ).logits
    total = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    return total / ((labels != -100).sum() if tokens is None else tokens)
