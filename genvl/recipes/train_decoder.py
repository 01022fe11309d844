"""Train the unCLIP decoder (conditioner + UNet) on a frozen CLIP and autoencoder with accelerate.

    accelerate launch -m genvl.recipes.train_decoder --config configs/train_decoder.json

The UNet denoises autoencoder latents (or pixels with `--vae_model_name_or_path ""`), conditioned on the CLIP
image embedding (added to the timestep embedding and projected to extra context tokens) and on the CLIP text
tower's token states. As in unCLIP, the image embedding is zeroed for `--image_dropout` of the samples and the
text replaced by the empty prompt's for `--text_dropout`, for classifier-free guidance. With `--snr_gamma`
the loss of each sample is weighted by min(SNR, gamma) / SNR (Min-SNR weighting, Hang et al. 2023), which
shifts effort from the nearly clean timesteps to the ones that lay out the scene. CLIP features and latents
are computed once. `--prompts_per_scene K` adds K prompts as people type them (`genvl.world.prompts`) to each
scene's phrasings. Ends with `conditioner/`, `decoder/` and `decoder_scheduler/` in `output_dir`.
`--pretrained_model_name_or_path` continues from a saved conditioner and UNet (a pipeline or run folder);
with `--rank R` (LoRA on the UNet's attention) or `--adapter ia3` only the adapter trains, saved in PEFT's
format as `output_dir/decoder/`.

`--text_encoder_model_name_or_path` takes the token states from another text tower (a CLIP, a text encoder or a
pipeline folder, with its own tokenizer), as the pipeline's `decoder_text_encoder` gives them: the image
embeddings stay `--clip_model_name_or_path`'s. A pipeline with a `decoder_text_encoder` passed as
`--clip_model_name_or_path` uses that text tower by default.
`--reset_image_embedding` zeroes the weights that read the image embedding (the conditioner's image tokens and
the UNet's class embedding) of a pretrained decoder, which then starts as its image-dropped self: for moving a
decoder onto another CLIP's image embeddings while it keeps its text tower.

With `--streaming` and shards as `--train_data_dir`, the samples stream through the run (`genvl.training.stream`)
and the frozen CLIP, text tower and autoencoder encode each batch as it comes, so that nothing grows with the data.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel

from genvl.io.components import load_pretrained
from genvl.io.imagefolder import load_images
from genvl.lora import save_adapter
from genvl.models.clip import load_clip, load_decoder_text_encoder
from genvl.models.unclip import UnclipArchitecture, UnclipConditioner, build_decoder_unet, latent_means
from genvl.training.args import (
    LoraTrainArgs,
    check_above,
    check_at_least,
    check_fraction,
    parse_args,
    run_script,
    save_architecture,
    saving_run,
)
from genvl.training.data import pick_phrasings, read_training_data, with_prompts
from genvl.training.diffusion import DecoderStep, add_training_noise, decoder_scheduler, min_snr_weight, process_rows
from genvl.training.features import (
    batch_clip_features,
    cached_features,
    data_stamp,
    file_stamp,
    frozen_clip_features,
    frozen_text_states,
)
from genvl.training.loop import make_accelerator, train_loop
from genvl.training.pretrained import add_training_adapter
from genvl.training.seeds import NOISE, step_generator
from genvl.training.stream import open_stream, write_stream_summary


@dataclass
class TrainDecoderArgs(LoraTrainArgs):
    """Train the unCLIP decoder."""

    output_dir: str = "runs/decoder"
    clip_model_name_or_path: str = "runs/clip"
    vae_model_name_or_path: str = "runs/autoencoder/vae"
    architecture: str = "configs/unclip_small.json"
    train_batch_size: int = 32
    image_dropout: float = 0.1
    text_dropout: float = 0.5
    num_train_timesteps: int = 1000
    snr_gamma: float | None = None
    text_encoder_model_name_or_path: str | None = None
    reset_image_embedding: bool = False
    prompts_per_scene: int = 0  # prompts of the grammar added to each scene's captions

    def __post_init__(self):
        super().__post_init__()
        check_fraction(self, "image_dropout", "text_dropout")
        check_at_least(self, 1, "num_train_timesteps")
        check_at_least(self, 0, "prompts_per_scene")
        check_above(self, 0, "snr_gamma")  # the loss weights min(SNR, gamma) / SNR would be 0 or negative
        if self.reset_image_embedding and not self.pretrained_model_name_or_path:
            raise ValueError("--reset_image_embedding needs --pretrained_model_name_or_path, the decoder to reset")
        if self.streaming and self.prompts_per_scene:
            raise ValueError("--prompts_per_scene adds prompts to scenes held in memory; it does not stream")


def encode_latents(vae, images) -> torch.Tensor:
    """Scaled latent means (N, C, h, w), on the CPU, of uint8 images, or pixels in [-1, 1] without an
    autoencoder."""
    if vae is None:
        return images.float() / 127.5 - 1
    return latent_means(vae, images) * vae.config.scaling_factor


def main(argv=None):
    args = parse_args(TrainDecoderArgs, argv)
    accelerator = make_accelerator(args, "train_decoder")
    device = accelerator.device
    text_dir = args.text_encoder_model_name_or_path
    if text_dir is None and (Path(args.clip_model_name_or_path) / "decoder_text_encoder").is_dir():
        text_dir = args.clip_model_name_or_path  # a pipeline whose decoder reads a text tower of its own

    # 1. frozen features: CLIP image embeddings, text features of every phrasing plus "", latents; of all the data
    # at once, or of each streamed batch as it comes
    if args.streaming:
        clip, tokenizer, image_processor = load_clip(args.clip_model_name_or_path)
        clip.eval().to(device)
        text = load_decoder_text_encoder(text_dir) if text_dir else None
        if text is not None:
            text[0].eval().to(device)
        vae = load_pretrained(AutoencoderKL, args.vae_model_name_or_path) if args.vae_model_name_or_path else None
        if vae is not None:
            vae.eval().to(device)
        data = open_stream(accelerator, args, caption_column=args.caption_column)

        def features_of(batch):  # the batch's own features and latents, whose rows are the batch's samples
            features = batch_clip_features(clip, tokenizer, image_processor, batch, text)
            latents = encode_latents(vae, torch.stack([sample["pixels"] for sample in batch]))
            return features, latents, torch.arange(len(batch))

        # one sample's features give the sizes a new decoder is built for
        features, latents, _ = features_of(open_stream(accelerator, args, caption_column=args.caption_column).take(1))
    else:
        data_dir = Path(args.train_data_dir)
        records = with_prompts(
            read_training_data(accelerator, args), args.prompts_per_scene, args.seed, args.caption_column
        )
        features = frozen_clip_features(
            args.clip_model_name_or_path,
            data_dir,
            records,
            args.image_column,
            args.caption_column,
            args.output_dir,
            device,
        )
        if text_dir:
            states, masks = frozen_text_states(
                text_dir, data_dir, records, args.caption_column, args.output_dir, device
            )
            features = dataclasses.replace(features, states=states, masks=masks)

        def compute_latents():
            vae = None
            if args.vae_model_name_or_path:
                vae = load_pretrained(AutoencoderKL, args.vae_model_name_or_path).eval().to(device)
            return {"latents": encode_latents(vae, load_images(data_dir, records, args.image_column, args.resolution))}

        key = {
            "vae": file_stamp(args.vae_model_name_or_path) if args.vae_model_name_or_path else None,
            "data": data_stamp(data_dir),
            "records": len(records),
            "resolution": args.resolution,
        }
        latents = cached_features(Path(args.output_dir) / "latents.safetensors", key, compute_latents)["latents"]
        if device.type != "cpu":
            # on an accelerator the features live there (a few GB for 100,000 images): a step then indexes them in
            # place instead of gathering and copying its batch on the host
            on_device = {name: getattr(features, name).to(device) for name in ("image_embeds", "states", "masks")}
            features, latents = dataclasses.replace(features, **on_device), latents.to(device)
        data = len(records)

        def features_of(batch):
            return features, latents, batch

    # 2. the conditioner and the UNet
    arch = UnclipArchitecture.from_json(args.architecture)
    if args.pretrained_model_name_or_path:
        conditioner = load_pretrained(UnclipConditioner, Path(args.pretrained_model_name_or_path) / "conditioner")
        unet = load_pretrained(UNet2DConditionModel, Path(args.pretrained_model_name_or_path) / "decoder")
        if args.reset_image_embedding:
            with torch.no_grad():
                conditioner.image_to_tokens.weight.zero_()
                unet.class_embedding.linear_1.weight.zero_()
    else:
        save_architecture(accelerator, args, arch)
        embed_dim = features.image_embeds.shape[1]
        conditioner = UnclipConditioner(embed_dim, features.states.shape[2], arch.decoder_cross_dim, arch.image_tokens)
        unet = build_decoder_unet(arch, latents.shape[-1], latents.shape[1], embed_dim)
    model = DecoderStep(conditioner, unet)
    if args.adapter is not None:
        conditioner.requires_grad_(False)
        add_training_adapter(accelerator, unet, "decoder", args)
    parameters = [p for p in model.parameters() if p.requires_grad]
    scheduler = decoder_scheduler(args.num_train_timesteps)

    # 3. train
    def compute_loss(model, batch, step):
        features, latents, batch = features_of(batch)
        # every draw covers the global batch (this process keeps its rows): any process layout trains the same
        rows, total = process_rows(len(batch), accelerator)
        chosen = pick_phrasings(
            features.phrasings, batch, args.seed, step, accelerator.process_index, accelerator.num_processes
        )
        generator = step_generator(args.seed, step, NOISE)
        drop_text = torch.rand(total, generator=generator)[rows] < args.text_dropout
        drop_image = torch.rand(total, generator=generator)[rows] < args.image_dropout
        empty = len(features.states) - 1  # the empty prompt's row, which replaces a dropped text
        chosen = torch.where(drop_text, torch.full_like(chosen, empty), chosen)
        image_embeds = features.image_embeds
        embeds = image_embeds[batch].masked_fill(drop_image[:, None].to(image_embeds.device), 0.0)
        noise, t, noisy = add_training_noise(scheduler, latents[batch], generator, rows, total)
        prediction = model(
            noisy.to(device),
            t.to(device),
            embeds.to(device),
            features.states[chosen].to(device, torch.float32),
            features.masks[chosen].to(device),
        )
        if args.snr_gamma is None:
            return F.mse_loss(prediction.float(), noise.to(device))
        weight = min_snr_weight(scheduler, t, args.snr_gamma).to(device)
        per_sample = F.mse_loss(prediction.float(), noise.to(device), reduction="none").mean(dim=(1, 2, 3))
        return (per_sample * weight).mean()

    losses = train_loop(accelerator, args, model, parameters, data, compute_loss)
    if args.streaming:
        write_stream_summary(accelerator, args, data)

    # 4. save the conditioner and UNet, or the adapter as `decoder/` (EMA weights when EMA is on)
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        with saving_run(output_dir, losses):
            if args.adapter is not None:
                save_adapter(unet, output_dir / "decoder")
            else:
                conditioner.save_pretrained(output_dir / "conditioner", safe_serialization=True)
                unet.save_pretrained(output_dir / "decoder", safe_serialization=True)
                scheduler.save_pretrained(output_dir / "decoder_scheduler")
    accelerator.end_training()
    return losses


if __name__ == "__main__":
    run_script(main)
