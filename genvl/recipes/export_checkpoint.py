"""Write a stage's pipeline parts from one of its training checkpoints, with the EMA weights when the run keeps
them: for taking the weights out of a run that is still going or was stopped before its last step.

    python -m genvl.recipes.export_checkpoint --stage prior --run runs/prior --output runs/prior_export
    python -m genvl.recipes.export_checkpoint --stage decoder --run runs/decoder --output runs/decoder_export
    python -m genvl.recipes.export_checkpoint --stage autoencoder --run runs/autoencoder \
        --output runs/autoencoder_export

The output folder has the layout the training script writes at its end (`prior/` and `prior_scheduler/`,
`conditioner/`, `decoder/` and `decoder_scheduler/`, or `vae/`), so `export_text_to_image.py` takes it as is.
An autoencoder trained from scratch gets its latents' scaling factor measured on the run's first training
images, as at the end of its run; a decoder-only fine-tune keeps the one it started from.
"""

import argparse
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file
from transformers import CLIPConfig

from genvl.io.components import load_pretrained
from genvl.io.imagefolder import load_images
from genvl.io.outputs import check_export_folder, weights_readable_as_umask
from genvl.models.clip import load_decoder_text_encoder
from genvl.models.unclip import (
    UnclipArchitecture,
    UnclipConditioner,
    build_autoencoder,
    build_decoder_unet,
    build_prior,
)
from genvl.training.args import read_run_config, run_architecture, run_script
from genvl.training.autoencoder import SCALING_IMAGES, ReconstructionStep, autoencoder_parameters, latent_scaling_factor
from genvl.training.checkpoints import copy_ema_weights, resolve_resume
from genvl.training.data import read_training_records
from genvl.training.diffusion import DecoderStep, decoder_scheduler, prior_scheduler
from genvl.training.pretrained import pretrained_part

STAGE_PARTS = {  # the folders each stage's export writes
    "prior": ("prior", "prior_scheduler"),
    "decoder": ("conditioner", "decoder", "decoder_scheduler"),
    "autoencoder": ("vae",),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", required=True, choices=["prior", "decoder", "autoencoder"])
    parser.add_argument(
        "--run", required=True, help="the output_dir of a train_prior.py, train_decoder.py or train_autoencoder.py run"
    )
    parser.add_argument("--checkpoint", default="latest", help="'latest' or a checkpoint folder")
    parser.add_argument("--output", required=True, help="folder for the stage's parts")
    return parser.parse_args(argv)


def checkpoint_weights(model: torch.nn.Module, path: Path, use_ema: bool, trained=None) -> torch.nn.Module:
    """Load a checkpoint's weights into `model`: its EMA weights when the run kept them, else the raw ones.
    `trained`: the parameters the EMA follows when the run trained only some (default: all of them)."""
    model.load_state_dict(load_file(path / "model.safetensors"))
    if use_ema:
        try:
            copy_ema_weights(model.parameters() if trained is None else trained, path)
        except FileNotFoundError:  # the checkpoint holds no EMA: its raw weights
            pass
    return model


def run_checkpoint(run_dir, checkpoint: str) -> tuple[dict, Path]:
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    path = resolve_resume(run_dir, checkpoint, flag="--checkpoint")
    if path is None:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint")
    return config, path


def run_parts(run_dir, checkpoint: str):
    config, path = run_checkpoint(run_dir, checkpoint)
    clip = CLIPConfig.from_pretrained(pretrained_part(config["clip_model_name_or_path"], "clip"))
    return config, path, clip, run_architecture(config, UnclipArchitecture)


def export_prior(run_dir, checkpoint: str, output: Path) -> None:
    config, path, clip, arch = run_parts(run_dir, checkpoint)
    prior = build_prior(arch, clip.projection_dim, clip.text_config.max_position_embeddings)
    checkpoint_weights(prior, path, config["use_ema"]).save_pretrained(output / "prior", safe_serialization=True)
    prior_scheduler(config["num_train_timesteps"]).save_pretrained(output / "prior_scheduler")


def export_decoder(run_dir, checkpoint: str, output: Path) -> None:
    config, path, clip, arch = run_parts(run_dir, checkpoint)
    if config["vae_model_name_or_path"]:
        vae = json.loads((Path(config["vae_model_name_or_path"]) / "config.json").read_text())
        channels, size = vae["latent_channels"], config["resolution"] // 2 ** (len(vae["block_out_channels"]) - 1)
    else:
        channels, size = 3, config["resolution"]
    text_hidden = clip.text_config.hidden_size
    if config.get("text_encoder_model_name_or_path"):  # the decoder read another text tower's token states
        text_config = load_decoder_text_encoder(config["text_encoder_model_name_or_path"])[0].config
        text_hidden = getattr(text_config, "text_config", text_config).hidden_size
    conditioner = UnclipConditioner(clip.projection_dim, text_hidden, arch.decoder_cross_dim, arch.image_tokens)
    model = DecoderStep(conditioner, build_decoder_unet(arch, size, channels, clip.projection_dim))
    checkpoint_weights(model, path, config["use_ema"])
    model.conditioner.save_pretrained(output / "conditioner", safe_serialization=True)
    model.unet.save_pretrained(output / "decoder", safe_serialization=True)
    decoder_scheduler(config["num_train_timesteps"]).save_pretrained(output / "decoder_scheduler")


def export_autoencoder(run_dir, checkpoint: str, output: Path) -> None:
    config, path = run_checkpoint(run_dir, checkpoint)
    if config["pretrained_model_name_or_path"]:
        vae = load_pretrained(AutoencoderKL, config["pretrained_model_name_or_path"])
    else:
        vae = build_autoencoder(run_architecture(config, UnclipArchitecture))
    trained = autoencoder_parameters(vae, config["train_decoder_only"])
    checkpoint_weights(ReconstructionStep(vae), path, config["use_ema"], trained)
    if not config["train_decoder_only"]:
        records, _ = read_training_records(config["train_data_dir"], config["caption_column"], config["image_column"])
        images = load_images(
            config["train_data_dir"], records[:SCALING_IMAGES], config["image_column"], config["resolution"]
        )
        vae.register_to_config(scaling_factor=latent_scaling_factor(vae.eval(), images))
    vae.save_pretrained(output / "vae", safe_serialization=True)


def main(argv=None):
    args = parse_args(argv)
    export = {"prior": export_prior, "decoder": export_decoder, "autoencoder": export_autoencoder}[args.stage]
    check_export_folder(args.output, "--output", STAGE_PARTS[args.stage], [args.run])
    with weights_readable_as_umask(args.output):
        export(args.run, args.checkpoint, Path(args.output))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    run_script(main)
