"""What a run computes once from frozen models and keeps beside its checkpoints: the features of a frozen CLIP or
text tower, and the tokenizer it trained, so that a resumed run reuses them."""

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..io.outputs import weights_readable_as_umask
from .data import phrasing_table

if TYPE_CHECKING:
    import torch
    from transformers import CLIPModel


@dataclasses.dataclass
class ClipFeatures:
    """A frozen CLIP's features of a run's records. The text rows are the distinct phrasings followed by the empty
    prompt (the last row); the token states are kept in float16: at 3 phrasings per image they are the largest
    tensor of a run."""

    clip: "CLIPModel"  # the model that made them (on the CPU, or where a streamed run keeps it)
    image_embeds: "torch.Tensor"  # (N, E)
    phrasings: "torch.Tensor"  # (N, P) indices into the text rows
    text_embeds: "torch.Tensor | None"  # (T + 1, E), T distinct phrasings; None when another tower gave the states
    states: "torch.Tensor"  # (T + 1, L, H) token states in float16
    masks: "torch.Tensor"  # (T + 1, L)

    @property
    def empty_prompt(self) -> int:
        """The text row of the empty prompt, which replaces a dropped caption."""
        return len(self.states) - 1


def load_or_train_tokenizer(accelerator, output_dir, train):
    """This run's tokenizer: `output_dir/tokenizer` when resuming, else `train()`'s, saved there."""
    from ..io.components import load_tokenizer

    tokenizer_dir = Path(output_dir) / "tokenizer"
    if (tokenizer_dir / "tokenizer.json").exists():
        return load_tokenizer(tokenizer_dir)
    return save_tokenizer(accelerator, output_dir, train())


