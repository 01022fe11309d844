"""Published unCLIP checkpoints, loaded as they are on the hub: Karlo (diffusers' `UnCLIPPipeline` layout, e.g.
kakaobrain/karlo-v1-alpha) and Kandinsky 2.2 (a `KandinskyV22Pipeline` decoder folder and its prior folder).

The design: genvl loads every component itself, through the same allow-list and checks as its own pipeline
folders (`load_pipeline_components`: nothing the folder names is imported, weights are checked against their
configs), and then draws with diffusers' own pipeline classes built from those components. So a folder never runs
code, Karlo's folder loads although diffusers' loader now refuses its `["unclip", "UnCLIPTextProjModel"]` entry,
and for a seed and settings the images are diffusers' images: the sampling loops (Karlo's text projection and two
super-resolution stages, Kandinsky's image-embedding UNet and MoVQ) are one implementation, diffusers'.
LoRA and IA³ adapters in PEFT's format load onto them as onto genvl's pipelines (`load_lora_weights`,
`set_adapters`, `fuse_lora`, ...): an adapter folder holds one adapter for the decoder, or one subfolder per
network named after it (Karlo: `decoder`, `prior`, `text_encoder`; Kandinsky: `unet`, `prior_prior`,
`prior_text_encoder`). Kandinsky's decoder also takes diffusers' other schedulers, and its prior's CLIP towers
score images against the prompt, which best-of-K draws rank by; its prior's image tower gives variations of an
image and frames between images and prompts (`mix`), and with `set_embedding_cache` that tower runs once per image
across `clip_scores` and `mix` calls. Karlo's loop steps its UnCLIPScheduler with arguments other schedulers do not
take, and it has no image tower: those commands, and an embedding cache, refuse it in one line.
"""

from pathlib import Path

import torch
from diffusers import KandinskyV22CombinedPipeline, KandinskyV22Pipeline, KandinskyV22PriorPipeline, UnCLIPPipeline

from ..cache import EmbeddingCacheMixin
from ..io.components import load_pipeline_components
from ..io.folders import read_json
from ..lora import LoraMixin

KARLO = "UnCLIPPipeline"
KANDINSKY_DECODER = "KandinskyV22Pipeline"
# the Kandinsky 2.2 prior folder names its own pipeline; its first upload named the 2.1 prior pipeline, whose
# components are the same
KANDINSKY_PRIORS = ("KandinskyV22PriorPipeline", "KandinskyPriorPipeline")
PUBLISHED = {KARLO: "a Karlo (UnCLIPPipeline)", KANDINSKY_DECODER: "a Kandinsky 2.2 decoder"}
PUBLISHED.update(dict.fromkeys(KANDINSKY_PRIORS, "a Kandinsky 2.2 prior"))


