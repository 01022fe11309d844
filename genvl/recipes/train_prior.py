"""Train the diffusion prior (CLIP text embedding + token states -> CLIP image embedding) with accelerate.

    accelerate launch -m genvl.recipes.train_prior --config configs/train_prior.json

The CLIP model is frozen: image embeddings and the text features of every distinct phrasing are computed
once. As in unCLIP, the prior predicts the (standardised) image embedding itself, and the text conditioning
is replaced by the empty prompt's for `--conditioning_dropout` of the samples (classifier-free guidance).
`--prompts_per_scene K` adds K prompts as people type them (`genvl.world.prompts`) to each scene's phrasings.
Ends with the prior and its scheduler saved in `output_dir` (`prior/`, `prior_scheduler/`).
`--pretrained_model_name_or_path` continues from a saved prior (its folder, or a pipeline's); with `--rank R`
(LoRA on its attention) or `--adapter ia3` only the adapter trains, saved in PEFT's format as `output_dir/prior/`.

With `--streaming` and shards as `--train_data_dir`, the samples stream through the run (`genvl.training.stream`)
and the frozen CLIP embeds each batch as it comes, so that nothing grows with the data; a new prior's
standardisation is then measured on the stream's first images.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import PriorTransformer

from genvl.io.components import load_pretrained
from genvl.lora import save_adapter
from genvl.models.clip import load_clip
from genvl.models.unclip import UnclipArchitecture, build_prior
from genvl.training.args import (
    LoraTrainArgs,
    check_at_least,
    check_fraction,
    parse_args,
    run_script,
    save_architecture,
    saving_run,
)
from genvl.training.data import pick_phrasings, read_training_data, with_prompts
from genvl.training.diffusion import add_training_noise, prior_scheduler, process_rows
from genvl.training.features import ClipFeatures, batch_clip_features, frozen_clip_features
from genvl.training.loop import make_accelerator, train_loop
from genvl.training.pretrained import add_training_adapter, pretrained_part
from genvl.training.seeds import NOISE, step_generator
from genvl.training.stream import open_stream, write_stream_summary

STATISTICS_SAMPLES = 2048  # streamed images whose embeddings standardise a new prior's targets


@dataclass
class TrainPriorArgs(LoraTrainArgs):
    """Train the unCLIP diffusion prior on a frozen CLIP."""

    output_dir: str = "runs/prior"
    clip_model_name_or_path: str = "runs/clip"
    architecture: str = "configs/unclip_small.json"
    train_batch_size: int = 256
    conditioning_dropout: float = 0.1
    num_train_timesteps: int = 1000
    prompts_per_scene: int = 0  # prompts of the grammar added to each scene's captions

    def __post_init__(self):
        super().__post_init__()
        check_fraction(self, "conditioning_dropout")
        check_at_least(self, 1, "num_train_timesteps")
        check_at_least(self, 0, "prompts_per_scene")
        if self.streaming and self.prompts_per_scene:
            raise ValueError("--prompts_per_scene adds prompts to scenes held in memory; it does not stream")


def in_embedding_space(features: ClipFeatures) -> ClipFeatures:
    """`features` with the token states projected into the embedding space the prior attends in (float16)."""
    clip = features.clip
    with torch.no_grad():
        states = [
            clip.text_projection(features.states[i : i + 4096].to(clip.device, torch.float32)).half().cpu()
            for i in range(0, len(features.states), 4096)
        ]
    return dataclasses.replace(features, states=torch.cat(states))


def main(argv=None):
    args = parse_args(TrainPriorArgs, argv)
    accelerator = make_accelerator(args, "train_prior")

    # 1. frozen CLIP features: image embeddings, and text features of every distinct phrasing plus "", of all the
    # data at once, or of each streamed batch as it comes
    if args.streaming:
        clip, tokenizer, image_processor = load_clip(args.clip_model_name_or_path)
        clip.eval().to(accelerator.device)
        size = clip.config.vision_config.image_size
        data = open_stream(accelerator, args, resolution=size, caption_column=args.caption_column)

        def features_of(batch):  # the batch's own features, whose rows are the batch's samples
            features = in_embedding_space(batch_clip_features(clip, tokenizer, image_processor, batch))
            return features, torch.arange(len(batch))

        reference = None  # what a new prior is standardised on: the stream's first images, alike in every process
        if not args.pretrained_model_name_or_path:
            stream = open_stream(accelerator, args, resolution=size, caption_column=args.caption_column, shared=True)
            reference, _ = features_of(stream.head(STATISTICS_SAMPLES))
    else:
        records = with_prompts(
            read_training_data(accelerator, args), args.prompts_per_scene, args.seed, args.caption_column
        )
        reference = in_embedding_space(
            frozen_clip_features(
                args.clip_model_name_or_path,
                Path(args.train_data_dir),
                records,
                args.image_column,
                args.caption_column,
                args.output_dir,
                accelerator.device,
            )
        )
        data = len(records)

        def features_of(batch):
            return reference, batch

    # 2. the prior, standardising image embeddings with the data's statistics (a saved prior keeps its own)
    if args.pretrained_model_name_or_path:
        prior = load_pretrained(PriorTransformer, pretrained_part(args.pretrained_model_name_or_path, "prior"))
    else:
        arch = UnclipArchitecture.from_json(args.architecture)
        save_architecture(accelerator, args, arch)
        targets = reference.image_embeds
        prior = build_prior(arch, targets.shape[1], reference.states.shape[1])
        with torch.no_grad():
            prior.clip_mean.copy_(targets.mean(0, keepdim=True))
            prior.clip_std.copy_(targets.std(0, keepdim=True))
    mean, std = prior.clip_mean.detach().clone(), prior.clip_std.detach().clone()
    scheduler = prior_scheduler(args.num_train_timesteps)
    device = accelerator.device

    # 3. train
    def compute_loss(model, batch, step):
        features, batch = features_of(batch)
        # every draw covers the global batch (this process keeps its rows): any process layout trains the same
        rows, total = process_rows(len(batch), accelerator)
        chosen = pick_phrasings(
            features.phrasings, batch, args.seed, step, accelerator.process_index, accelerator.num_processes
        )
        generator = step_generator(args.seed, step, NOISE)
        drop = torch.rand(total, generator=generator)[rows] < args.conditioning_dropout
        chosen = torch.where(drop, torch.full_like(chosen, features.empty_prompt), chosen)
        x0 = (features.image_embeds[batch] - mean) / std
        _, t, noisy = add_training_noise(scheduler, x0, generator, rows, total)
        prediction = model(
            noisy.to(device),
            timestep=t.to(device),
            proj_embedding=features.text_embeds[chosen].to(device),
            encoder_hidden_states=features.states[chosen].to(device, torch.float32),
            attention_mask=features.masks[chosen].bool().to(device),
        ).predicted_image_embedding
        return F.mse_loss(prediction.float(), x0.to(device))

    parameters = add_training_adapter(accelerator, prior, "prior", args)
    losses = train_loop(accelerator, args, prior, parameters, data, compute_loss)
    if args.streaming:
        write_stream_summary(accelerator, args, data)

    # 4. save the prior, or the adapter as `prior/` (EMA weights when EMA is on)
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        with saving_run(output_dir, losses):
            if args.adapter is not None:
                save_adapter(prior, output_dir / "prior")
            else:
                prior.save_pretrained(output_dir / "prior", safe_serialization=True)
                scheduler.save_pretrained(output_dir / "prior_scheduler")
    accelerator.end_training()
    return losses


if __name__ == "__main__":
    run_script(main)
