"""Train an image-text matching head (`genvl.models.matching.MatchingHead`) on a captioner's decoder.

    genvl train matching --config configs/train_matching.json

Each step pairs every image of the batch with three captions, all in one phrasing drawn for the image: its own,
one of its twins (`genvl.world.twins`: two objects' places exchanged, a colour, an object, a count or a place
changed), and the hard negative mined in the batch, the caption of the other scene whose CLIP text embedding is
closest to the image's CLIP image embedding (scenes that state the same facts are not negatives). And, for the
first `--candidate_images` images (in a seeded order), one of the `--decoded_candidates` captions the captioner
itself decodes for the image by beam search, labelled by whether it states the scene's facts
(`genvl.world.captions.parse_caption`): what `rerank=K` will have to choose among. The captioner
(`--pretrained_model_name_or_path`) is frozen, and its decoder, run over each caption with the image's encoder
states, gives the head its features; CLIP (`--clip_model_name_or_path`, a text-to-image pipeline or CLIP folder)
only mines. Loss: binary cross-entropy, the positives weighted as much as the negatives together. Ends with the
captioner's pipeline folder, the head as its `matcher/`, in `output_dir`: `CaptionPipeline.match` and
`rerank=K` use it.
"""

import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from genvl.generation.decoder import encode_images
from genvl.io.imagefolder import load_images
from genvl.models.clip import clip_text_length, embed_at_clip_size, embed_texts, load_clip, normalize_pixels
from genvl.models.matching import MatchingHead, caption_features
from genvl.pipelines.caption import CaptionPipeline
from genvl.pipelines.defaults import shipped_pipeline
from genvl.training.args import TrainArgs, check_at_least, parse_args, run_script, saving_run
from genvl.training.data import read_training_data
from genvl.training.loop import make_accelerator, train_loop
from genvl.world.captions import parse_caption, scene_captions, scene_facts
from genvl.world.twins import caption_twins


@dataclass
class TrainMatchingArgs(TrainArgs):
    """Train an image-text matching head on a frozen captioner."""

    output_dir: str = "runs/matching"
    pretrained_model_name_or_path: str = str(shipped_pipeline("genvl-caption-small"))
    clip_model_name_or_path: str = str(shipped_pipeline("genvl-unclip-small"))
    width: int = 256  # the head's hidden width
    decoded_candidates: int = 4  # beams decoded per image for the candidates (0: none)
    candidate_images: int = 8000  # how many training images get decoded candidates

    def __post_init__(self):
        super().__post_init__()
        check_at_least(self, 1, "width")
        check_at_least(self, 0, "decoded_candidates", "candidate_images")


def hard_negatives(image_embeds: torch.Tensor, text_embeds: torch.Tensor, facts: list) -> torch.Tensor:
    """For each image of a batch, the row of the other sample whose text embedding is most similar to its image
    embedding, among those whose scene states other facts; -1 where there is none."""
    similarity = image_embeds @ text_embeds.T
    same = torch.tensor([[a == b for b in facts] for a in facts])
    similarity = similarity.masked_fill(same, float("-inf"))
    best = similarity.argmax(1)
    return torch.where(torch.isinf(similarity.max(1).values), torch.full_like(best, -1), best)


@torch.no_grad()
def decoded_candidates(captioner, images, scenes, rows: list[int], beams: int, batch_size: int = 64) -> dict:
    """{row: [(caption, 1.0 if it states the scene's facts else 0.0)]}: the `beams` captions the captioner
    decodes by beam search for each image of `rows`."""
    from PIL import Image

    found = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        pictures = [Image.fromarray(images[row].permute(1, 2, 0).numpy()) for row in chunk]
        output = captioner(pictures, num_beams=beams, num_return_sequences=beams)
        for row, captions in zip(chunk, output.captions):
            facts = scene_facts(scenes[row])
            found[row] = [(c, float(parse_caption(c) == facts)) for c in dict.fromkeys(captions)]
    return found