def published_layout(folder) -> str | None:
    """The `_class_name` of `folder`'s model_index.json if it is a published layout genvl loads, else None."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return None
    data = read_json(index)
    name = data.get("_class_name") if isinstance(data, dict) else None
    return name if name in PUBLISHED else None


class KarloPipeline(LoraMixin, UnCLIPPipeline):
    """diffusers' `UnCLIPPipeline` with genvl's adapter methods."""

    lora_components = ("decoder", "prior", "text_encoder")

    def set_embedding_cache(self, cache) -> None:
        raise ValueError("a Karlo (UnCLIPPipeline) folder has no image tower, so it has no image encodings to cache")


class KandinskyPipeline(EmbeddingCacheMixin, LoraMixin, KandinskyV22CombinedPipeline):
    """diffusers' `KandinskyV22CombinedPipeline` with genvl's adapter methods, a decoder scheduler of one's
    choice, CLIP scores from the prior's own CLIP towers, and an embedding cache for its image tower."""

    lora_components = ("unet", "prior_prior", "prior_text_encoder")

    def set_decoder_scheduler(self, scheduler_class, **config):
        """Draw with `scheduler_class` (a diffusers scheduler) built from the decoder scheduler's config."""
        scheduler = scheduler_class.from_config(self.scheduler.config, **config)
        self.register_modules(scheduler=scheduler)
        self.decoder_pipe.register_modules(scheduler=scheduler)  # the combined pipeline draws through it
        return self

    @torch.no_grad()
    def mix(
        self,
        sources,
        weights,
        num_images: int = 1,
        generator=None,
        prior_num_inference_steps: int = 25,
        prior_guidance_scale: float = 4.0,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        height: int = 512,
        width: int = 512,
    ):
        """Images drawn from the weighted sum of the CLIP image embeddings of `sources` (PIL images, embedded by
        the prior's image tower, or prompts, through the prior), as diffusers' prior `interpolate` and decoder
        draw them: one source at weight 1 gives variations of an image, two at (1 - t, t) a frame between them.
        The sources are taken in order, so the prompts draw from `generator` as `interpolate` draws."""
        prior = dict(
            num_images_per_prompt=num_images,
            num_inference_steps=prior_num_inference_steps,
            generator=generator,
            guidance_scale=prior_guidance_scale,
        )
        parts = []
        for source, weight in zip(sources, weights, strict=True):
            if isinstance(source, str):
                embeds = self.prior_pipe(source, **prior).image_embeds
            else:
                embeds = self.image_embeds([source]).repeat(num_images, 1)
            parts.append(embeds[None] * weight)
        image_embeds = torch.cat(parts).sum(dim=0)
        negative = self.prior_pipe("", **prior).negative_image_embeds  # the empty prompt's unconditional draw
        return self.decoder_pipe(
            image_embeds=image_embeds,
            negative_image_embeds=negative,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            generator=generator,
        ).images

    @torch.no_grad()
    def image_embeds(self, images) -> torch.Tensor:
        """The prior's image-tower embeddings (N, E) of PIL images, as diffusers' prior makes them (not unit
        length), through the embedding cache when one is set."""
        encoder, processor = self.prior_image_encoder, self.prior_image_processor
        rows = [processor(image, return_tensors="pt").pixel_values[0] for image in images]

        def encode(batch):
            return encoder(torch.stack(batch).to(encoder.device, encoder.dtype)).image_embeds

        return self.cached_encode(encoder, rows, encode)

    @torch.no_grad()
    def clip_scores(self, images, prompt: str) -> torch.Tensor:
        """Cosine similarity of each PIL image with `prompt`, in the space of the prior's CLIP towers (the
        image encoder whose embeddings the prior learnt to predict, and the text encoder it reads)."""
        from ..models.clip import joined_towers, text_similarity

        embeds = self.image_embeds(images).float()
        clip = joined_towers(self.prior_image_encoder, self.prior_text_encoder)
        unit = embeds / embeds.norm(dim=-1, keepdim=True)
        return text_similarity(clip, self.prior_tokenizer, unit, [prompt], padding="longest")[:, 0]


def load_karlo(folder, dtype=None) -> KarloPipeline:
    """A `KarloPipeline` on the components of a Karlo folder, each loaded and checked by genvl."""
    return KarloPipeline(**load_pipeline_components(folder, UnCLIPPipeline, dtype))


def load_kandinsky(decoder_folder, prior_folder, dtype=None) -> KandinskyPipeline:
    """A `KandinskyPipeline` on the components of a Kandinsky 2.2 decoder folder and its prior folder, each loaded
    and checked by genvl."""
    decoder = load_pipeline_components(decoder_folder, KandinskyV22Pipeline, dtype)
    prior = load_pipeline_components(prior_folder, KandinskyV22PriorPipeline, dtype, class_names=KANDINSKY_PRIORS)
    return KandinskyPipeline(**decoder, **{f"prior_{name}": part for name, part in prior.items()})


def scheduler_folders(layout: str, folder, prior_folder=None) -> dict[str, Path]:
    """{stage: its scheduler folder} of a published layout, for checking step counts before anything loads."""
    folder = Path(folder)
    if layout == KARLO:
        return {stage: folder / f"{stage}_scheduler" for stage in ("prior", "decoder", "super_res")}
    folders = {"decoder": folder / "scheduler"}
    if prior_folder is not None:
        folders["prior"] = Path(prior_folder) / "scheduler"
    return folders
