"""Write the decoder stage's pipeline parts (`conditioner/`, `decoder/`, `decoder_scheduler/`) from one of
`train_decoder.py`'s checkpoints, with the EMA weights when the run keeps them: for taking the weights out of
a run that is still going or was stopped before its last step.

    python train/export_decoder_checkpoint.py --run runs/decoder --checkpoint latest --output runs/decoder_export
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import CLIPConfig

from genvl.models.unclip import UnclipArchitecture, UnclipConditioner, build_decoder_unet
from genvl.training import resolve_resume

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_decoder import DecoderStep, decoder_scheduler  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="the output_dir of a train_decoder.py run")
    parser.add_argument("--checkpoint", default="latest", help="'latest' or a checkpoint folder")
    parser.add_argument("--output", required=True, help="folder for conditioner/, decoder/, decoder_scheduler/")
    return parser.parse_args(argv)


def load_decoder_checkpoint(run_dir, checkpoint: str = "latest") -> tuple[DecoderStep, dict]:
    """The run's conditioner and UNet (as one `DecoderStep`) with the checkpoint's EMA weights (or its raw
    weights when the run kept no EMA), and the run's training arguments."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "train_config.json").read_text())
    path = resolve_resume(run_dir, checkpoint)
    if path is None:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint")
    clip = CLIPConfig.from_pretrained(config["clip_model_name_or_path"])
    if config["vae_model_name_or_path"]:
        vae = json.loads((Path(config["vae_model_name_or_path"]) / "config.json").read_text())
        channels, size = vae["latent_channels"], config["resolution"] // 2 ** (len(vae["block_out_channels"]) - 1)
    else:
        channels, size = 3, config["resolution"]
    arch = UnclipArchitecture.from_json(config["architecture"])
    conditioner = UnclipConditioner(clip.projection_dim, clip.text_config.hidden_size, arch.decoder_cross_dim,
                                    arch.image_tokens)
    model = DecoderStep(conditioner, build_decoder_unet(arch, size, channels, clip.projection_dim))
    model.load_state_dict(load_file(path / "model.safetensors"))
    ema = path / "custom_checkpoint_0.pkl"
    if config["use_ema"] and ema.is_file():
        shadow = torch.load(ema, weights_only=True)["shadow_params"]
        with torch.no_grad():
            for parameter, value in zip(model.parameters(), shadow, strict=True):
                parameter.copy_(value)
    return model, config


def main(argv=None):
    args = parse_args(argv)
    model, config = load_decoder_checkpoint(args.run, args.checkpoint)
    output = Path(args.output)
    model.conditioner.save_pretrained(output / "conditioner", safe_serialization=True)
    model.unet.save_pretrained(output / "decoder", safe_serialization=True)
    decoder_scheduler(config["num_train_timesteps"]).save_pretrained(output / "decoder_scheduler")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
