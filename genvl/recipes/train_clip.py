"""Train a CLIP dual encoder contrastively on an imagefolder (images + metadata.jsonl) with accelerate.

    accelerate launch -m genvl.recipes.train_clip --config configs/train_clip.json

Symmetric InfoNCE with a learnable temperature, as CLIP. Two scenes with the same canonical caption are
both counted as matches of each other's text (the world repeats captions like "a red apple"), so the loss
does not push apart pairs that the captions cannot tell apart. Each step draws one of a scene's phrasings.

With `--swap_negatives`, each two-object scene's image is also scored against its caption with the two objects
exchanged ("a blue car above a red apple" for "a red apple above a blue car", in the same phrasing), as an
extra negative text of the image-to-text side (as NegCLIP does with word-order negatives). The captions differ
only in word order, so the text tower has to read it, and the image tower to see which object is where.
With `--mirror_negatives`, each such caption is also scored against its image mirrored across the relation's
axis (left-right for "to the left of", top-bottom for "above"), which shows the swapped scene, as an extra
negative image of the text-to-image side: the image tower then has to see which object is where.
Ends with the model, tokenizer and image processor saved in the Hugging Face CLIP layout in `output_dir`;
with `--rank R` (LoRA on both towers' attention) or `--adapter ia3`, and `--pretrained_model_name_or_path`,
only the adapter trains, saved in PEFT's format as `output_dir/clip/` for
`TextToImagePipeline.load_lora_weights(output_dir)`.

With `--streaming` and shards as `--train_data_dir`, the samples stream through the run (`genvl.training.stream`),
each batch's phrasings (and swapped twins) tokenised as it comes; two samples match when their canonical captions
are the same, known by a digest of the caption that every process computes alike.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CLIPModel

from genvl.io.components import load_pretrained, load_tokenizer
from genvl.io.imagefolder import load_images
from genvl.lora import save_adapter
from genvl.models.clip import (
    ClipArchitecture,
    build_clip,
    build_clip_image_processor,
    normalize_pixels,
    train_clip_tokenizer,
)
from genvl.training.args import LoraTrainArgs, check_at_least, parse_args, run_script, save_architecture, saving_run
from genvl.training.contrastive import MAX_LOGIT_SCALE, contrastive_loss, swapped_phrasings
from genvl.training.data import phrasing_table, pick_phrasings, read_training_data, tokenize_texts
from genvl.training.features import load_or_train_tokenizer
from genvl.training.loop import make_accelerator, train_loop
from genvl.training.pretrained import add_training_adapter, pretrained_part
from genvl.training.stream import open_stream, stream_captions, write_stream_summary


@dataclass
class TrainClipArgs(LoraTrainArgs):
    """Train a CLIP dual encoder."""

    output_dir: str = "runs/clip"
    architecture: str = "configs/clip_small.json"
    vocab_size: int = 1024
    train_batch_size: int = 128
    swap_negatives: bool = False  # score two-object images against their object-swapped captions too
    mirror_negatives: bool = False  # score two-object captions against their images mirrored too

    def __post_init__(self):
        super().__post_init__()
        check_at_least(self, 1, "vocab_size")  # a negative size overflows the tokenizer trainer


@dataclass
class TextTables:
    """What the loss reads of a set of records, by row: every phrasing tokenised (`ids`, `lengths`), each record's
    phrasings (`phrasings`, indices into them) and canonical caption id; with swap or mirror negatives, each
    phrasing's object-swapped twin (`swapped`, -1 for none) and the swapped scene's caption id, and the image
    dimension that mirrors each record into its swapped scene (`mirror_axes`, 0 for none)."""

    ids: torch.Tensor
    lengths: torch.Tensor
    phrasings: torch.Tensor
    caption_ids: torch.Tensor
    swapped: torch.Tensor | None = None
    swapped_ids: torch.Tensor | None = None
    mirror_axes: torch.Tensor | None = None


def text_tables(args, records, caption_column: str, caption_id, tokenizer, max_length: int) -> TextTables:
    texts, phrasings = phrasing_table(records, caption_column)
    tables = TextTables(None, None, phrasings, torch.tensor([caption_id(r[caption_column]) for r in records]))
    if args.swap_negatives or args.mirror_negatives:
        tables.swapped, tables.swapped_ids = swapped_phrasings(records, texts, phrasings, caption_id)
    if args.mirror_negatives:
        tables.mirror_axes = torch.tensor(
            [
                {"pair_h": -1, "pair_v": -2}[r["scene"]["layout"]] if twin >= 0 else 0
                for r, twin in zip(records, tables.swapped_ids.tolist())
            ]
        )
    tables.ids, tables.lengths = tokenize_texts(tokenizer, texts, max_length)
    return tables


def caption_digest(text: str) -> int:
    """A canonical caption's id in a streamed run: 56 bits of its SHA-1, the same in every process and batch."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:7], "big")


