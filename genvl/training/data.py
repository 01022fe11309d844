"""A run's training data: its records read and checked (bad samples skipped and listed), the order it sees them
in, and the phrasing each step trains on."""

import functools
import json
from pathlib import Path

from .checkpoints import warn
from .seeds import EPOCH_ORDER, PHRASINGS, step_generator


def read_training_records(source, caption_column: str, image_column: str, log=None) -> tuple[list, list]:
    """(records, skipped) of an imagefolder or of WebDataset shards (`data/train-{000..009}.tar`).

    Every sample is checked as it is read: one whose image cannot be decoded or whose caption is missing or
    empty is reported through `log`, listed in `skipped` as {"sample", "reason"} and left out.
    """
    from ..io.imagefolder import read_metadata
    from ..io.images import load_image
    from ..io.shards import is_shard_spec, iter_samples, sample_record, shard_paths

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
        candidates = (
            (f"{Path(source) / r[image_column]}", r) for r in read_metadata(source, caption_column, image_column)
        )
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


def read_training_data(accelerator, args) -> list[dict]:
    """The records of `--train_data_dir` (imagefolder or shards) with bad samples logged on stderr by the main
    process, counted, and listed in `output_dir/data_summary.json`. A recipe that calls it holds its data in
    memory: `--streaming` is refused (the other recipes stream instead of calling it when asked to)."""
    if args.streaming:
        raise ValueError(
            "--streaming: this recipe holds its data in memory; the captioner, CLIP, prior, decoder, autoencoder "
            "and judge recipes stream"
        )
    check_data_source(args.train_data_dir, "--train_data_dir")
    log = functools.partial(warn, accelerator=accelerator)
    records, skipped = read_training_records(args.train_data_dir, args.caption_column, args.image_column, log)
    accelerator.print(f"{len(records)} samples read from {args.train_data_dir}, {len(skipped)} bad ones skipped")
    if accelerator.is_main_process:
        summary = {
            "source": str(args.train_data_dir),
            "samples": len(records),
            "skipped": len(skipped),
            "skipped_samples": skipped,
        }
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "data_summary.json").write_text(json.dumps(summary, indent=2))
    return records


def check_data_source(source, flag: str) -> None:
    """Raise, naming `flag`, unless `source` is a folder or names shards that all exist: before any work is done
    rather than once the data is read."""
    from ..io.shards import is_shard_spec, shard_paths

    if is_shard_spec(source):
        shard_paths(source)  # names the first missing shard
    elif not Path(source).exists():
        raise FileNotFoundError(f"{flag} {source}: no such folder")
    elif not Path(source).is_dir():
        raise NotADirectoryError(
            f"{flag} {source}: not a folder; expected an imagefolder (a folder with a "
            f"metadata.jsonl) or tar shards such as data/train-{{000..009}}.tar"
        )


def epoch_order(num_items: int, seed: int, epoch: int):
    """The sample order of one epoch: a permutation that depends only on (seed, epoch), so resuming is exact."""
    import torch

    return torch.randperm(num_items, generator=step_generator(seed, epoch, EPOCH_ORDER))


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

    generator = step_generator(seed, step, PHRASINGS)
    choice = torch.randint(0, index.shape[1], (len(batch) * num_processes,), generator=generator)
    return index[batch, choice[process_index * len(batch) : (process_index + 1) * len(batch)]]


def tokenize_texts(tokenizer, texts, max_length: int):
    """(ids, lengths): each text's token ids cut to `max_length` and padded with the tokenizer's pad token
    (N, max_length), and how many tokens each has (N,)."""
    import torch

    encoded = tokenizer(list(texts), truncation=True, max_length=max_length).input_ids
    ids = torch.full((len(encoded), max_length), tokenizer.pad_token_id, dtype=torch.long)
    for i, tokens in enumerate(encoded):
        ids[i, : len(tokens)] = torch.tensor(tokens)
    return ids, torch.tensor([len(tokens) for tokens in encoded], dtype=torch.long)


def prompt_rng(seed: int, index: int):
    """The generator of record `index`'s prompts in a run seeded `seed`: the prior, the decoder and the text tower
    draw the same prompts for the same record."""
    import random

    return random.Random(f"{seed}/{index}")


def with_prompts(records: list[dict], per_scene: int, seed: int, caption_column: str) -> list[dict]:
    """The records with `per_scene` more phrasings each in `captions` (after the caption column's, or the
    record's own `captions`): prompts true of its scene as people type them (`genvl.world.prompts.
    request_prompts`, training phrasing families only), drawn with `prompt_rng`, so that a resumed run, and a
    text tower trained with the same seed, see the same ones."""
    from ..world.prompts import request_prompts

    if per_scene == 0:
        return records
    out = []
    for i, record in enumerate(records):
        if not isinstance(record.get("scene"), dict):
            raise ValueError(
                f"--prompts_per_scene needs a scene graph in every record; {record.get('file_name')} has none"
            )
        extra = [text for text, _, _ in request_prompts(record["scene"], prompt_rng(seed, i), per_scene)]
        out.append({**record, "captions": list(record.get("captions") or [record[caption_column]]) + extra})
    return out
