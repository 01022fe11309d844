"""Train a ViT-GPT2 captioner on an imagefolder (images + metadata.jsonl) with accelerate.

    accelerate launch -m genvl.recipes.train_captioner --config configs/train_captioner.json \
        --train_data_dir data/train --output_dir runs/captioner

Ends with `CaptionPipeline.save_pretrained(output_dir)`; checkpoints go to `output_dir/checkpoint-<step>`.
With `--rank R` (LoRA on the ViT's and GPT-2's attention) or `--adapter ia3`, and
`--pretrained_model_name_or_path`, only the adapter trains, and `output_dir` ends with it in PEFT's format,
for `CaptionPipeline.load_lora_weights`.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from genvl.io.imagefolder import load_images
from genvl.lora import save_adapter
from genvl.models.captioner import CaptionerArchitecture, build_captioner, build_image_processor, train_tokenizer
from genvl.training.args import LoraTrainArgs, check_at_least, parse_args, run_script, save_architecture
from genvl.training.augment import NEED_SCENES, augment_batch, mirrored_captions, parse_augmentations, shift_range
from genvl.training.data import read_training_data
from genvl.training.features import load_or_train_tokenizer
from genvl.training.loop import make_accelerator, train_loop
from genvl.training.pretrained import add_training_adapter
from genvl.training.seeds import AUGMENTATION, step_generator
from genvl.world.captions import scene_captions


@dataclass
class TrainCaptionerArgs(LoraTrainArgs):
    """Train a ViT-GPT2 captioner."""

    output_dir: str = "runs/captioner"
    architecture: str = "configs/captioner_small.json"
    vocab_size: int = 1024
    augment: str = ""  # comma-separated kinds of genvl.training.augment: flip, shift, light

    def __post_init__(self):
        super().__post_init__()
        check_at_least(self, 1, "vocab_size")  # a negative size overflows the tokenizer trainer
        parse_augmentations(self.augment)


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


def caption_loss(model, pixel_values, decoder_input_ids, labels, tokens: torch.Tensor | float | None = None):
    """Token cross-entropy, summed and divided by `tokens` (default: this batch's label tokens, i.e. the mean)."""
    mask = (labels != -100).long()
    # keep BOS visible: the attention mask covers BOS + tokens, i.e. the label positions
    logits = model(pixel_values=pixel_values, decoder_input_ids=decoder_input_ids, decoder_attention_mask=mask).logits
    total = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    return total / (mask.sum() if tokens is None else tokens)


def main(argv=None):
    args = parse_args(TrainCaptionerArgs, argv)
    accelerator = make_accelerator(args, "train_captioner")
    output_dir = Path(args.output_dir)
    data_dir = Path(args.train_data_dir)
    records = read_training_data(accelerator, args)
    captions = [r[args.caption_column] for r in records]

    # 1. tokenizer and model: fine-tune a saved captioner, or build a fresh one with its own tokenizer
    if args.pretrained_model_name_or_path:  # a genvl pipeline folder or a flat VisionEncoderDecoder one
        from genvl.pipelines.caption import CaptionPipeline

        pretrained = CaptionPipeline.from_pretrained(args.pretrained_model_name_or_path)
        model, tokenizer = pretrained.model, pretrained.tokenizer
        arch = CaptionerArchitecture(image_size=model.config.encoder.image_size)
    else:
        arch = CaptionerArchitecture.from_json(args.architecture)
        arch.image_size = args.resolution
        save_architecture(accelerator, args, arch)
        texts = [c for r in records for c in r.get("captions", [r[args.caption_column]])]
        tokenizer = load_or_train_tokenizer(accelerator, output_dir, lambda: train_tokenizer(texts, args.vocab_size))
        model = build_captioner(arch, tokenizer)
    max_length = model.config.decoder.n_positions
    parameters = add_training_adapter(accelerator, model, "captioner", args)

    # 2. data in memory: images, tokens of the captions and, for flips, of the mirrored scenes' captions
    images = load_images(data_dir, records, args.image_column, args.resolution)
    kinds = parse_augmentations(args.augment)
    if any(kind in NEED_SCENES for kind in kinds) and not all("scene" in r for r in records):
        raise ValueError(f"--augment {args.augment}: flip and shift need the scene graph of every training image")
    if "flip" in kinds:
        captions = captions + mirrored_captions([r["scene"] for r in records], lambda s: scene_captions(s)[0])
    decoder_input_ids, labels = tokenize_captions(tokenizer, captions, max_length)
    longest = int((labels != -100).sum(1).max())
    decoder_input_ids, labels = decoder_input_ids[:, :longest], labels[:, :longest]
    ranges = torch.tensor([shift_range(r["scene"]) for r in records]) if "shift" in kinds else None

    # 3. train
    device = accelerator.device

    def compute_loss(model, batch, step):
        # the batch's bytes go to the device, which converts and augments them
        pixel_values = images[batch].to(device).float().div_(127.5).sub_(1.0)
        rows = torch.as_tensor(batch)
        if kinds:
            generator = step_generator(args.seed, step, AUGMENTATION)
            batch_ranges = ranges[batch] if ranges is not None else None
            pixel_values, flipped, _ = augment_batch(pixel_values, batch_ranges, kinds, generator)
            rows = rows + flipped.long() * len(records)  # the mirrored captions follow the others
        batch_labels = labels[rows].to(device)
        # the mean over the label tokens of every process's micro-batch: DDP averages the processes' gradients,
        # so each divides its sum by the global count / processes, and any process layout trains the same
        tokens = accelerator.reduce((batch_labels != -100).sum(), "sum") / accelerator.num_processes
        return caption_loss(model, pixel_values, decoder_input_ids[rows].to(device), batch_labels, tokens)

    losses = train_loop(accelerator, args, model, parameters, len(records), compute_loss)

    # 4. save the final pipeline, or the adapter (EMA weights when EMA is on)
    if accelerator.is_main_process:
        from genvl.pipelines.caption import CaptionPipeline

        if args.adapter is not None:
            save_adapter(model, output_dir)
        else:
            pipeline = CaptionPipeline(model=model, tokenizer=tokenizer, image_processor=build_image_processor(arch))
            pipeline.save_pretrained(output_dir)
        (output_dir / "train_losses.json").write_text(json.dumps(losses))
    accelerator.end_training()
    return losses


if __name__ == "__main__":
    run_script(main)
