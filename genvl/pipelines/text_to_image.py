"""TextToImagePipeline (unCLIP): text -> CLIP text embedding -> (prior) CLIP image embedding -> (decoder) image.

Built from diffusers models and schedulers and a transformers `CLIPModel`; any diffusers scheduler that
supports the models' prediction types can be swapped in (DDPM, DDIM, DPMSolverMultistep, ...).
"""

import copy
import inspect
import random
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..attention import AttentionBackendMixin
from ..cache import EmbeddingCacheMixin
from ..io.components import as_torch_dtype, check_tokenizer, local_folder, pipeline_from_folder
from ..io.images import names_an_image_file, pixels_to_uint8, preprocess_each
from ..io.outputs import weights_readable_as_umask
from ..lora import LoraMixin
from ..models import unclip  # noqa: F401  (from_pretrained finds UnclipConditioner by its module's name)
from ..models.clip import (
    TextEncoding,
    clip_text_length,
    embed_at_clip_size,
    embed_pixels,
    embed_texts,
    encode_texts,
    text_similarity,
    text_vocabulary,
    warn_if_truncated,
)
from ..models.safety import request_texts
from ..world.prompts import classic_caption
from .arguments import at_least, finite, image_list, text_list
from .defaults import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, DEFAULT_TEXT_GUIDANCE

# the worlds whose canonical captions a pipeline's `prompt_world` may say its text side learnt (see `drawn_prompts`)
PROMPT_WORLDS = {"classic": classic_caption}

# candidates (num_candidates) drawn at once for each image: memory stays that of this many images per image,
# however many candidates are asked for
CANDIDATE_CHUNK = 8

# the lowest log signal-to-noise ratio a DPM-Solver step may start from on the squared-cosine schedule (diffusers'
# advice for that schedule; about timestep 995 of 1,000)
COSINE_LAMBDA_MIN = -5.1


@dataclass
class TextToImageOutput(BaseOutput):
    """`images`: a list of PIL images, an (N, H, W, 3) array or an (N, 3, H, W) tensor in [0, 1];
    `image_embeds`: the CLIP image embeddings the decoder was conditioned on (N, E); `flagged`: for each image,
    the blocked concepts the `safety_checker` found in it (such an image is black), or None without a checker;
    `prompts`: for each image, the text it was drawn from (`drawn_prompts`), or None where no prompt was."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    image_embeds: torch.Tensor | None = None
    flagged: list[list[str]] | None = None
    prompts: list[str] | None = None


@dataclass
class PromptEncoding(TextEncoding):
    """The `TextEncoding` of negative prompts and prompts, equally many, in the rows that classifier-free guidance
    pairs up: the negative prompts' rows first, then the prompts'."""

    @classmethod
    def join(cls, negatives: TextEncoding, prompts: TextEncoding) -> "PromptEncoding":
        """The rows of `negatives` followed by those of `prompts`."""
        return cls(
            torch.cat([negatives.embeds, prompts.embeds]),
            torch.cat([negatives.states, prompts.states]),
            torch.cat([negatives.mask, prompts.mask]),
        )

    @property
    def count(self) -> int:
        """How many prompts (and negative prompts) it holds."""
        if len(self.mask) % 2:
            raise ValueError(f"a PromptEncoding holds negative prompts and as many prompts, got {len(self.mask)} rows")
        return len(self.mask) // 2

    def negatives(self) -> TextEncoding:
        """The negative prompts' rows."""
        return TextEncoding(self.embeds[: self.count], self.states[: self.count], self.mask[: self.count])

    def prompts(self) -> TextEncoding:
        """The prompts' rows."""
        return TextEncoding(self.embeds[self.count :], self.states[self.count :], self.mask[self.count :])


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between embeddings `a` and `b` (..., E); t in [0, 1]."""
    a_unit, b_unit = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((a_unit * b_unit).sum(-1, keepdim=True).clamp(-1.0, 1.0))
    so = torch.sin(omega)
    if float(so.abs().min()) < 1e-6:  # (anti)parallel: fall back to linear interpolation
        return (1.0 - t) * a + t * b
    return torch.sin((1.0 - t) * omega) / so * a + torch.sin(t * omega) / so * b


def is_prompt(end) -> bool:
    """Whether an interpolation's end is a prompt: a string that names no image file (see `names_an_image_file`)."""
    return isinstance(end, str) and not names_an_image_file(end)


def ends_text(*ends) -> str:
    """The words of an interpolation's ends that are prompts (an image or an image file's path has none), for the
    safety checker: the ends as given and as drawn, where a prompt was rewritten."""
    return "\n".join(dict.fromkeys(end for end in ends if is_prompt(end)))