def save_tokenizer(accelerator, output_dir, tokenizer):
    """Write `tokenizer` to `output_dir/tokenizer` before the first step, so that any checkpoint of the run can be
    exported while it trains; returns it."""
    tokenizer_dir = Path(output_dir) / "tokenizer"
    if os.path.lexists(tokenizer_dir) and (
        tokenizer_dir.is_symlink() or not (tokenizer_dir / "tokenizer.json").is_file()
    ):
        raise FileExistsError(f"{tokenizer_dir}: exists and is not a saved tokenizer; not replaced")
    if accelerator.is_main_process:
        # written aside and renamed into place: a run killed while saving it still resumes
        tmp = tokenizer_dir.with_name(".tokenizer.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(tokenizer_dir, ignore_errors=True)  # this run's, or an earlier one's: replaced
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
    with weights_readable_as_umask(path.parent):
        save_file({name: value.contiguous() for name, value in tensors.items()}, str(tmp), metadata={"key": stamp})
        tmp.replace(path)
    return tensors


def data_stamp(source) -> dict:
    """`file_stamp` of an imagefolder's metadata.jsonl, or of every shard a shard spec names."""
    from ..io.shards import is_shard_spec, shard_paths

    if is_shard_spec(source):
        return {"shards": [file_stamp(path) for path in shard_paths(source)]}
    return file_stamp(Path(source) / "metadata.jsonl")


def file_stamp(path) -> dict:
    """Where a model or data folder is and when its files last changed, to key cached features on."""
    path = Path(path).resolve()
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return {"path": str(path), "mtime": max((p.stat().st_mtime for p in files), default=0.0)}


def clip_features(clip, tokenizer, image_processor, images, texts) -> dict:
    """A frozen CLIP's features: "image_embeds" (N, E), unit, of uint8 images (N, 3, H, W) (resized to the image
    tower's size if they are not at it), and "text_embeds", "states" (float16) and "masks" of `texts` followed by
    the empty prompt, every text padded to the text tower's length; all on the CPU."""
    import torch

    from ..models.clip import embed_at_clip_size, embed_texts

    length = clip.config.text_config.max_position_embeddings
    text_embeds, states, masks = embed_texts(clip, tokenizer, list(texts) + [""], length, states_dtype=torch.float16)
    image_embeds = embed_at_clip_size(clip, image_processor, images, batch_size=256)
    return {"image_embeds": image_embeds, "text_embeds": text_embeds, "states": states, "masks": masks}


def frozen_clip_features(
    clip_dir, data_dir, records, image_column: str, caption_column: str, cache_dir=None, device=None
) -> ClipFeatures:
    """Features of a frozen CLIP for training the prior or the decoder, computed once (on `device`, the CPU by
    default, and, with `cache_dir`, kept in `cache_dir/clip_features.safetensors` for resumed runs)."""
    from ..io.imagefolder import load_images
    from ..models.clip import load_clip

    clip, tokenizer, image_processor = load_clip(clip_dir)
    clip.eval()
    texts, phrasings = phrasing_table(records, caption_column)

    def compute():
        images = load_images(data_dir, records, image_column, clip.config.vision_config.image_size)
        clip.to(device or "cpu")
        features = clip_features(clip, tokenizer, image_processor, images, texts)
        clip.to("cpu")  # the features come back on the CPU, and so does the model that made them
        return features

    if cache_dir is None:
        features = compute()
    else:
        key = {
            "clip": file_stamp(clip_dir),
            "data": data_stamp(data_dir),
            "records": len(records),
            "texts": len(texts),
            "image_column": image_column,
            "caption_column": caption_column,
        }
        features = cached_features(Path(cache_dir) / "clip_features.safetensors", key, compute)
    return ClipFeatures(clip=clip, phrasings=phrasings, **features)


def batch_clip_features(clip, tokenizer, image_processor, samples, text_tower=None) -> ClipFeatures:
    """The `ClipFeatures` of a streamed batch (`genvl.training.stream.decoded_sample`s, with their captions), as
    `frozen_clip_features` gives them for records in memory: row i is sample i, the text rows are the batch's
    distinct phrasings then the empty prompt. With `text_tower` (a text encoder and its tokenizer), the token states
    and masks are its (`text_states`) and CLIP's text tower does not run (`text_embeds` is then None). `clip` runs
    where it is; the features come back on the CPU."""
    import torch

    from ..models.clip import embed_at_clip_size

    texts, phrasings = phrasing_table(samples, "caption")
    pixels = torch.stack([sample["pixels"] for sample in samples])
    if text_tower is None:
        return ClipFeatures(
            clip=clip, phrasings=phrasings, **clip_features(clip, tokenizer, image_processor, pixels, texts)
        )
    states, masks = text_states(*text_tower, texts)
    image_embeds = embed_at_clip_size(clip, image_processor, pixels, batch_size=256)
    return ClipFeatures(clip, image_embeds, phrasings, None, states, masks)


def text_states(text_encoder, tokenizer, texts):
    """(token states (N + 1, L, H) in float16, masks (N + 1, L)) on the CPU of a text tower (a CLIP or a
    `CLIPTextModelWithProjection`) reading `texts` followed by the empty prompt, padded to its length."""
    import torch

    from ..models.clip import embed_texts

    length = getattr(text_encoder.config, "text_config", text_encoder.config).max_position_embeddings
    _, states, masks = embed_texts(text_encoder, tokenizer, list(texts) + [""], length, states_dtype=torch.float16)
    return states, masks


def frozen_text_states(text_dir, data_dir, records, caption_column: str, cache_dir=None, device=None):
    """(token states (N, L, H) in float16, masks (N, L)) of the text tower `load_decoder_text_encoder(text_dir)`
    reads, over the text rows of `frozen_clip_features` (every distinct phrasing, then ""); kept, with
    `cache_dir`, in `cache_dir/text_states.safetensors`."""
    from ..models.clip import load_decoder_text_encoder

    text_encoder, tokenizer = load_decoder_text_encoder(text_dir)
    texts, _ = phrasing_table(records, caption_column)

    def compute():
        text_encoder.eval().to(device or "cpu")
        states, masks = text_states(text_encoder, tokenizer, texts)
        text_encoder.to("cpu")
        return {"states": states, "masks": masks}

    if cache_dir is None:
        features = compute()
    else:
        key = {
            "text_encoder": file_stamp(text_dir),
            "data": data_stamp(data_dir),
            "records": len(records),
            "texts": len(texts),
            "caption_column": caption_column,
        }
        features = cached_features(Path(cache_dir) / "text_states.safetensors", key, compute)
    return features["states"], features["masks"]
