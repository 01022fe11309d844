"""Train the decoder's small autoencoder (diffusers `AutoencoderKL`) on images with accelerate.

    accelerate launch -m genvl.recipes.train_autoencoder --config configs/train_autoencoder.json

Loss: L1 + MSE reconstruction plus a small KL term. `--foreground_weight w` weighs each pixel by
1 + w * its saturation (max minus min channel, 0 to 1) in the target, so that the coloured objects count
more than the pale background they stand on; 0 (the default) weighs all pixels alike. At the end the
latents' scaling factor (1 / their standard deviation, as in Stable Diffusion) is measured on the training
images and written into the model's config; the model is saved in `output_dir/vae`.

`--pretrained_model_name_or_path` continues from a saved autoencoder; with `--train_decoder_only` its
encoder (and so its latents and scaling factor) stays frozen and only the decoder learns, so that a
diffusion model trained on its latents stays valid while the reconstructions improve.

With `--streaming` and shards as `--train_data_dir`, the images stream through the run (`genvl.training.stream`)
instead of being decoded into memory first; the scaling factor is then measured on the stream's first images.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from genvl.io.components import load_pretrained
from genvl.io.imagefolder import load_images
from genvl.models.unclip import UnclipArchitecture, build_autoencoder
from genvl.training.args import TrainArgs, check_at_least, parse_args, run_script, save_architecture, saving_run
from genvl.training.autoencoder import (
    SCALING_IMAGES,
    ReconstructionStep,
    autoencoder_parameters,
    latent_scaling_factor,
    reconstruction_loss,
)
from genvl.training.data import read_training_data
from genvl.training.loop import make_accelerator, train_loop
from genvl.training.seeds import AUGMENTATION, step_generator
from genvl.training.stream import open_stream, write_stream_summary


@dataclass
class TrainAutoencoderArgs(TrainArgs):
    """Train the decoder's autoencoder."""

    output_dir: str = "runs/autoencoder"
    architecture: str = "configs/unclip_small.json"
    train_batch_size: int = 32
    kl_weight: float = 1e-6
    pretrained_model_name_or_path: str | None = None
    train_decoder_only: bool = False
    foreground_weight: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if self.train_decoder_only and not self.pretrained_model_name_or_path:
            raise ValueError("--train_decoder_only needs --pretrained_model_name_or_path")
        check_at_least(self, 0, "foreground_weight", "kl_weight")


def main(argv=None):
    args = parse_args(TrainAutoencoderArgs, argv)
    accelerator = make_accelerator(args, "train_autoencoder")
    if args.streaming:  # decoded as each batch takes them; the scaling factor is measured on the first ones
        data = open_stream(accelerator, args)
        images = None
    else:
        records = read_training_data(accelerator, args)
        images = load_images(Path(args.train_data_dir), records, args.image_column, args.resolution)
        data = len(records)
    if args.pretrained_model_name_or_path:
        vae = load_pretrained(AutoencoderKL, args.pretrained_model_name_or_path)
    else:
        arch = UnclipArchitecture.from_json(args.architecture)
        save_architecture(accelerator, args, arch)
        vae = build_autoencoder(arch)
    parameters = autoencoder_parameters(vae, args.train_decoder_only)
    device = accelerator.device

    def compute_loss(model, batch, step):
        batch_images = images[batch] if images is not None else torch.stack([sample["pixels"] for sample in batch])
        pixels = (batch_images.float() / 127.5 - 1).to(device)
        recon, kl = model(pixels, step_generator(args.seed, step, AUGMENTATION, device))
        return reconstruction_loss(recon, pixels, args.foreground_weight) + args.kl_weight * kl

    losses = train_loop(accelerator, args, ReconstructionStep(vae), parameters, data, compute_loss)
    if args.streaming:
        write_stream_summary(accelerator, args, data)
        if accelerator.is_main_process and not args.train_decoder_only:
            first = open_stream(accelerator, args).head(SCALING_IMAGES)  # the stream's first samples, as in memory
            images = torch.stack([sample["pixels"] for sample in first])

    if accelerator.is_main_process:
        vae.eval()
        if not args.train_decoder_only:
            vae.register_to_config(scaling_factor=latent_scaling_factor(vae, images))
        output_dir = Path(args.output_dir)
        with saving_run(output_dir, losses):
            vae.save_pretrained(output_dir / "vae", safe_serialization=True)
        accelerator.print(f"latent scaling factor {vae.config.scaling_factor:.4f}")
    accelerator.end_training()
    return losses


if __name__ == "__main__":
    run_script(main)
