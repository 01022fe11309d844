"""Train a ViT-GPT2 captioner on an imagefolder (images + metadata.jsonl) with accelerate.

    accelerate launch -m genvl.recipes.train_captioner --config configs/train_captioner.json \
        --train_data_dir data/train --output_dir runs/captioner

Ends with `CaptionPipeline.save_pretrained(output_dir)`; checkpoints go to `output_dir/checkpoint-<step>`.
With `--rank R` (LoRA on the ViT's and GPT-2's attention) or `--adapter ia3`, and
`--pretrained_model_name_or_path`, only the adapter trains, and `output_dir` ends with it in PEFT's format,
for `CaptionPipeline.load_lora_weights`.

With `--encoder_from_judge` (a judge folder: genvl-judge-small), the encoder is the judge's convolutional body
(`genvl.models.grid_encoder`), which already finds the wide world's objects; `--freeze_encoder` trains the decoder
alone (and the grid's cell embeddings), at no backward pass through the encoder.

With `--streaming` and shards as `--train_data_dir`, samples stream through the run (`genvl.training.stream`)
instead of being decoded into memory first: the run's memory stays the same whatever the size of the data.

With `--teacher_model_name_or_path` (a captioner's pipeline folder), a fresh model of `--architecture` is
distilled from it: it takes the teacher's tokenizer, and its loss is (1 - `--distill_alpha`) times the caption
cross-entropy plus `--distill_alpha` times the teacher's soft targets (`distillation_loss`), on the same
(augmented) images and captions.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from genvl.io.imagefolder import load_images
from genvl.io.images import check_pad_fill
from genvl.lora import save_adapter
from genvl.models.captioner import (
    CaptionerArchitecture,
    build_captioner,
    build_image_processor,
    tokenize_captions,
    train_tokenizer,
)
from genvl.training.args import (
    JudgeEncoderArgs,
    LoraTrainArgs,
    check_at_least,
    parse_args,
    run_script,
    save_architecture,
    saving_run,
)
from genvl.training.augment import (
    NEED_SCENES,
    augment_batch,
    mirrored_captions,
    pad_fill_of,
    parse_augmentations,
    scene_rooms,
)
from genvl.training.data import read_training_data
from genvl.training.features import load_or_train_tokenizer, save_tokenizer
from genvl.training.loop import caption_loss, distillation_loss, make_accelerator, train_loop
from genvl.training.pretrained import add_training_adapter, prepare_encoder
from genvl.training.seeds import AUGMENTATION, step_generator
from genvl.training.stream import open_stream, stream_captions, write_stream_summary
from genvl.world.captions import scene_captions


@dataclass
class TrainCaptionerArgs(LoraTrainArgs, JudgeEncoderArgs):
    """Train a ViT-GPT2 captioner."""

    output_dir: str = "runs/captioner"
    architecture: str = "configs/captioner_small.json"
    vocab_size: int = 1024
    augment: str = ""  # comma-separated kinds of genvl.training.augment: flip, shift, squash, letterbox, light, jpeg
    pad_fill: str | None = None  # the saved pipeline's (border, contrast); default: pad_fill_of(augment, the start)
    letterbox_fill: str = "contrast"  # what --augment letterbox pads its bands with (border, contrast)
    teacher_model_name_or_path: str | None = None  # distil a fresh model from this captioner
    distill_alpha: float = 0.5  # the soft targets' share of the loss
    distill_temperature: float = 2.0

    def __post_init__(self):
        super().__post_init__()
        check_at_least(self, 1, "vocab_size")  # a negative size overflows the tokenizer trainer
        parse_augmentations(self.augment)
        if self.pad_fill is not None:
            check_pad_fill(self.pad_fill, "--pad_fill")
        check_pad_fill(self.letterbox_fill, "--letterbox_fill")
        if self.adapter and (self.encoder_from_judge or self.freeze_encoder):
            raise ValueError(
                f"--adapter {self.adapter} trains the adapter alone: drop --encoder_from_judge/--freeze_encoder"
            )
        if self.teacher_model_name_or_path is not None and self.picture_positions:
            raise ValueError("--picture_positions fine-tunes a grid encoder: drop --teacher_model_name_or_path")
        if self.picture_positions and not (self.encoder_from_judge or self.pretrained_model_name_or_path):
            raise ValueError("--picture_positions needs a grid encoder: add --encoder_from_judge")
        if self.teacher_model_name_or_path is not None and (self.pretrained_model_name_or_path or self.adapter):
            raise ValueError("--teacher_model_name_or_path trains a fresh model: drop --pretrained_model_name_or_path")
        if not 0 <= self.distill_alpha <= 1:
            raise ValueError(f"--distill_alpha must be in [0, 1], got {self.distill_alpha}")
        if not self.distill_temperature > 0:
            raise ValueError(f"--distill_temperature must be > 0, got {self.distill_temperature}")


def main(argv=None):
    args = parse_args(TrainCaptionerArgs, argv)
    accelerator = make_accelerator(args, "train_captioner")
    output_dir = Path(args.output_dir)
    data_dir = Path(args.train_data_dir)
    records = None if args.streaming else read_training_data(accelerator, args)

    # 1. tokenizer and model: fine-tune a saved captioner, or build a fresh one with its own tokenizer (or, to
    # distil a teacher, the teacher's)
    teacher = None
    if args.teacher_model_name_or_path:
        from genvl.pipelines.caption import CaptionPipeline

        teacher = CaptionPipeline.from_pretrained(args.teacher_model_name_or_path)
        tokenizer = save_tokenizer(accelerator, output_dir, teacher.tokenizer)  # the teacher's, on disk at once
        teacher = teacher.model.to(accelerator.device).eval().requires_grad_(False)
        arch = CaptionerArchitecture.from_json(args.architecture)
        arch.image_size = args.resolution
        if teacher.config.encoder.image_size != arch.image_size:
            raise ValueError(
                f"the teacher reads {teacher.config.encoder.image_size}px images; --resolution is {arch.image_size}"
            )
        save_architecture(accelerator, args, arch)
        model = build_captioner(arch, tokenizer)
    elif args.pretrained_model_name_or_path:  # a genvl pipeline folder or a flat VisionEncoderDecoder one
        from genvl.pipelines.caption import CaptionPipeline

        pretrained = CaptionPipeline.from_pretrained(args.pretrained_model_name_or_path)
        model, tokenizer = pretrained.model, pretrained.tokenizer
        arch = CaptionerArchitecture(image_size=model.config.encoder.image_size)
    else:
        arch = CaptionerArchitecture.from_json(args.architecture)
        arch.image_size = args.resolution
        save_architecture(accelerator, args, arch)
        if records is None:
            texts = stream_captions(args.train_data_dir, args.caption_column)
        else:
            texts = [c for r in records for c in r.get("captions", [r[args.caption_column]])]
        tokenizer = load_or_train_tokenizer(accelerator, output_dir, lambda: train_tokenizer(texts, args.vocab_size))
        model = build_captioner(arch, tokenizer)
    model = prepare_encoder(args, model)
    picture_positions = getattr(model.config.encoder, "picture_positions", False)  # the run's or the start's
    max_length = model.config.decoder.n_positions
    parameters = add_training_adapter(accelerator, model, "captioner", args)
    kinds = parse_augmentations(args.augment)
    device = accelerator.device

    def loss_of(model, pixel_values, step, tokens_of, mirrored_after: int, rooms=None):
        """The loss of a micro-batch of `pixel_values`; `tokens_of(rows)` gives (decoder_input_ids, labels) of
        caption rows 0.. of the batch, whose mirrored captions are rows `mirrored_after` further on."""
        rows = torch.arange(len(pixel_values))
        if kinds:
            generator = step_generator(args.seed, step, AUGMENTATION)
            pixel_values, flipped, _ = augment_batch(
                pixel_values, rooms, kinds, generator, args.letterbox_fill, picture_positions
            )
            rows = rows + flipped.long() * mirrored_after
        inputs, labels = tokens_of(rows)
        labels = labels.to(device)
        # the mean over the label tokens of every process's micro-batch: DDP averages the processes' gradients,
        # so each divides its sum by the global count / processes, and any process layout trains the same
        tokens = accelerator.reduce((labels != -100).sum(), "sum") / accelerator.num_processes
        if teacher is not None and args.distill_alpha > 0:  # at 0, the teacher gives the tokenizer alone
            return distillation_loss(
                model,
                teacher,
                pixel_values,
                inputs.to(device),
                labels,
                tokens,
                args.distill_alpha,
                args.distill_temperature,
            )
        return caption_loss(model, pixel_values, inputs.to(device), labels, tokens)

    # 2. the data: in memory (images, tokens of the captions and, for flips, of the mirrored scenes' captions), or
    # streamed, each micro-batch decoded and tokenised as it comes
    if records is not None:
        images = load_images(data_dir, records, args.image_column, args.resolution)
        if any(kind in NEED_SCENES for kind in kinds) and not all("scene" in r for r in records):
            raise ValueError(
                f"--augment {args.augment}: flip, shift, squash and letterbox need each training image's scene graph"
            )
        captions = [r[args.caption_column] for r in records]
        if "flip" in kinds:
            captions = captions + mirrored_captions([r["scene"] for r in records], lambda s: scene_captions(s)[0])
        decoder_input_ids, labels = tokenize_captions(tokenizer, captions, max_length)
        longest = int((labels != -100).sum(1).max())
        decoder_input_ids, labels = decoder_input_ids[:, :longest], labels[:, :longest]
        rooms = scene_rooms((r["scene"] for r in records), kinds)
        data = len(records)

        def compute_loss(model, batch, step):
            # the batch's bytes go to the device, which converts and augments them
            pixel_values = images[batch].to(device).float().div_(127.5).sub_(1.0)
            batch = torch.as_tensor(batch)
            batch_rooms = rooms[batch] if rooms is not None else None

            def tokens_of(rows):  # row r of the batch is record batch[r]; its mirror, batch[r] + len(records)
                index = batch[rows % len(batch)] + rows // len(batch) * len(records)
                return decoder_input_ids[index], labels[index]

            return loss_of(model, pixel_values, step, tokens_of, len(batch), batch_rooms)

    else:
        need_scene = any(kind in NEED_SCENES for kind in kinds)
        data = open_stream(accelerator, args, caption_column=args.caption_column, need_scene=need_scene)

        def compute_loss(model, batch, step):
            pixel_values = torch.stack([s["pixels"] for s in batch]).to(device).float().div_(127.5).sub_(1.0)
            captions = [s["caption"] for s in batch]
            if "flip" in kinds:
                captions += mirrored_captions([s["scene"] for s in batch], lambda s: scene_captions(s)[0])
            rooms = scene_rooms((s["scene"] for s in batch), kinds)
            inputs, labels = tokenize_captions(tokenizer, captions, max_length)
            longest = int((labels != -100).sum(1).max())  # no step spends work on padding past the longest
            inputs, labels = inputs[:, :longest], labels[:, :longest]
            return loss_of(model, pixel_values, step, lambda r: (inputs[r], labels[r]), len(batch), rooms)

    # 3. train
    losses = train_loop(accelerator, args, model, parameters, data, compute_loss)
    if records is None:
        write_stream_summary(accelerator, args, data)

    # 4. save the final pipeline, or the adapter (EMA weights when EMA is on)
    if accelerator.is_main_process:
        from genvl.pipelines.caption import CaptionPipeline

        with saving_run(output_dir, losses):
            if args.adapter is not None:
                save_adapter(model, output_dir)
            else:
                # a fine-tuned captioner keeps its own preprocessing; genvl's fresh ones pad images to a square; one
                # trained on letterboxed images pads, with the fill it learnt to see unless --pad_fill says otherwise
                own = pretrained.config if args.pretrained_model_name_or_path else None
                pipeline = CaptionPipeline(
                    model=model,
                    tokenizer=tokenizer,
                    image_processor=build_image_processor(arch),
                    pad_to_square=(own.get("pad_to_square", False) if own else True) or "letterbox" in kinds,
                    pad_fill=pad_fill_of(kinds, own, args.pad_fill, args.letterbox_fill),
                )
                pipeline.save_pretrained(output_dir)
    accelerator.end_training()
    return losses


if __name__ == "__main__":
    run_script(main)
