"""Train a ViT-GPT2 captioner on an imagefolder (images + metadata.jsonl) with accelerate.

    accelerate launch train/train_captioner.py --config configs/train_captioner.json \
        --train_data_dir data/train --output_dir runs/captioner

Ends with `CaptionPipeline.save_pretrained(output_dir)`; checkpoints go to `output_dir/checkpoint-<step>`.
"""

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image
from transformers import AutoTokenizer, VisionEncoderDecoderModel

from genvl.models.captioner import CaptionerArchitecture, build_captioner, build_image_processor, train_tokenizer
from genvl.training import (
    checkpoint_step, epoch_order, parse_args, resolve_resume, save_checkpoint, save_run_config,
)
from genvl.world.dataset import read_metadata


@dataclass
class TrainCaptionerArgs:
    """Train a ViT-GPT2 captioner."""

    train_data_dir: str = "data/train"
    output_dir: str = "runs/captioner"
    architecture: str = "configs/captioner_small.json"
    pretrained_model_name_or_path: str | None = None
    image_column: str = "file_name"
    caption_column: str = "text"
    resolution: int = 64
    vocab_size: int = 1024
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

    def __post_init__(self):
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"--mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        for name in ("train_batch_size", "gradient_accumulation_steps", "max_train_steps", "resolution"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")


def load_images(data_dir: Path, records, image_column: str, resolution: int) -> torch.Tensor:
    """All training images as one uint8 tensor (N, 3, R, R): the world's datasets fit in memory."""
    images = np.empty((len(records), resolution, resolution, 3), dtype=np.uint8)
    for i, record in enumerate(records):
        with Image.open(data_dir / record[image_column]) as image:
            image = image.convert("RGB")
            if image.size != (resolution, resolution):
                image = image.resize((resolution, resolution), Image.Resampling.BILINEAR)
            images[i] = np.asarray(image)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def tokenize_captions(tokenizer, captions, max_length: int):
    """(decoder_input_ids, labels): BOS + tokens, tokens + EOS, padded with EOS / -100."""
    eos = tokenizer.eos_token_id
    inputs = torch.full((len(captions), max_length), eos, dtype=torch.long)
    labels = torch.full((len(captions), max_length), -100, dtype=torch.long)
    for i, caption in enumerate(captions):
        ids = tokenizer(caption).input_ids[: max_length - 1]
        inputs[i, 1 : len(ids) + 1] = torch.tensor(ids)
        labels[i, : len(ids) + 1] = torch.tensor(ids + [eos])
    return inputs, labels


def caption_loss(model, pixel_values, decoder_input_ids, labels):
    mask = (labels != -100).long()
    # keep BOS visible: the attention mask covers BOS + tokens, i.e. the label positions
    logits = model(pixel_values=pixel_values, decoder_input_ids=decoder_input_ids, decoder_attention_mask=mask).logits
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)


def main(argv=None):
    args = parse_args(TrainCaptionerArgs, argv)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.report_to,
    )
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        save_run_config(args, output_dir)
    if args.report_to:
        accelerator.init_trackers("train_captioner", config=dataclasses.asdict(args))

    data_dir = Path(args.train_data_dir)
    records = read_metadata(data_dir, args.caption_column, args.image_column)
    captions = [r[args.caption_column] for r in records]

    # 1. tokenizer and model: fine-tune a saved captioner, or build a fresh one with its own tokenizer
    if args.pretrained_model_name_or_path:
        model = VisionEncoderDecoderModel.from_pretrained(args.pretrained_model_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(args.pretrained_model_name_or_path)
        arch = CaptionerArchitecture(image_size=model.config.encoder.image_size)
    else:
        arch = CaptionerArchitecture.from_json(args.architecture)
        arch.image_size = args.resolution
        tokenizer_dir = output_dir / "tokenizer"
        if (tokenizer_dir / "tokenizer.json").exists():  # resuming: reuse the tokenizer of this run
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        else:
            texts = [c for r in records for c in r.get("captions", [r[args.caption_column]])]
            tokenizer = train_tokenizer(texts, args.vocab_size)
            if accelerator.is_main_process:
                tokenizer.save_pretrained(tokenizer_dir)
        model = build_captioner(arch, tokenizer)
    max_length = model.config.decoder.n_positions

    images = load_images(data_dir, records, args.image_column, args.resolution)
    decoder_input_ids, labels = tokenize_captions(tokenizer, captions, max_length)
    longest = int((labels != -100).sum(1).max())
    decoder_input_ids, labels = decoder_input_ids[:, :longest], labels[:, :longest]

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    scheduler = get_scheduler(
        args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    ema = EMAModel(accelerator.unwrap_model(model).parameters(), decay=args.ema_decay) if args.use_ema else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    # 2. resume
    global_step = 0
    resume = resolve_resume(output_dir, args.resume_from_checkpoint)
    if resume is not None:
        accelerator.load_state(str(resume))
        global_step = checkpoint_step(resume)
        accelerator.print(f"resumed from {resume} at step {global_step}")

    # 3. train: micro-batches are read in a per-epoch order fixed by the seed, so a resumed run sees the
    # same samples as an uninterrupted one
    per_step = args.train_batch_size * accelerator.num_processes
    batches_per_epoch = len(records) // per_step
    if batches_per_epoch < 1:
        raise ValueError(f"{len(records)} samples cannot fill one batch of {per_step}")
    micro_step = global_step * args.gradient_accumulation_steps
    model.train()
    started, running_loss, losses = time.time(), 0.0, []
    while global_step < args.max_train_steps:
        epoch, index = divmod(micro_step, batches_per_epoch)
        order = epoch_order(len(records), args.seed, epoch)
        start = index * per_step + accelerator.process_index * args.train_batch_size
        batch = order[start : start + args.train_batch_size]
        pixel_values = images[batch].float().div_(127.5).sub_(1.0).to(accelerator.device)
        with accelerator.accumulate(model):
            loss = caption_loss(model, pixel_values, decoder_input_ids[batch].to(accelerator.device),
                                labels[batch].to(accelerator.device))
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        micro_step += 1
        running_loss += accelerator.gather(loss.detach()).mean().item() / args.gradient_accumulation_steps
        if not accelerator.sync_gradients:
            continue
        if ema is not None:
            ema.step(accelerator.unwrap_model(model).parameters())
        global_step += 1
        losses.append(running_loss)
        if global_step % args.logging_steps == 0 or global_step == args.max_train_steps:
            rate = global_step / max(1e-9, time.time() - started)
            recent = float(np.mean(losses[-args.logging_steps:]))
            accelerator.print(f"step {global_step}/{args.max_train_steps} loss {recent:.4f} "
                              f"lr {scheduler.get_last_lr()[0]:.2e} ({rate:.2f} steps/s)", flush=True)
            accelerator.log({"loss": recent, "lr": scheduler.get_last_lr()[0]}, step=global_step)
        running_loss = 0.0
        if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
            save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)

    # 4. save the final pipeline (EMA weights when EMA is on)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        from genvl.pipelines.caption import CaptionPipeline

        final = accelerator.unwrap_model(model)
        if ema is not None:
            ema.copy_to(final.parameters())
        pipeline = CaptionPipeline(model=final, tokenizer=tokenizer, image_processor=build_image_processor(arch))
        pipeline.save_pretrained(output_dir)
        (output_dir / "train_losses.json").write_text(json.dumps(losses))
    accelerator.end_training()
    return losses


if __name__ == "__main__":
    main()
