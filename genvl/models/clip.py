"""The CLIP dual encoder, in the Hugging Face CLIP format so that public CLIP folders load in its place."""

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .architecture import JsonArchitecture

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
# OpenAI CLIP's normalisation, kept so that public CLIP image processors and ours agree
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass
class ClipArchitecture(JsonArchitecture):
    """Named sizes of a CLIP model; saved as JSON in `configs/` and expanded into a `CLIPConfig`."""

    image_size: int = 64
    patch_size: int = 8
    vision_hidden_size: int = 192
    vision_layers: int = 4
    vision_heads: int = 3
    text_hidden_size: int = 192
    text_layers: int = 4
    text_heads: int = 3
    max_positions: int = 32
    projection_dim: int = 128
    vocab_size: int = 1024


def train_clip_tokenizer(texts, vocab_size: int = 1024, max_length: int = 32):
    """Train a byte-level BPE tokenizer that frames every text as CLIP does: start token, text, end token.

    The end token also pads, and CLIP's text tower pools its first occurrence.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[START_TOKEN, END_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((t.lower() for t in texts), trainer=trainer)
    start, end = tokenizer.token_to_id(START_TOKEN), tokenizer.token_to_id(END_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{START_TOKEN} $A {END_TOKEN}",
        special_tokens=[(START_TOKEN, start), (END_TOKEN, end)],
    )
    from tokenizers import normalizers

    tokenizer.normalizer = normalizers.Lowercase()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=START_TOKEN,
        eos_token=END_TOKEN,
        pad_token=END_TOKEN,
        unk_token=END_TOKEN,
        model_max_length=max_length,
    )


def build_clip(arch: ClipArchitecture, tokenizer):
    """A randomly initialised `CLIPModel` (ViT image tower, causal text tower, both projected)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.text_hidden_size,
        intermediate_size=4 * arch.text_hidden_size,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        max_position_embeddings=arch.max_positions,
        projection_dim=arch.projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        image_size=arch.image_size,
        patch_size=arch.patch_size,
        hidden_size=arch.vision_hidden_size,
        intermediate_size=4 * arch.vision_hidden_size,
        num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.vision_heads,
        projection_dim=arch.projection_dim,
    )
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=arch.projection_dim)
    return CLIPModel(config)


def build_clip_image_processor(image_size: int):
    """CLIP's image processor at `image_size`: resize the short side, centre-crop, normalise."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": image_size},
        resample=3,
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
    )


def text_vocabulary(model) -> int:
    """The vocabulary size of a CLIP model's (or a text tower's) token embedding."""
    return getattr(model.config, "text_config", model.config).vocab_size


def load_clip(path, dtype=None):
    """(CLIPModel, tokenizer, image processor) from a folder in the Hugging Face CLIP layout (ours or public),
    from a text-to-image pipeline folder (its `clip/`, `tokenizer/` and `image_processor/`), or from a folder
    holding CLIP's two towers apart (`image_encoder/` and `text_encoder/`, as Kandinsky 2.2's prior does): the one
    way to load a CLIP. `dtype`: the weights' dtype (default: as stored)."""
    from transformers import CLIPModel

    from ..io.components import load_image_processor, load_tokenizer
    from ..io.folders import check_model_folder, load_transformers_model

    path = check_model_folder(path)
    if (path / "model_index.json").is_file() and (path / "clip" / "config.json").is_file():
        clip = load_transformers_model(CLIPModel, path / "clip", dtype)
        tokenizer = load_tokenizer(path / "tokenizer", text_vocabulary(clip))
        return clip, tokenizer, load_image_processor(path / "image_processor")
    if (path / "model_index.json").is_file() and (path / "image_encoder" / "config.json").is_file():
        clip = clip_of_towers(path / "image_encoder", path / "text_encoder", dtype)
        tokenizer = load_tokenizer(path / "tokenizer", text_vocabulary(clip))
        return clip, tokenizer, load_image_processor(path / "image_processor")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path}: neither a text-to-image pipeline nor a CLIP folder (no model_index.json "
            "with clip/config.json, no config.json)"
        )
    clip = load_transformers_model(CLIPModel, path, dtype)
    return clip, load_tokenizer(path, text_vocabulary(clip)), load_image_processor(path)


def clip_of_towers(image_folder, text_folder, dtype=None):
    """One `CLIPModel` of a `CLIPVisionModelWithProjection` folder and a `CLIPTextModelWithProjection` folder,
    each loaded with genvl's checks (see `joined_towers`)."""
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    from ..io.folders import load_transformers_model

    image = load_transformers_model(CLIPVisionModelWithProjection, image_folder, dtype)
    text = load_transformers_model(CLIPTextModelWithProjection, text_folder, dtype)
    return joined_towers(image, text)


