"""Training the diffusion stages (the prior and the decoder): their noise schedules, the noise and timesteps of a
step drawn over the global batch, Min-SNR loss weights, and the decoder's training module."""

import torch

from ..models.unclip import UnclipConditioner


def prior_scheduler(num_train_timesteps: int = 1000):
    """The prior's schedule: cosine betas, predicting the clean (standardised) image embedding, as in unCLIP."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="sample",
        clip_sample=False,
    )


def decoder_scheduler(num_train_timesteps: int = 1000):
    """The decoder's schedule: cosine betas, predicting the noise."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="epsilon",
        clip_sample=False,
    )


def process_rows(batch_size: int, accelerator) -> tuple[slice, int]:
    """This process's rows of the global batch, and the global batch size."""
    index = accelerator.process_index
    return slice(index * batch_size, (index + 1) * batch_size), batch_size * accelerator.num_processes


def add_training_noise(scheduler, x0, generator, rows: slice | None = None, total: int | None = None):
    """(noise, timesteps, noisy x0): one uniform timestep per sample, as diffusion models are trained. Given
    `rows` and `total`, the draws cover the global batch of `total` samples and this process keeps its rows, so
    every sample gets the same randomness however the batch is split over processes."""
    rows, total = rows or slice(None), total or len(x0)
    noise = torch.randn((total, *x0.shape[1:]), generator=generator)[rows].to(x0.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (total,), generator=generator)[rows].to(x0.device)
    return noise, t, scheduler.add_noise(x0, noise, t)


def min_snr_weight(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Loss weight min(SNR, gamma) / SNR of each timestep, for a model that predicts the noise (Min-SNR
    weighting, Hang et al. 2023)."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, t)
    return snr.clamp(max=gamma) / snr


class DecoderStep(torch.nn.Module):
    """The conditioner and the UNet as one module (one forward for accelerate to wrap), predicting the noise."""

    def __init__(self, conditioner: UnclipConditioner, unet):
        super().__init__()
        self.conditioner, self.unet = conditioner, unet

    def forward(self, noisy, t, image_embeds, text_states, text_mask):
        """(B, C, h, w) noisy latents, (B,) timesteps, (B, E) image embeddings, (B, T, H) text states and their
        (B, T) mask -> (B, C, h, w) predicted noise."""
        context = self.conditioner(image_embeds, text_states)
        mask = torch.cat([text_mask.new_ones(len(text_mask), self.conditioner.config.image_tokens), text_mask], 1)
        return self.unet(
            noisy, t, encoder_hidden_states=context, class_labels=image_embeds, encoder_attention_mask=mask
        ).sample
