"""`genvl eval t2i`: generate images for held-out prompts and score them.

Scores: the judge's GenEval-style accuracy per category, CLIP R-precision (the true prompt ranked first among
itself and 99 others), the Fréchet distance between generated and real images in CLIP's image-embedding space,
and the caption round trip (the captioner's caption of a generated image names every object of the prompt); in
the other direction, each held-out render captioned, drawn again from its caption and judged against its own
scene graph (`image_round_trip`). The same scores on the real renders of the same prompts come alongside, as the
ceiling to read them against. With `stages=True` the two diffusion stages, and a latent decoder's autoencoder,
are also scored on their own (`stage_scores`).
"""

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..io.imagefolder import load_images, read_metadata
from ..io.images import pixels_to_uint8
from ..models.clip import embed_at_clip_size, embed_images, embed_texts
from ..models.unclip import latent_means
from ..pipelines.defaults import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, DEFAULT_TEXT_GUIDANCE
from ..pipelines.text_to_image import PromptEncoding
from ..world.sprites import ALL_OBJECTS
from .judge import category_accuracy, judge_scene
from .retrieval import mirror_rows

DISTRACTORS = 99


def select_prompts(records: list[dict], count: int) -> list[dict]:
    """`count` records with distinct captions, as evenly spread over the scene layouts as the data allows,
    in file order (so the selection is the same on every run)."""
    by_layout: dict[str, list[dict]] = {}
    seen = set()
    for record in records:
        if record["text"] not in seen:
            seen.add(record["text"])
            by_layout.setdefault(record["scene"]["layout"], []).append(record)
    chosen, queues = [], [list(reversed(group)) for _, group in sorted(by_layout.items())]
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop())
    return chosen


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of feature vectors (N, D) and (M, D)."""
    a, b = a.double(), b.double()
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    mean_term = (a.mean(0) - b.mean(0)).square().sum()
    return float(mean_term + cov_a.trace() + cov_b.trace() - 2 * cross)


def r_precision(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, prompt_of_image: list[int], seed: int = 0
) -> float:
    """Share of images whose own prompt scores higher than each of `DISTRACTORS` other prompts (drawn with a
    fixed seed; all of the others when there are fewer)."""
    similarity = image_embeds.float() @ text_embeds.float().T
    generator = torch.Generator().manual_seed(seed)
    hits = 0
    for row, own in enumerate(prompt_of_image):
        others = torch.tensor([p for p in range(len(text_embeds)) if p != own])
        others = others[torch.randperm(len(others), generator=generator)[:DISTRACTORS]]
        hits += int(similarity[row, own] > similarity[row, others].max())
    return hits / len(prompt_of_image)


def names_all_objects(caption: str, scene: dict) -> bool:
    """Whether a caption names every object of a scene (in the singular or the plural)."""
    words = set(re.findall(r"[a-z]+", caption.lower()))
    return all({obj["name"], ALL_OBJECTS[obj["name"]][1]} & words for obj in scene["objects"])


def judge_images(
    judge,
    images: torch.Tensor,
    scenes: list[dict],
    prompt_of_image: list[int],
    batch_size: int = 64,
    threshold: float | None = None,
) -> dict[str, float]:
    """The judge's GenEval-style accuracy per category of uint8 images (N, 3, H, W); `threshold` overrides
    the judge's own detection threshold."""
    judgements = []
    for start in range(0, len(images), batch_size):
        detections = judge.detect(images[start : start + batch_size].float() / 127.5 - 1, threshold)
        rows = prompt_of_image[start : start + batch_size]
        judgements += [judge_scene(scenes[p], d) for p, d in zip(rows, detections)]
    return category_accuracy(judgements)


def caption_round_trip(
    captioner, images: torch.Tensor, scenes: list[dict], prompt_of_image: list[int], batch_size: int = 64
) -> float:
    """How often `captioner`'s caption of uint8 image i (N, 3, H, W) names every object of
    `scenes[prompt_of_image[i]]`."""
    named = []
    for start in range(0, len(images), batch_size):
        rows = prompt_of_image[start : start + batch_size]
        pil = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images[start : start + batch_size]]
        named += [names_all_objects(c[0], scenes[p]) for c, p in zip(captioner(pil).captions, rows)]
    return float(np.mean(named))