def joined_towers(image_encoder, text_encoder):
    """A `CLIPModel` whose towers are `image_encoder` and `text_encoder` (CLIP's two halves as separate models,
    as Kandinsky's prior holds them), their modules shared, not copied; its logit scale is CLIP's initial one
    (cosine similarities do not use it)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    if image_encoder.config.projection_dim != text_encoder.config.projection_dim:
        raise ValueError(
            f"the image tower projects to {image_encoder.config.projection_dim} dimensions and the text tower to "
            f"{text_encoder.config.projection_dim}: not the two towers of one CLIP"
        )
    config = CLIPConfig(
        text_config=text_encoder.config.to_dict(),
        vision_config=image_encoder.config.to_dict(),
        projection_dim=text_encoder.config.projection_dim,
    )
    with torch.device("meta"):
        clip = CLIPModel(config)
    clip.text_model, clip.text_projection = text_encoder.text_model, text_encoder.text_projection
    clip.vision_model, clip.visual_projection = image_encoder.vision_model, image_encoder.visual_projection
    scale = torch.tensor(config.logit_scale_init_value, dtype=text_encoder.dtype, device=text_encoder.device)
    clip.logit_scale = torch.nn.Parameter(scale, requires_grad=False)
    return clip.eval()


def load_decoder_text_encoder(path):
    """(text tower, tokenizer) whose token states a text-to-image decoder reads: a pipeline folder's
    `decoder_text_encoder/` and `decoder_tokenizer/` when it has them, else its CLIP's; a
    `CLIPTextModelWithProjection` folder; or a CLIP folder (its `CLIPModel`, whose text tower is used)."""
    from transformers import CLIPTextModelWithProjection

    from ..io.components import load_tokenizer
    from ..io.folders import check_model_folder, load_transformers_model

    path = check_model_folder(path)
    if (path / "decoder_text_encoder" / "config.json").is_file():
        text_encoder = load_transformers_model(CLIPTextModelWithProjection, path / "decoder_text_encoder")
        return text_encoder, load_tokenizer(path / "decoder_tokenizer", text_vocabulary(text_encoder))
    config = path / "config.json"
    if config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("model_type") == "clip_text_model":
        text_encoder = load_transformers_model(CLIPTextModelWithProjection, path)
        return text_encoder, load_tokenizer(path, text_vocabulary(text_encoder))
    clip, tokenizer, _ = load_clip(path)
    return clip, tokenizer


def text_tower_of(clip):
    """A `CLIPTextModelWithProjection` with the text tower and text projection of a `CLIPModel`."""
    from transformers import CLIPTextModelWithProjection

    text_encoder = CLIPTextModelWithProjection(clip.config.text_config)
    text_encoder.text_model.load_state_dict(clip.text_model.state_dict())
    text_encoder.text_projection.load_state_dict(clip.text_projection.state_dict())
    return text_encoder.to(clip.device, clip.dtype)


def warn_if_truncated(tokenizer, texts, max_length: int) -> None:
    """Log a warning for each text longer than the `max_length` tokens that the text tower reads."""
    for text, ids in zip(texts, tokenizer(list(texts)).input_ids):
        if len(ids) > max_length:
            shown = text if len(text) <= 40 else text[:40] + "..."
            logger.warning(f'text "{shown}" is {len(ids)} tokens long; only its first {max_length} are read')


def normalize_pixels(images, image_processor):
    """uint8 images (N, 3, H, W) already at the model's size -> CLIP pixel values, as the processor would give."""
    import torch

    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1) * 255
    return (images.float() - mean) / std


def embed_pixels(clip, pixel_values, dtype=None):
    """Unit CLIP image embeddings (N, E), on the model's device, of pixel values (N, 3, S, S) as CLIP's image
    processor gives them. They are normalised in `dtype` (default: the model's)."""
    pixel_values = pixel_values.to(clip.device, clip.dtype)
    embeds = clip.visual_projection(clip.vision_model(pixel_values=pixel_values).pooler_output)
    if dtype is not None:
        embeds = embeds.to(dtype)
    return embeds / embeds.norm(dim=-1, keepdim=True)