def main(argv=None):
    args = parse_args(TrainClipArgs, argv)
    accelerator = make_accelerator(args, "train_clip")
    output_dir = Path(args.output_dir)
    data_dir = Path(args.train_data_dir)
    records = None if args.streaming else read_training_data(accelerator, args)

    # 1. tokenizer and model: fine-tune a saved CLIP (its folder, or a pipeline's), or build a fresh one
    if args.pretrained_model_name_or_path:
        model = load_pretrained(CLIPModel, pretrained_part(args.pretrained_model_name_or_path, "clip"))
        tokenizer = load_tokenizer(
            pretrained_part(args.pretrained_model_name_or_path, "tokenizer"), model.config.text_config.vocab_size
        )
    else:
        arch = ClipArchitecture.from_json(args.architecture)
        arch.image_size = args.resolution
        save_architecture(accelerator, args, arch)
        if records is None:
            texts = stream_captions(args.train_data_dir, args.caption_column)
        else:
            texts = [c for r in records for c in r.get("captions", [r[args.caption_column]])]
        tokenizer = load_or_train_tokenizer(
            accelerator, output_dir, lambda: train_clip_tokenizer(texts, args.vocab_size, arch.max_positions)
        )
        model = build_clip(arch, tokenizer)
    image_size = model.config.vision_config.image_size
    image_processor = build_clip_image_processor(image_size)
    max_length = model.config.text_config.max_position_embeddings

    # 2. data: in memory (images, every phrasing tokenised, which records share a canonical caption), or streamed,
    # each batch's tables made as it comes
    if records is not None:
        images = load_images(data_dir, records, args.image_column, image_size)
        canonical = {}
        tables = text_tables(
            args,
            records,
            args.caption_column,
            lambda text: canonical.setdefault(text, len(canonical)),
            tokenizer,
            max_length,
        )
        if args.swap_negatives or args.mirror_negatives:
            if not (tables.swapped_ids >= 0).any():
                flag = "--swap_negatives" if args.swap_negatives else "--mirror_negatives"
                raise ValueError(f"{flag}: no record of {data_dir} has a two-object scene graph to swap")
            accelerator.print(f"swap negatives for {int((tables.swapped_ids >= 0).sum())} of {len(records)} records")
        data = len(records)

        def tables_of(batch):
            return tables, images[batch], batch

    else:
        data = open_stream(accelerator, args, resolution=image_size, caption_column=args.caption_column)

        def tables_of(batch):  # the batch's own tables, whose rows are the batch's samples
            tables = text_tables(args, batch, "caption", caption_digest, tokenizer, max_length)
            return tables, torch.stack([sample["pixels"] for sample in batch]), torch.arange(len(batch))

    # 3. train
    device = accelerator.device

    def compute_loss(model, batch, step):
        tables, pixels, batch = tables_of(batch)
        chosen = pick_phrasings(
            tables.phrasings, batch, args.seed, step, accelerator.process_index, accelerator.num_processes
        )
        rows = len(batch)
        if args.swap_negatives:  # the same phrasing of the swapped scene; a row without one gets its own text, unused
            column = (tables.phrasings[batch] == chosen[:, None]).long().argmax(1, keepdim=True)
            twin = tables.swapped[batch].gather(1, column)[:, 0]
            chosen = torch.cat([chosen, torch.where(twin >= 0, twin, chosen)])
            negative_ids = torch.where(twin >= 0, tables.swapped_ids[batch], -1)
        input_ids, length = tables.ids[chosen], tables.lengths[chosen]
        input_ids = input_ids[:, : int(length.max())]
        attention_mask = (torch.arange(input_ids.shape[1]) < length[:, None]).long()
        if args.mirror_negatives:  # each row's image mirrored to show the swapped scene, where it has one
            axes = tables.mirror_axes[batch]
            has_mirror = (axes != 0).nonzero().squeeze(1)
            mirror_ids = torch.where(axes != 0, tables.swapped_ids[batch], -1)
            pixels = torch.cat([pixels, *(pixels[i : i + 1].flip(int(axes[i])) for i in has_mirror)])
        pixel_values = normalize_pixels(pixels, image_processor)
        logit_scale = accelerator.unwrap_model(model).logit_scale
        with torch.no_grad():
            logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        out = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            pixel_values=pixel_values.to(device),
        )
        text_embeds, image_embeds = out.text_embeds.float(), out.image_embeds.float()
        negatives = {}
        if args.swap_negatives:
            negatives.update(negative_embeds=text_embeds[rows:], negative_ids=negative_ids.to(device))
        if args.mirror_negatives:  # one row per batch row (zeros where there is none, left out by its id -1)
            mirrored = image_embeds.new_zeros(rows, image_embeds.shape[1])
            mirrored = mirrored.index_copy(0, has_mirror.to(device), image_embeds[rows:])
            negatives.update(mirror_embeds=mirrored, mirror_ids=mirror_ids.to(device))
        return contrastive_loss(
            image_embeds[:rows],
            text_embeds[:rows],
            logit_scale.exp().float(),
            tables.caption_ids[batch].to(device),
            accelerator,
            **negatives,
        )

    parameters = add_training_adapter(accelerator, model, "clip", args)
    losses = train_loop(accelerator, args, model, parameters, data, compute_loss)
    if records is None:
        write_stream_summary(accelerator, args, data)

    # 4. save in the Hugging Face CLIP layout, or the adapter as `clip/` (EMA weights when EMA is on)
    if accelerator.is_main_process:
        with saving_run(output_dir, losses):
            if args.adapter is not None:
                save_adapter(model, output_dir / "clip")
            else:
                model.save_pretrained(output_dir, safe_serialization=True)
                tokenizer.save_pretrained(output_dir)
                image_processor.save_pretrained(output_dir)
    accelerator.end_training()
    return losses


if __name__ == "__main__":
    run_script(main)