def score_images(
    images: torch.Tensor,
    scenes: list[dict],
    prompt_of_image: list[int],
    text_embeds,
    judge,
    clip,
    clip_processor,
    captioner=None,
    batch_size: int = 64,
    seed: int = 0,
) -> dict:
    """Every score of uint8 images (N, 3, H, W), image i made for (or rendered from) `scenes[prompt_of_image[i]]`.
    Returns the report and the images' CLIP embeddings."""
    image_embeds = embed_at_clip_size(clip, clip_processor, images, batch_size)
    report = {
        "judge": judge_images(judge, images, scenes, prompt_of_image, batch_size),
        "r_precision": r_precision(image_embeds, text_embeds, prompt_of_image, seed),
    }
    if captioner is not None:
        report["round_trip"] = caption_round_trip(captioner, images, scenes, prompt_of_image, batch_size)
    return report, image_embeds


def image_round_trip(
    pipeline, captioner, judge, real: torch.Tensor, scenes: list[dict], batch_size: int, seed: int, **sampling
) -> dict:
    """The other direction: each held-out render (uint8 (N, 3, H, W), of `scenes`) captioned by `captioner`, one
    image generated from that caption (seed `seed + k`), and that image judged against the render's own scene
    graph. Also how often the caption states the scene graph exactly (`parse_caption`)."""
    from ..world.captions import parse_caption, scene_facts

    pil = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in real]
    captions = [
        found[0]
        for start in range(0, len(pil), batch_size)
        for found in captioner(pil[start : start + batch_size]).captions
    ]
    exact = [parse_caption(caption) == scene_facts(scene) for caption, scene in zip(captions, scenes)]
    one_each = {key: value for key, value in sampling.items() if key != "num_candidates"}
    generated = generate_for_prompts(pipeline, captions, 1, batch_size, seed, **one_each)
    return {
        "caption_exact": float(np.mean(exact)),
        "judge": judge_images(judge, generated, scenes, list(range(len(scenes))), batch_size),
        "examples": [{"caption": c, "exact": e} for c, e in zip(captions[:5], exact[:5])],
    }