class TextToImagePipeline(LoraMixin, AttentionBackendMixin, EmbeddingCacheMixin, DiffusionPipeline):
    """Text-to-image in the unCLIP style, plus image variations, interpolation and image-text scoring.

    Components: `clip` (transformers `CLIPModel`), `tokenizer`, `image_processor` (CLIP's), `prior`
    (`PriorTransformer` predicting the standardised image embedding), `prior_scheduler`, `conditioner`
    (`UnclipConditioner`), `decoder` (`UNet2DConditionModel`), `decoder_scheduler`, and `vae`
    (`AutoencoderKL`, optional: without it the decoder works in pixel space), and, optionally, a
    `decoder_text_encoder` (transformers `CLIPTextModelWithProjection`) with its `decoder_tokenizer`, whose token
    states the decoder reads instead of CLIP's own (as Kandinsky's decoder reads a text encoder of its own): the
    prior and the image embeddings stay CLIP's; and, optionally, a `reranker` (another `CLIPModel`) with its
    `reranker_tokenizer`, which picks the best of `num_candidates` images (see `rerank`); and, optionally, a
    `safety_checker` (`genvl.models.safety.SafetyChecker`), run on every image made: an image showing a blocked
    concept, or made for a prompt naming one, is blacked out and the concept named in the output's `flagged` (load
    with `safety_checker=None`, or set the attribute to None, to turn it off). The setting `prompt_world` (in
    model_index.json) names the world whose canonical captions the text side learnt, if it learnt only those:
    prompts are then rewritten into them before drawing (`drawn_prompts`). With `set_embedding_cache`,
    CLIP image embeddings are kept in a shared `EmbeddingCache`. LoRA adapters (PEFT format) load with
    `load_lora_weights`: one adapter folder for the decoder, or subfolders `decoder/`, `prior/`, `clip/`.
    """

    lora_components = ("decoder", "prior", "clip")
    model_cpu_offload_seq = "clip->decoder_text_encoder->prior->conditioner->decoder->vae->reranker"
    _optional_components = [
        "vae",
        "decoder_text_encoder",
        "decoder_tokenizer",
        "reranker",
        "reranker_tokenizer",
        "safety_checker",
    ]
    config_values = ("prompt_world",)  # settings in model_index.json, not components

    def __init__(
        self,
        clip,
        tokenizer,
        image_processor,
        prior,
        prior_scheduler,
        conditioner,
        decoder,
        decoder_scheduler,
        vae=None,
        decoder_text_encoder=None,
        decoder_tokenizer=None,
        reranker=None,
        reranker_tokenizer=None,
        safety_checker=None,
        prompt_world: str | None = None,
    ):
        super().__init__()
        if prompt_world is not None and not (isinstance(prompt_world, str) and prompt_world in PROMPT_WORLDS):
            raise ValueError(f"prompt_world must be null or one of {', '.join(PROMPT_WORLDS)}, got {prompt_world!r}")
        if (decoder_text_encoder is None) != (decoder_tokenizer is None):
            raise ValueError("decoder_text_encoder and decoder_tokenizer go together: pass both or neither")
        if (reranker is None) != (reranker_tokenizer is None):
            raise ValueError("reranker and reranker_tokenizer go together: pass both or neither")
        self.register_modules(
            clip=clip,
            tokenizer=tokenizer,
            image_processor=image_processor,
            prior=prior,
            prior_scheduler=prior_scheduler,
            conditioner=conditioner,
            decoder=decoder,
            decoder_scheduler=decoder_scheduler,
            vae=vae,
            decoder_text_encoder=decoder_text_encoder,
            decoder_tokenizer=decoder_tokenizer,
            reranker=reranker,
            reranker_tokenizer=reranker_tokenizer,
            safety_checker=safety_checker,
        )
        self.register_to_config(prompt_world=prompt_world)
        self.output_processor = VaeImageProcessor(do_resize=False)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, dtype=None, torch_dtype=None, local_files_only=True, **components
    ):
        """Load a pipeline folder (a local path, or a hub id already in the Hugging Face cache). Components are
        resolved from an allow-list of classes (see `genvl.io.components`): nothing the folder names is imported.
        A component passed by name replaces the folder's, which is then not read (`safety_checker=None`: none)."""
        path = local_folder(pretrained_model_name_or_path, local_files_only)
        pipeline = pipeline_from_folder(cls, path, as_torch_dtype(dtype or torch_dtype), given=components)
        for tokenizer, model in (
            ("tokenizer", "clip"),
            ("decoder_tokenizer", "decoder_text_encoder"),
            ("reranker_tokenizer", "reranker"),
        ):
            model = getattr(pipeline, model)
            if model is not None:
                check_tokenizer(path / tokenizer, getattr(pipeline, tokenizer), text_vocabulary(model))
        return pipeline

    def save_pretrained(self, save_directory, **kwargs):
        self.check_no_adapters()
        kwargs.setdefault("safe_serialization", True)
        with weights_readable_as_umask(save_directory):
            super().save_pretrained(save_directory, **kwargs)

    # ---- encoders -------------------------------------------------------------------------------------

    def set_schedulers(self, scheduler_class, **config):
        """Swap both stages' schedulers for `scheduler_class` (a diffusers scheduler class), built from the
        current ones' configs with `config` overriding, e.g. `set_schedulers(DPMSolverMultistepScheduler)`.

        On the squared-cosine schedule, a scheduler that takes `lambda_min_clipped` (DPM-Solver++) gets -5.1
        unless `config` says otherwise: without it, a solver that starts at the last training step (as with
        `timestep_spacing="trailing"`) divides by an alpha of 2e-9 there and its first step blows up."""
        for name in ("prior_scheduler", "decoder_scheduler"):
            current = getattr(self, name).config
            extra = {}
            if (
                current.get("beta_schedule") == "squaredcos_cap_v2"
                and "lambda_min_clipped" in inspect.signature(scheduler_class.__init__).parameters
            ):
                extra["lambda_min_clipped"] = COSINE_LAMBDA_MIN
            setattr(self, name, scheduler_class.from_config(current, **{**extra, **config}))
        return self

    def for_another_thread(self) -> "TextToImagePipeline":
        """A copy that shares the networks and their weights but has its own schedulers (whose step state a
        shared one would mix up) and its own tokenizer (a fast tokenizer keeps its padding and truncation
        settings between calls, so another thread's call can unpad this one's batch), for calls from several
        threads at once."""
        twin = copy.copy(self)
        twin.tokenizer = copy.deepcopy(self.tokenizer)
        twin.decoder_tokenizer = copy.deepcopy(self.decoder_tokenizer)
        twin.reranker_tokenizer = copy.deepcopy(self.reranker_tokenizer)
        twin.prior_scheduler = copy.deepcopy(self.prior_scheduler)
        twin.decoder_scheduler = copy.deepcopy(self.decoder_scheduler)
        return twin

    def quantize(self, mode: str = "int8"):
        """Quantize the linear layers of the text towers (CLIP's, and the decoder's own when it has one) to int8
        for CPU inference (`genvl.quantize`); the image tower, prior and decoder stay as they are."""
        from ..quantize import quantize_linear_layers

        quantize_linear_layers(self.clip, mode, parts=("text_model", "text_projection"))
        if self.decoder_text_encoder is not None:
            quantize_linear_layers(self.decoder_text_encoder, mode)
        return self

    def encode_prompt(self, prompts: list[str]) -> PromptEncoding:
        """CLIP's `PromptEncoding` of `prompts`, the negative prompts followed by as many prompts, that the prior
        reads."""
        return _encode_prompts(self.clip, self.tokenizer, prompts, self.prior.config.num_embeddings)

    def encode_decoder_prompt(self, prompts: list[str], text: PromptEncoding | None = None) -> PromptEncoding:
        """The `PromptEncoding` of `prompts` (negative prompts, then prompts) whose token states the decoder reads:
        the `decoder_text_encoder`'s, or else CLIP's (`text`, the `encode_prompt(prompts)` already made, when it
        is given)."""
        if self.decoder_text_encoder is None:
            return text if text is not None else self.encode_prompt(prompts)
        length = self.decoder_text_encoder.config.max_position_embeddings
        return _encode_prompts(self.decoder_text_encoder, self.decoder_tokenizer, prompts, length)

    def encode_image(self, images) -> torch.Tensor:
        """CLIP image embeddings (B, E), unit length, of PIL images or paths (each loaded and preprocessed on its
        own, so that no more than one is held at full size)."""
        rows = list(preprocess_each(self.image_processor, images))
        return self.cached_encode(
            self.clip, rows, lambda batch: embed_pixels(self.clip, torch.stack(batch)), self.image_processor.size
        )

    def drawn_prompts(self, prompts: list[str], generator=None) -> list[str]:
        """The text each image of `prompts` (one per image) is drawn from. With `prompt_world` set, a prompt the
        world's words read (`genvl.world.typed.read_prompt`) becomes the canonical caption of a scene it asks for
        ("red bicycle, digital art": "a small red bicycle on the left"; see `genvl.world.prompts.classic_caption`),
        what it leaves open (colour, size, place, relation) drawn from the image's seed: its generator's
        `initial_seed()` (a list of generators, one per image), that and the image's index (one generator), or
        torch's global generator (None). Other prompts, and every prompt without `prompt_world`, are drawn as
        given."""
        rewrite = PROMPT_WORLDS.get(self.config.get("prompt_world"))
        if rewrite is None:
            return list(prompts)
        if isinstance(generator, list):
            seeds = [g.initial_seed() for g in generator]
        elif generator is not None:
            seeds = [f"{generator.initial_seed()}/{i}" for i in range(len(prompts))]
        else:
            seeds = torch.randint(2**62, (len(prompts),)).tolist()
        return [rewrite(prompt, random.Random(seed)) or prompt for prompt, seed in zip(prompts, seeds)]

    @torch.no_grad()
    def score(self, images, texts: list[str]) -> torch.Tensor:
        """CLIP cosine similarity of every image with every text: (len(images), len(texts)); an image or a text
        alone is one."""
        texts = text_list(texts, "texts")
        return text_similarity(self.clip, self.tokenizer, self.encode_image(image_list(images)), texts)

    @torch.no_grad()
    def rerank(self, images: torch.Tensor, prompts: list[str], num_candidates: int):
        """Which image of each run of `num_candidates` (rows k * num_candidates ... of `images`, (N, 3, H, W) in
        [-1, 1]) the `reranker` scores most alike its prompt `prompts[k]`: (row indices (N / num_candidates,), their
        scores), by cosine similarity, the images rounded to 8 bits as a saved PNG would be, resized to the
        reranker's input size and normalised with the mean and std of the pipeline's `image_processor`. Without a
        `reranker`, the pipeline's own CLIP scores them."""
        model, tokenizer = (
            (self.clip, self.tokenizer) if self.reranker is None else (self.reranker, self.reranker_tokenizer)
        )
        uint8 = pixels_to_uint8(images)
        image_embeds = embed_at_clip_size(model, self.image_processor, uint8, batch_size=len(uint8))
        text_embeds = embed_texts(model, tokenizer, prompts, clip_text_length(model, tokenizer))[0].float()
        similarity = (image_embeds.view(len(prompts), num_candidates, -1) * text_embeds[:, None]).sum(-1)
        scores, best = similarity.max(dim=1)
        return best + torch.arange(len(prompts)) * num_candidates, scores

    # ---- the two diffusion stages ---------------------------------------------------------------------

    def _denoise(self, scheduler, model_fn, latents, num_inference_steps, guidance_scales, generator):
        """Run `scheduler` from `latents` (unit noise). `guidance_scales`: () for no guidance, where
        `model_fn(x, t)` sees the conditional rows only; (s,) for classifier-free guidance over the stacked rows
        [unconditional; conditional], as `uncond + s (cond - uncond)`; (s1, s2) for guidance over the rows
        [unconditional; partly conditional; conditional], as `uncond + s1 (partly - uncond) + s2 (cond - partly)`."""
        scheduler.set_timesteps(num_inference_steps, device=latents.device)
        latents = latents * scheduler.init_noise_sigma
        copies = len(guidance_scales) + 1
        # as diffusers' prepare_extra_step_kwargs: deterministic schedulers (UniPC, Heun, PNDM) take no generator
        drawing = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        for t in self.progress_bar(scheduler.timesteps):
            x = scheduler.scale_model_input(latents, t)
            predictions = model_fn(torch.cat([x] * copies), t).chunk(copies)
            prediction = predictions[0]
            for scale, (weaker, stronger) in zip(guidance_scales, zip(predictions, predictions[1:])):
                prediction = prediction + scale * (stronger - weaker)
            latents = scheduler.step(prediction, t, latents, **drawing).prev_sample
        return latents

    def run_prior(self, text: PromptEncoding, num_inference_steps, guidance_scale, generator, latents=None):
        """Image embeddings (N, E), unit length. `text` is `encode_prompt(negative prompts + prompts)`, one
        prompt per image."""
        check_sampling("prior", num_inference_steps, guidance_scale)
        # the prior attends in the embedding space
        text = PromptEncoding(text.embeds, self.clip.text_projection(text.states), text.mask)
        n, dim = text.count, self.prior.config.embedding_dim
        if latents is None:
            latents = randn_tensor((n, dim), generator=generator, device=self.clip.device, dtype=text.embeds.dtype)
        elif latents.shape != (n, dim):
            raise ValueError(f"prior latents must have shape {(n, dim)}, got {tuple(latents.shape)}")
        latents = latents.to(device=self.clip.device, dtype=text.embeds.dtype)

        scales = (guidance_scale,) if guidance_scale > 1.0 else ()
        rows = text if scales else text.prompts()  # without guidance the negative prompts are not read

        def model_fn(x, t):
            return self.prior(
                x,
                timestep=t,
                proj_embedding=rows.embeds,
                encoder_hidden_states=rows.states,
                attention_mask=rows.mask.bool(),
            ).predicted_image_embedding

        latents = self._denoise(self.prior_scheduler, model_fn, latents, num_inference_steps, scales, generator)
        image_embeds = self.prior.post_process_latents(latents)
        return image_embeds / image_embeds.norm(dim=-1, keepdim=True)

    def run_decoder(
        self,
        image_embeds,
        text: PromptEncoding,
        num_inference_steps,
        guidance_scale,
        generator,
        latents=None,
        text_guidance_scale=None,
    ):
        """Images (N, 3, H, W) in [-1, 1] from unit image embeddings and the text tokens of
        `text = encode_decoder_prompt(negative prompts + prompts)`.

        Guidance: by default `guidance_scale` pushes from the unconditional prediction (no image embedding, the
        negative prompt) towards the conditional one (image embedding and prompt). With a `text_guidance_scale`
        of its own, the image embedding and the text are guided apart, as `uncond + guidance_scale (image -
        uncond) + text_guidance_scale (image and prompt - image)`, where "image" sees the embedding with the
        negative prompt: each step's network evaluation then runs three blocks of rows instead of two. Equal
        scales give the joint guidance."""
        check_sampling("decoder", num_inference_steps, guidance_scale, text_guidance_scale)
        negatives, prompts = text.negatives(), text.prompts()
        n = image_embeds.shape[0]
        no_image = torch.zeros_like(image_embeds)
        if text_guidance_scale is not None and text_guidance_scale != guidance_scale:
            scales = (guidance_scale, text_guidance_scale)
            embeds = torch.cat([no_image, image_embeds, image_embeds])
            states = torch.cat([negatives.states, negatives.states, prompts.states])
            mask = torch.cat([negatives.mask, negatives.mask, prompts.mask])
        elif guidance_scale > 1.0:
            scales = (guidance_scale,)
            embeds, states, mask = torch.cat([no_image, image_embeds]), text.states, text.mask
        else:
            scales, embeds, states, mask = (), image_embeds, prompts.states, prompts.mask
        context = self.conditioner(embeds, states)
        tokens = self.conditioner.config.image_tokens
        context_mask = torch.cat([mask.new_ones(len(mask), tokens), mask], dim=1)
        config = self.decoder.config
        shape = (n, config.in_channels, config.sample_size, config.sample_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=image_embeds.device, dtype=image_embeds.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        latents = latents.to(device=image_embeds.device, dtype=image_embeds.dtype)

        def model_fn(x, t):
            return self.decoder(
                x, t, encoder_hidden_states=context, class_labels=embeds, encoder_attention_mask=context_mask
            ).sample

        latents = self._denoise(self.decoder_scheduler, model_fn, latents, num_inference_steps, scales, generator)
        if self.vae is None:
            return latents.clamp(-1, 1)
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample.clamp(-1, 1)

    def postprocess(self, images: torch.Tensor, output_type: str = "pil"):
        """Images (N, 3, H, W) in [-1, 1] as PIL images, an (N, H, W, 3) array ("np") or a tensor in [0, 1] ("pt").
        An image that is not finite numbers is an error, never a black PNG."""
        if not bool(torch.isfinite(images).all()):
            raise ValueError(
                "the pipeline made images that are not finite numbers (a guidance scale too large for its "
                "numbers, or broken weights or schedules)"
            )
        return self.output_processor.postprocess(images.float(), output_type=output_type)

    def run_safety_checker(self, images: torch.Tensor, prompts: list[str] | None = None):
        """(images, flagged) of images (N, 3, H, W) in [-1, 1]: with a `safety_checker`, each image that shows a
        blocked concept, or was made for a prompt that names one (`prompts`: the prompt of each image), turned
        black and, per image, the concepts found (in the checker's order); without one, the images and None. The
        checker reads the images rounded to 8 bits, as a saved PNG holds them."""
        if self.safety_checker is None:
            return images, None
        flagged = self.safety_checker.check(pixels_to_uint8(images).float() / 127.5 - 1)
        if prompts is not None:
            if len(prompts) != len(images):
                raise ValueError(f"got {len(prompts)} prompts for {len(images)} images to check")
            flagged = self.safety_checker.either(flagged, self.safety_checker.check_text(prompts))
        hit = torch.tensor([bool(found) for found in flagged], device=images.device).view(-1, 1, 1, 1)
        return torch.where(hit, torch.full_like(images, -1.0), images), flagged

    def _finish(self, images, image_embeds, output_type, return_dict, prompts=None, drawn=None):
        """The output of `images`, after the safety checker has read them, `prompts` (the user's own, one per
        image) and `drawn` (the text each image was drawn from, where it was drawn from text): a prompt that
        was rewritten is checked as typed and as drawn, so that no rewriting can draw what the checker blocks."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        texts = None if prompts is None else request_texts(prompts, drawn)
        images, flagged = self.run_safety_checker(images, texts)
        images = self.postprocess(images, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, flagged)
        return TextToImageOutput(images=images, image_embeds=image_embeds, flagged=flagged, prompts=drawn)

    # ---- entry points ---------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt,
        negative_prompt=None,
        num_images_per_prompt: int = 1,
        prior_num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        decoder_num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        prior_guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        decoder_guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        generator=None,
        prior_latents=None,
        latents=None,
        output_type: str = "pil",
        return_dict: bool = True,
        decoder_text_guidance_scale: float | None = DEFAULT_TEXT_GUIDANCE,
        num_candidates: int = 1,
        rewrite_prompts: bool = True,
    ):
        """Generate `num_images_per_prompt` images per prompt.

        With `rewrite_prompts` and the pipeline's `prompt_world` set, each image is drawn from its prompt
        rewritten into the world's canonical captions (`drawn_prompts`; the output's `prompts` says what each was
        drawn from); the safety checker reads the prompts as given.

        The decoder is guided towards the image embedding at `decoder_guidance_scale` and, on top of it, towards
        the prompt's words at `decoder_text_guidance_scale` (see `run_decoder`); `None` (or an equal scale) guides
        the two together at `decoder_guidance_scale`, with two blocks of rows per decoder step instead of three.

        `generator` may be a list with one `torch.Generator` per image, so that each image's noise depends on its
        own generator only (its pixels then match a call of another batch size up to float rounding; made alone
        on one thread, as `genvl generate` does, they match bit for bit);
        `prior_latents` (N, E) and `latents` (N, C, h, w) fix the starting noise of the two stages.

        With `num_candidates` K > 1, each image is the best of K drawn for it, as `rerank` scores them against the
        prompt (the `reranker`, or else CLIP): K times the work per image, but the memory of at most
        `CANDIDATE_CHUNK` (8) candidates per image, which are drawn at once, the best so far kept between draws.
        The K candidates of image i are drawn one after another from its generator, so a list of generators still
        gives per-image reproducibility, and `prior_latents` and `latents` then take K rows per image (N * K rows,
        image i's candidates together).
        """
        prompts = text_list(prompt, "prompt")
        negatives = text_list(negative_prompt, "negative_prompt") if negative_prompt is not None else [""]
        if len(negatives) == 1:
            negatives = negatives * len(prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"got {len(negatives)} negative prompts for {len(prompts)} prompts")
        num_images_per_prompt = at_least(num_images_per_prompt, "num_images_per_prompt")
        num_candidates = at_least(num_candidates, "num_candidates")
        if isinstance(generator, list) and len(generator) != len(prompts) * num_images_per_prompt:
            raise ValueError(f"got {len(generator)} generators for {len(prompts) * num_images_per_prompt} images")
        asked = [p for p in prompts for _ in range(num_images_per_prompt)]
        prompts = self.drawn_prompts(asked, generator) if rewrite_prompts else asked
        negatives = [p for p in negatives for _ in range(num_images_per_prompt)]
        dim = self.prior.config.embedding_dim
        for name, given, shape in (
            ("prior latents", prior_latents, (len(prompts) * num_candidates, dim)),
            ("latents", latents, (len(prompts) * num_candidates, *self.latent_shape())),
        ):
            if given is not None and tuple(given.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(given.shape)}")
        best = None  # (images, image_embeds, scores) of the best candidates so far, one row per image
        for start in range(0, num_candidates, CANDIDATE_CHUNK):
            count = min(CANDIDATE_CHUNK, num_candidates - start)
            # rows of image i's candidates start ... start + count, together, as the latents hold them
            take = torch.tensor(
                [i * num_candidates + k for i in range(len(prompts)) for k in range(start, start + count)]
            )
            chunk_generator = [g for g in generator for _ in range(count)] if isinstance(generator, list) else generator
            images, image_embeds = self._draw(
                [p for p in prompts for _ in range(count)],
                [p for p in negatives for _ in range(count)],
                chunk_generator,
                None if prior_latents is None else prior_latents[take],
                None if latents is None else latents[take],
                prior_num_inference_steps,
                decoder_num_inference_steps,
                prior_guidance_scale,
                decoder_guidance_scale,
                decoder_text_guidance_scale,
            )
            if num_candidates == 1:
                break
            rows, scores = self.rerank(images, prompts, count)
            chosen = (images[rows.to(images.device)], image_embeds[rows.to(image_embeds.device)], scores)
            best = chosen if best is None else _keep_better(best, chosen)
        if num_candidates > 1:
            images, image_embeds, _ = best
        return self._finish(images, image_embeds, output_type, return_dict, asked, prompts)

    def latent_shape(self) -> tuple:
        """(C, h, w) of the decoder's starting noise for one image."""
        config = self.decoder.config
        return config.in_channels, config.sample_size, config.sample_size

    def _draw(
        self,
        prompts,
        negatives,
        generator,
        prior_latents,
        latents,
        prior_steps,
        decoder_steps,
        prior_guidance,
        decoder_guidance,
        decoder_text_guidance,
    ):
        """(images (N, 3, H, W) in [-1, 1], image embeddings (N, E)) of one image per prompt: prior, then decoder."""
        text = self.encode_prompt(negatives + prompts)
        image_embeds = self.run_prior(text, prior_steps, prior_guidance, generator, prior_latents)
        images = self.run_decoder(
            image_embeds,
            self.encode_decoder_prompt(negatives + prompts, text),
            decoder_steps,
            decoder_guidance,
            generator,
            latents,
            decoder_text_guidance,
        )
        return images, image_embeds

    @torch.no_grad()
    def image_variation(
        self,
        image=None,
        num_images: int = 1,
        decoder_num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        decoder_guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        generator=None,
        latents=None,
        output_type: str = "pil",
        return_dict: bool = True,
        image_embeds=None,
    ):
        """Variations of `image` (PIL image or path): decode its CLIP image embedding with fresh noise. Pass
        `image_embeds` (1, E) from `encode_image` instead of `image` to reuse an encoding."""
        if (image is None) == (image_embeds is None):
            raise ValueError("pass either image or image_embeds")
        num_images = at_least(num_images, "num_images")
        if image_embeds is not None and (image_embeds.dim() != 2 or len(image_embeds) != 1):
            raise ValueError(f"image_embeds must be one embedding, (1, E), got {tuple(image_embeds.shape)}")
        if isinstance(generator, list) and len(generator) != num_images:
            raise ValueError(f"got {len(generator)} generators for {num_images} images")
        embeds = (self.encode_image([image]) if image_embeds is None else image_embeds).repeat(num_images, 1)
        images = self.run_decoder(
            embeds,
            self.encode_decoder_prompt([""] * 2 * num_images),
            decoder_num_inference_steps,
            decoder_guidance_scale,
            generator,
            latents,
        )
        return self._finish(images, embeds, output_type, return_dict)

    @torch.no_grad()
    def interpolate(
        self,
        start,
        end,
        frames: int = 5,
        prior_num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        decoder_num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        prior_guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        decoder_guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        generator=None,
        output_type: str = "pil",
        return_dict: bool = True,
        batch_size: int = 32,
        rewrite_prompts: bool = True,
    ):
        """`frames` images along the slerp in CLIP image-embedding space between two ends; each end is a
        prompt (str, through the prior) or an image (PIL image or path). All frames share one decoder noise, and
        the decoder reads the ends' words (an image's: the empty prompt) mixed as the frame's embedding is
        (`mixed_words`). The frames are decoded `batch_size` at a time (see `interpolation_frames`, which yields
        them as they come).
        With `rewrite_prompts` and the pipeline's `prompt_world` set, a prompt end is drawn as
        `interpolation_ends` rewrites it; the safety checker reads the ends as given and as drawn."""
        drawn = self.interpolation_ends(start, end, generator, rewrite_prompts)  # the generator's first draws
        parts = list(
            self.interpolation_frames(
                *drawn,
                frames,
                prior_num_inference_steps,
                decoder_num_inference_steps,
                prior_guidance_scale,
                decoder_guidance_scale,
                generator,
                batch_size,
                rewrite_prompts=False,
            )
        )
        images, embeds = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return self._finish(images, embeds, output_type, return_dict, [ends_text(start, end, *drawn)] * len(images))

    def interpolation_ends(self, start, end, generator=None, rewrite_prompts: bool = True) -> list:
        """[start, end] as an interpolation draws from them: an image as given, a prompt as `drawn_prompts`
        rewrites it (with `rewrite_prompts`), the start as the first of two images drawn with `generator` (one
        `torch.Generator`, or None) and the end as the second."""
        return self._drawn_ends([start, end], list(map(is_prompt, (start, end))), generator, rewrite_prompts)

    def _drawn_ends(self, ends: list, texts: list[bool], generator, rewrite_prompts: bool) -> list:
        """`interpolation_ends` of `ends`, whose prompts `texts` marks."""
        if not rewrite_prompts or not any(texts):
            return ends
        drawn = self.drawn_prompts([point if text else "" for point, text in zip(ends, texts)], generator)
        return [new if text else point for point, new, text in zip(ends, drawn, texts)]

    @torch.no_grad()
    def interpolation_frames(
        self,
        start,
        end,
        frames: int = 5,
        prior_num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        decoder_num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        prior_guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        decoder_guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        generator=None,
        batch_size: int = 32,
        rewrite_prompts: bool = True,
    ):
        """Yield (images (n, 3, H, W) in [-1, 1], image embeddings (n, E)) of `interpolate`'s frames in order,
        `batch_size` at a time: the memory of a batch, however many frames."""
        frames, batch_size = at_least(frames, "frames", 2), at_least(batch_size, "batch_size")
        ends = []
        texts = list(map(is_prompt, (start, end)))  # decided once: a rewritten prompt is not then taken for a file
        drawn = self._drawn_ends([start, end], texts, generator, rewrite_prompts)
        for end_point, text in zip(drawn, texts):
            if text:
                ends.append(
                    self.run_prior(
                        self.encode_prompt(["", end_point]), prior_num_inference_steps, prior_guidance_scale, generator
                    )
                )
            else:
                ends.append(self.encode_image([end_point]))
        # the decoder reads the words of the ends that are prompts (the empty prompt for an image), mixed as the
        # frame's embedding is: it takes what the image embedding leaves out (colours, placing) from them
        words = self.encode_decoder_prompt(["", "", *(point if text else "" for point, text in zip(drawn, texts))])
        noise = randn_tensor((1, *self.latent_shape()), generator=generator, device=ends[0].device, dtype=ends[0].dtype)
        for first in range(0, frames, batch_size):
            count = min(batch_size, frames - first)
            weights = [i / (frames - 1) for i in range(first, first + count)]
            embeds = torch.cat([slerp(ends[0], ends[1], t) for t in weights])
            embeds = embeds / embeds.norm(dim=-1, keepdim=True)
            images = self.run_decoder(
                embeds,
                mixed_words(words, weights),
                decoder_num_inference_steps,
                decoder_guidance_scale,
                generator,
                noise.repeat(count, 1, 1, 1),
            )
            yield images, embeds


def check_sampling(stage: str, num_inference_steps, *guidance_scales) -> None:
    """Refuse a number of steps that is not a positive integer (0 divided by zero, -1 drew an image) and a
    guidance scale that is not a finite number (NaN read as no guidance; infinity made NaN images)."""
    at_least(num_inference_steps, f"{stage} steps")
    for scale in guidance_scales:
        if scale is not None:
            finite(scale, f"{stage} guidance scale")


def mixed_words(words: PromptEncoding, weights: list[float]) -> PromptEncoding:
    """For each weight t, the `PromptEncoding` of a prompt between the two of `words` (negative prompt and prompt
    of each end): embeddings and token states (1 - t) start + t end (`torch.lerp`: exactly an end's at t = 0 and
    1, and where the two are alike), the tokens of either end attended to, and the start's negative prompt."""
    prompts = words.prompts()
    t = torch.tensor(weights, dtype=prompts.states.dtype, device=prompts.states.device)
    mixed = TextEncoding(
        torch.lerp(prompts.embeds[:1], prompts.embeds[1:], t[:, None]),
        torch.lerp(prompts.states[:1], prompts.states[1:], t[:, None, None]),
        torch.maximum(prompts.mask[:1], prompts.mask[1:]).expand(len(weights), -1),
    )
    negative = words.negatives()
    repeat = lambda rows: rows[:1].expand(len(weights), *rows.shape[1:])  # noqa: E731
    return PromptEncoding.join(TextEncoding(*map(repeat, (negative.embeds, negative.states, negative.mask))), mixed)


def _keep_better(best, chosen):
    """Row by row, the (images, image embeddings, scores) of `chosen` where they score higher than `best`'s."""
    better = chosen[2] > best[2]
    return tuple(
        torch.where(better.view(-1, *[1] * (new.dim() - 1)).to(new.device), new, old) for old, new in zip(best, chosen)
    )


def _encode_prompts(text_encoder, tokenizer, prompts: list[str], length: int) -> PromptEncoding:
    """The `PromptEncoding` of `prompts` (negative prompts, then prompts) from a CLIP text tower (a `CLIPModel`'s
    or a `CLIPTextModelWithProjection`), every prompt padded or cut to `length` tokens."""
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise TypeError(f"prompts must be strings, got {type(prompt).__name__}")
    warn_if_truncated(tokenizer, prompts, length)
    text = encode_texts(text_encoder, tokenizer, prompts, length)
    return PromptEncoding(text.embeds, text.states, text.mask)