def main(argv=None):
    args = parse_args(TrainMatchingArgs, argv)
    accelerator = make_accelerator(args, "train_matching")
    device = accelerator.device
    records = read_training_data(accelerator, args)
    if not all(isinstance(r.get("scene"), dict) for r in records):
        raise ValueError(f"{args.train_data_dir}: every record needs a scene graph to draw its twins from")
    captioner = CaptionPipeline.from_pretrained(args.pretrained_model_name_or_path)
    model, tokenizer = captioner.model.to(device).eval().requires_grad_(False), captioner.tokenizer
    resolution = model.config.encoder.image_size

    # 1. the data in memory, and the CLIP embeddings the hard negatives are mined with
    images = load_images(Path(args.train_data_dir), records, args.image_column, resolution)
    scenes = [r["scene"] for r in records]
    facts = [scene_facts(scene) for scene in scenes]
    clip, clip_tokenizer, clip_processor = load_clip(args.clip_model_name_or_path)
    with torch.no_grad():
        image_embeds = embed_at_clip_size(clip, clip_processor, images)
        text_embeds = embed_texts(
            clip, clip_tokenizer, [scene_captions(s)[0] for s in scenes], clip_text_length(clip, clip_tokenizer)
        )[0]
    del clip

    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(args.seed)).tolist()
    candidates = {}
    if args.decoded_candidates:
        chosen = order[: args.candidate_images]
        candidates = decoded_candidates(captioner, images, scenes, chosen, args.decoded_candidates)
        right = sum(label for found in candidates.values() for _, label in found)
        total = sum(len(found) for found in candidates.values())
        accelerator.print(f"decoded {total} candidate captions of {len(chosen)} images, {right:.0f} of them right")
    head = MatchingHead(model.config.decoder.hidden_size, args.width)

    def compute_loss(head, batch, step):
        batch = torch.as_tensor(batch)
        rng = random.Random(f"{args.seed}/{step}")
        with torch.no_grad():
            states = encode_images(model, normalize_pixels(images[batch], captioner.image_processor).to(device))
            negatives = hard_negatives(image_embeds[batch], text_embeds[batch], [facts[i] for i in batch.tolist()])
            rows, captions, targets = [], [], []
            for row, index in enumerate(batch.tolist()):
                phrasing = rng.randrange(3)
                own = scene_captions(scenes[index])
                twins = caption_twins(scenes[index], rng, phrasing)
                pairs = [(own[phrasing % len(own)], 1.0)]
                if twins:
                    pairs.append((rng.choice(twins)[1], 0.0))
                if negatives[row] >= 0:
                    other = scene_captions(scenes[int(batch[negatives[row]])])
                    pairs.append((other[phrasing % len(other)], 0.0))
                if index in candidates:
                    pairs.append(rng.choice(candidates[index]))
                for caption, target in pairs:
                    rows.append(row)
                    captions.append(caption)
                    targets.append(target)
            features = caption_features(model, tokenizer, states[torch.tensor(rows, device=states.device)], captions)
        targets = torch.tensor(targets, device=device)
        positives = targets.sum()
        weight = torch.where(targets > 0, (len(targets) - positives) / positives.clamp(min=1), torch.ones_like(targets))
        return F.binary_cross_entropy_with_logits(head(*features), targets, weight=weight)

    losses = train_loop(accelerator, args, head, list(head.parameters()), len(records), compute_loss)
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        with saving_run(output_dir, losses):
            CaptionPipeline(
                model=model,
                tokenizer=tokenizer,
                image_processor=captioner.image_processor,
                matcher=head.eval(),
                **{key: captioner.config[key] for key in CaptionPipeline.config_values if key in captioner.config},
            ).save_pretrained(output_dir)
    accelerator.end_training()
    return losses


if __name__ == "__main__":
    run_script(main)