@torch.no_grad()
def autoencoder_round_trip(vae, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """uint8 images (N, 3, H, W) encoded to their latent means and decoded again by the decoder's autoencoder:
    the most a latent decoder can give back of them."""
    latents = latent_means(vae, images, batch_size)
    return torch.cat([pixels_to_uint8(vae.decode(z.to(vae.device)).sample) for z in latents.split(batch_size)])


@torch.no_grad()
def generate_for_prompts(
    pipeline, prompts: list[str], images_per_prompt: int, batch_size: int, seed: int, progress=None, **sampling
) -> torch.Tensor:
    """uint8 images (len(prompts) * images_per_prompt, 3, H, W); image k is drawn with seed `seed + k`. A call
    makes about `batch_size` images, candidates (`num_candidates` in `sampling`) included."""
    per_call = max(1, batch_size // (images_per_prompt * sampling.get("num_candidates", 1)))
    starts = list(range(0, len(prompts), per_call))
    out = []
    for start in progress(starts, total=len(starts)) if progress else starts:
        chunk = prompts[start : start + per_call]
        first = start * images_per_prompt
        generators = [torch.Generator().manual_seed(seed + first + k) for k in range(len(chunk) * images_per_prompt)]
        images = pipeline(
            chunk, num_images_per_prompt=images_per_prompt, generator=generators, output_type="pt", **sampling
        ).images
        out.append((images.clamp(0, 1) * 255).round().to(torch.uint8).cpu())
    return torch.cat(out)


@torch.no_grad()
def stage_scores(
    pipeline,
    judge,
    prompts: list[str],
    scenes: list[dict],
    real_embeds: torch.Tensor,
    batch_size: int = 64,
    seed: int = 0,
    prior_num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    decoder_num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    prior_guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    decoder_guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    decoder_text_guidance_scale: float | None = DEFAULT_TEXT_GUIDANCE,
    mirror_prompts: list[int] = (),
    mirrored_embeds: torch.Tensor | None = None,
    real_images: torch.Tensor | None = None,
    captioner=None,
) -> dict:
    """Which stage loses accuracy. The prior: mean cosine between its embedding for each prompt and the CLIP
    embedding of that prompt's real render, and how often that render is the nearest of all the prompts'
    renders; and for the left/right prompts `mirror_prompts` (indices), given `mirrored_embeds` (their renders
    mirrored left to right, in that order), how often the prior's embedding is closer to the render than to its
    mirror: whether the image embedding the prior hands the decoder says which object is on the left. The
    decoder: the judge's accuracy of images drawn from the real renders' embeddings (the prior bypassed), with
    their prompts, and with the empty prompt as image variations are drawn. The autoencoder, for a latent
    decoder given the prompts' real renders `real_images` (uint8): the judge's accuracy of those renders after
    a round trip through it (`autoencoder_round_trip`), the decoder's ceiling, and with a `captioner` the caption
    round trip of those images (`autoencoder_caption_round_trip`). Prompt k uses seed `seed + k`."""
    real_embeds = real_embeds / real_embeds.norm(dim=-1, keepdim=True)
    priors, images, variations = [], [], []

    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        text = pipeline.encode_prompt([""] * len(chunk) + chunk)
        decoder_text = pipeline.encode_decoder_prompt([""] * len(chunk) + chunk, text)
        seeds = range(seed + start, seed + start + len(chunk))
        generators = lambda: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
        priors.append(pipeline.run_prior(text, prior_num_inference_steps, prior_guidance_scale, generators()).cpu())
        embeds = real_embeds[start : start + batch_size].to(pipeline.clip.device, pipeline.clip.dtype)
        images.append(
            pixels_to_uint8(
                pipeline.run_decoder(
                    embeds,
                    decoder_text,
                    decoder_num_inference_steps,
                    decoder_guidance_scale,
                    generators(),
                    text_guidance_scale=decoder_text_guidance_scale,
                )
            )
        )
        empty = decoder_text.negatives()  # the empty prompt, as negative prompt and as prompt
        no_prompt = PromptEncoding.join(empty, empty)
        variations.append(
            pixels_to_uint8(
                pipeline.run_decoder(
                    embeds, no_prompt, decoder_num_inference_steps, decoder_guidance_scale, generators()
                )
            )
        )
    prior = torch.cat(priors).float()
    similarity = prior @ real_embeds.T
    own = torch.arange(len(prompts))
    out = {
        "prior_cosine_to_real": similarity[own, own].mean().item(),
        "prior_nearest_is_own_render": (similarity.argmax(dim=1) == own).float().mean().item(),
    }
    if len(mirror_prompts):
        rows = list(mirror_prompts)
        mirrored = torch.nn.functional.normalize(mirrored_embeds.float(), dim=-1)
        closer = similarity[rows, rows] > (prior[rows] * mirrored).sum(-1)
        out.update(prior_mirror_prompts=len(rows), prior_mirror_accuracy=closer.float().mean().item())
    out["decoder_from_real_embeddings"] = judge_images(judge, torch.cat(images), scenes, own.tolist(), batch_size)
    out["decoder_from_real_embeddings_without_prompt"] = judge_images(
        judge, torch.cat(variations), scenes, own.tolist(), batch_size
    )
    if real_images is not None and pipeline.vae is not None:
        round_trip = autoencoder_round_trip(pipeline.vae, real_images, batch_size)
        out["autoencoder_round_trip"] = judge_images(judge, round_trip, scenes, own.tolist(), batch_size)
        if captioner is not None:
            out["autoencoder_caption_round_trip"] = caption_round_trip(
                captioner, round_trip, scenes, own.tolist(), batch_size
            )
    return out


def evaluate_text_to_image(
    pipeline,
    judge,
    data_dir,
    captioner=None,
    num_prompts: int = 250,
    images_per_prompt: int = 4,
    batch_size: int = 64,
    seed: int = 0,
    progress=None,
    stages: bool = False,
    **sampling,
) -> dict:
    """Generate `images_per_prompt` images for `num_prompts` held-out prompts of an imagefolder and score them.

    Args:
        pipeline: a `TextToImagePipeline`; its CLIP gives R-precision and the embedding space of the Fréchet
            distance.
        judge: a `SceneJudge` trained on real renders only.
        data_dir: a held-out imagefolder with scene graphs (`write_imagefolder`); prompts are its canonical
            captions, spread evenly over the layouts.
        captioner: a `CaptionPipeline` for the round trips (skipped when None): the caption of each generated
            image, and each held-out render captioned, drawn again from its caption and judged against its scene
            graph (`image_round_trip`).
        stages: also score the prior and the decoder on their own (`stage_scores`).
        sampling: passed on to the pipeline (steps, guidance scales).
    """
    if num_prompts < 2 or images_per_prompt < 1:
        raise ValueError(f"need num_prompts >= 2 and images_per_prompt >= 1, got {num_prompts}, {images_per_prompt}")
    data_dir = Path(data_dir)
    all_records = read_metadata(data_dir)
    records = select_prompts(all_records, num_prompts)
    prompts, scenes = [r["text"] for r in records], [r["scene"] for r in records]
    # the Fréchet reference: the folder's other images, so that the real renders are not compared with themselves
    chosen = {r["file_name"] for r in records}
    others = [r for r in all_records if r["file_name"] not in chosen]
    if len(others) < 2:
        raise ValueError(f"{data_dir} needs images beyond the {len(records)} prompts' for the Fréchet distance")
    clip, processor = pipeline.clip, pipeline.image_processor
    text_embeds = embed_texts(clip, pipeline.tokenizer, prompts, pipeline.prior.config.num_embeddings)[0]
    score = dict(
        judge=judge, clip=clip, clip_processor=processor, captioner=captioner, batch_size=batch_size, seed=seed
    )

    generated = generate_for_prompts(pipeline, prompts, images_per_prompt, batch_size, seed, progress, **sampling)
    rows = [p for p in range(len(prompts)) for _ in range(images_per_prompt)]
    report, generated_embeds = score_images(generated, scenes, rows, text_embeds, **score)

    real = load_images(data_dir, records, "file_name", generated.shape[-1])
    real_report, real_embeds = score_images(real, scenes, list(range(len(prompts))), text_embeds, **score)
    size = clip.config.vision_config.image_size
    reference = embed_images(clip, processor, load_images(data_dir, others, "file_name", size))
    report["frechet_distance"] = frechet_distance(generated_embeds, reference)
    real_report["frechet_distance"] = frechet_distance(real_embeds, reference)
    out = {
        "prompts": len(prompts),
        "images_per_prompt": images_per_prompt,
        "images": len(generated),
        "reference_images": len(others),
        "generated": report,
        "real_renders": real_report,
    }
    if captioner is not None:
        out["image_round_trip"] = image_round_trip(
            pipeline, captioner, judge, real, scenes, batch_size, seed, **sampling
        )
    if stages:
        rows = mirror_rows(records)
        mirrored = embed_at_clip_size(clip, processor, real[rows].flip(-1), batch_size) if rows else None
        # one image per prompt there, drawn from the prompts' encodings as they are
        stage_sampling = {k: v for k, v in sampling.items() if k not in ("num_candidates", "rewrite_prompts")}
        out["stages"] = stage_scores(
            pipeline,
            judge,
            prompts,
            scenes,
            real_embeds,
            batch_size,
            seed,
            mirror_prompts=rows,
            mirrored_embeds=mirrored,
            real_images=real,
            captioner=captioner,
            **stage_sampling,
        )
    return out
