"""Train the diffusion prior (CLIP text embedding + token states -> CLIP image embedding) with accelerate.

    accelerate launch -m genvl.recipes.train_prior --config configs/train_prior.json

The CLIP model is frozen: image embeddings and the text features of every distinct phrasing are computed
once. As in unCLIP, the prior predicts the (standardised) image embedding itself, and the text conditioning
is replaced by the empty prompt's for `--conditioning_dropout` of the samples (classifier-free guidance).
`--prompts_per_scene K` adds K prompts as people type them (`genvl.world.prompts`) to each scene's phrasings.
Ends with the prior and its scheduler saved in `output_dir` (`prior/`, `prior_scheduler/`).
`--pretrained_model_name_or_path` continues from a saved prior (its folder, or a pipeline's); with `--rank R`
(LoRA on its attention) or `--adapter ia3` only the adapter trains, saved in PEFT's format as `output_dir/prior/`.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import PriorTransformer

from genvl.io.components import load_pretrained
from genvl.lora import save_adapter
from genvl.models.unclip import UnclipArchitecture, build_prior
from genvl.training.args import LoraTrainArgs, check_at_least, check_fraction, parse_args, run_script, save_architecture
from genvl.training.data import pick_phrasings, read_training_data, with_prompts
from genvl.training.diffusion import add_training_noise, prior_scheduler, process_rows
from genvl.training.features import frozen_clip_features
from genvl.training.loop import make_accelerator, train_loop
from genvl.training.pretrained import add_training_adapter, pretrained_part
from genvl.training.seeds import NOISE, step_generator


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


def main(argv=None):
    args = parse_args(TrainPriorArgs, argv)
    accelerator = make_accelerator(args, "train_prior")
    data_dir = Path(args.train_data_dir)
    records = with_prompts(
        read_training_data(accelerator, args), args.prompts_per_scene, args.seed, args.caption_column
    )

    # 1. frozen CLIP features: image embeddings, and text features of every distinct phrasing plus ""
    features = frozen_clip_features(
        args.clip_model_name_or_path,
        data_dir,
        records,
        args.image_column,
        args.caption_column,
        args.output_dir,
        accelerator.device,
    )
    targets, phrasings, text_embeds, masks = (
        features.image_embeds,
        features.phrasings,
        features.text_embeds,
        features.masks,
    )
    with torch.no_grad():  # the prior attends in the embedding space
        states = torch.cat(
            [
                features.clip.text_projection(features.states[i : i + 4096].float()).half()
                for i in range(0, len(features.states), 4096)
            ]
        )
    empty = features.empty_prompt

    # 2. the prior, standardising image embeddings with the data's statistics (a saved prior keeps its own)
    if args.pretrained_model_name_or_path:
        prior = load_pretrained(PriorTransformer, pretrained_part(args.pretrained_model_name_or_path, "prior"))
    else:
        arch = UnclipArchitecture.from_json(args.architecture)
        save_architecture(accelerator, args, arch)
        prior = build_prior(arch, targets.shape[1], states.shape[1])
        with torch.no_grad():
            prior.clip_mean.copy_(targets.mean(0, keepdim=True))
            prior.clip_std.copy_(targets.std(0, keepdim=True))
    mean, std = prior.clip_mean.detach().clone(), prior.clip_std.detach().clone()
    scheduler = prior_scheduler(args.num_train_timesteps)
    device = accelerator.device

    # 3. train
    def compute_loss(model, batch, step):
        # every draw covers the global batch (this process keeps its rows): any process layout trains the same
        rows, total = process_rows(len(batch), accelerator)
        chosen = pick_phrasings(phrasings, batch, args.seed, step, accelerator.process_index, accelerator.num_processes)
        generator = step_generator(args.seed, step, NOISE)
        drop = torch.rand(total, generator=generator)[rows] < args.conditioning_dropout
        chosen = torch.where(drop, torch.full_like(chosen, empty), chosen)
        x0 = (targets[batch] - mean) / std
        _, t, noisy = add_training_noise(scheduler, x0, generator, rows, total)
        prediction = model(
            noisy.to(device),
            timestep=t.to(device),
            proj_embedding=text_embeds[chosen].to(device),
            encoder_hidden_states=states[chosen].to(device, torch.float32),
            attention_mask=masks[chosen].bool().to(device),
        ).predicted_image_embedding
        return F.mse_loss(prediction.float(), x0.to(device))

    parameters = add_training_adapter(accelerator, prior, "prior", args)
    losses = train_loop(accelerator, args, prior, parameters, len(records), compute_loss)

    # 4. save the prior, or the adapter as `prior/` (EMA weights when EMA is on)
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        if args.adapter is not None:
            save_adapter(prior, output_dir / "prior")
        else:
            prior.save_pretrained(output_dir / "prior", safe_serialization=True)
            scheduler.save_pretrained(output_dir / "prior_scheduler")
        (output_dir / "train_losses.json").write_text(json.dumps(losses))
    accelerator.end_training()
    return losses


if __name__ == "__main__":
    run_script(main)