def embed_images(clip, image_processor, images, batch_size: int = 256):
    """Unit CLIP image embeddings (N, E), float32 on the CPU, of uint8 images (N, 3, H, W) at the model's size."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            pixels = normalize_pixels(images[start : start + batch_size], image_processor)
            out.append(embed_pixels(clip, pixels, torch.float32).cpu())
    return torch.cat(out)


def embed_at_clip_size(clip, image_processor, images, batch_size: int = 64):
    """Unit CLIP image embeddings (N, E) of uint8 images (N, 3, H, W) at any size, resized to the image tower's
    input size first (bilinear, antialiased, rounded back to 8-bit levels)."""
    import torch

    size = clip.config.vision_config.image_size
    if images.shape[-1] != size:
        images = (
            torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
            .round()
            .clamp(0, 255)
        )
    return embed_images(clip, image_processor, images, batch_size)


@dataclass
class TextEncoding:
    """What a CLIP text tower reads from N texts: unit text embeddings `embeds` (N, E), the last layer's token
    states `states` (N, T, H), and the attention `mask` (N, T) of the padded tokens (1 for a text's tokens)."""

    embeds: "torch.Tensor"
    states: "torch.Tensor"
    mask: "torch.Tensor"


def encode_texts(text_encoder, tokenizer, texts, length: int, dtype=None, padding: str = "max_length") -> TextEncoding:
    """The `TextEncoding` of `texts`, on the device of `text_encoder` (a `CLIPModel`, or a
    `CLIPTextModelWithProjection`), every text cut to `length` tokens and padded to `length` (`padding`
    "max_length") or to the longest text ("longest": fewer tokens to run, but the kernels see another shape, so
    the embeddings differ from "max_length"'s in the last bits). The embeddings are normalised in `dtype`
    (default: the model's); the states stay in the model's."""
    tokens = tokenizer(list(texts), padding=padding, max_length=length, truncation=True, return_tensors="pt")
    device = text_encoder.device
    mask = tokens.attention_mask.to(device)
    out = text_encoder.text_model(input_ids=tokens.input_ids.to(device), attention_mask=mask)
    embeds = text_encoder.text_projection(out.pooler_output)
    if dtype is not None:
        embeds = embeds.to(dtype)
    return TextEncoding(embeds / embeds.norm(dim=-1, keepdim=True), out.last_hidden_state, mask)


def clip_text_length(clip, tokenizer) -> int:
    """The tokens a `CLIPModel` reads of each text: as many as both its tokenizer and its text tower take."""
    return min(getattr(tokenizer, "model_max_length", 77), clip.config.text_config.max_position_embeddings)


def embed_texts(clip, tokenizer, texts, max_length: int, batch_size: int = 256, states_dtype=None):
    """CLIP text features of `texts`, on the CPU: (unit embeddings (N, E), token states (N, L, H), attention
    masks (N, L)), every text padded to `max_length` tokens; the states are kept in `states_dtype` (default: the
    model's)."""
    import torch

    embeds, states, masks = [], [], []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            text = encode_texts(clip, tokenizer, texts[start : start + batch_size], max_length)
            embeds.append(text.embeds.cpu())
            states.append(text.states.to(states_dtype or text.states.dtype).cpu())
            masks.append(text.mask.cpu())
    return torch.cat(embeds), torch.cat(states), torch.cat(masks)


def text_similarity(clip, tokenizer, image_embeds, texts, padding: str = "max_length", batch_size: int = 256):
    """Cosine similarity (N, len(texts)), float32 on the device of `image_embeds`, of unit CLIP image embeddings
    (N, E) with `texts`, each read as far as `clip_text_length`, embedded `batch_size` at a time in the dtype of
    `image_embeds` (see `encode_texts` for `padding`)."""
    import torch

    length = clip_text_length(clip, tokenizer)
    texts = list(texts)
    warn_if_truncated(tokenizer, texts, length)
    with torch.no_grad():
        text_embeds = torch.cat(
            [
                encode_texts(
                    clip, tokenizer, texts[start : start + batch_size], length, image_embeds.dtype, padding
                ).embeds
                for start in range(0, len(texts), batch_size)
            ]
        )
    return image_embeds.float() @ text_embeds.to(image_embeds.device).float().T


def clip_similarity(clip, tokenizer, image_processor, images, texts):
    """Cosine similarity (len(images), len(texts)) of PIL images with texts, the embeddings normalised in float32
    and the texts padded to the longest."""
    import torch

    with torch.no_grad():
        pixels = image_processor(images=list(images), return_tensors="pt").pixel_values
        return text_similarity(clip, tokenizer, embed_pixels(clip, pixels, torch.float32), texts, padding="longest")
