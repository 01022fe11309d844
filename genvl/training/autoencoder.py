"""Training the decoder's autoencoder: its training module, which parameters a run trains, the reconstruction
loss, and the latents' scaling factor measured at the end."""

import torch

from ..models.unclip import latent_means

SCALING_IMAGES = 1024  # the first training images the latents' scaling factor is measured on


class ReconstructionStep(torch.nn.Module):
    """Encode, sample the posterior, decode: one forward for accelerate to wrap. Returns (recon, mean KL)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, pixels, generator):
        posterior = self.vae.encode(pixels).latent_dist
        return self.vae.decode(posterior.sample(generator=generator)).sample, posterior.kl().mean()


def autoencoder_parameters(vae, decoder_only: bool) -> list:
    """The parameters a run trains (and keeps an EMA of): all, or with `decoder_only` the decoder's, the
    encoder and its quant_conv frozen."""
    if decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    return [p for p in vae.parameters() if p.requires_grad]


def reconstruction_loss(recon, pixels, foreground_weight: float = 0.0):
    """L1 + MSE between `recon` and `pixels` (both in [-1, 1]), each pixel weighed by 1 + `foreground_weight` *
    the target's saturation; a weighted mean, so the loss keeps its scale as the weight grows."""
    diff = recon - pixels
    error = diff.abs() + diff**2
    if not foreground_weight:
        return error.mean()
    saturation = (pixels.amax(dim=1, keepdim=True) - pixels.amin(dim=1, keepdim=True)) / 2
    weight = 1 + foreground_weight * saturation
    return (error * weight).mean() / weight.mean()


def latent_scaling_factor(vae, images, count: int = SCALING_IMAGES) -> float:
    """1 / standard deviation of the latent means of up to `count` images (uint8, N x 3 x H x W)."""
    return 1.0 / float(latent_means(vae, images[:count]).std())
