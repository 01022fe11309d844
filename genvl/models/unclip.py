"""The networks of the text-to-image stack besides CLIP: the diffusion prior, the decoder's conditioning
module, the decoder UNet and its autoencoder. All are diffusers models, saved in diffusers' layout."""

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn

from .architecture import JsonArchitecture


@dataclass
class UnclipArchitecture(JsonArchitecture):
    """Named sizes of the prior, the decoder UNet and the autoencoder; saved as JSON in `configs/`."""

    prior_layers: int = 6
    prior_heads: int = 4
    prior_head_dim: int = 32
    decoder_channels: tuple = (64, 128, 192)
    decoder_attention: tuple = (False, True, True)
    decoder_layers_per_block: int = 1
    decoder_head_dim: int = 32
    decoder_cross_dim: int = 192
    image_tokens: int = 4
    latent_channels: int = 4
    autoencoder_channels: tuple = (32, 64, 128)
    autoencoder_norm_groups: int = 16


def build_prior(arch: UnclipArchitecture, embedding_dim: int, num_text_tokens: int):
    """A `PriorTransformer` mapping (text embedding, projected text token states) to a CLIP image embedding."""
    from diffusers import PriorTransformer

    return PriorTransformer(
        num_attention_heads=arch.prior_heads,
        attention_head_dim=arch.prior_head_dim,
        num_layers=arch.prior_layers,
        embedding_dim=embedding_dim,
        num_embeddings=num_text_tokens,
        additional_embeddings=4,
    )


class UnclipConditioner(ModelMixin, ConfigMixin):
    """The decoder's cross-attention context, as in unCLIP: the CLIP image embedding projected to a few extra
    tokens, followed by the CLIP text tower's token states projected to the UNet's cross-attention width."""

    @register_to_config
    def __init__(self, embedding_dim: int, text_hidden_dim: int, cross_attention_dim: int, image_tokens: int = 4):
        super().__init__()
        self.image_to_tokens = nn.Linear(embedding_dim, image_tokens * cross_attention_dim)
        self.text_proj = nn.Linear(text_hidden_dim, cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor, text_states: torch.Tensor) -> torch.Tensor:
        """(B, E) image embeddings and (B, T, H) text states -> (B, image_tokens + T, C) context."""
        image = rearrange(self.image_to_tokens(image_embeds), "b (n c) -> b n c", n=self.config.image_tokens)
        return self.norm(torch.cat([image, self.text_proj(text_states)], dim=1))


def build_decoder_unet(arch: UnclipArchitecture, sample_size: int, in_channels: int, embedding_dim: int):
    """A `UNet2DConditionModel` with cross-attention to the conditioner's context and the image embedding
    added to the timestep embedding (class_embed_type="projection")."""
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in arch.decoder_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(arch.decoder_attention))
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(arch.decoder_channels),
        layers_per_block=arch.decoder_layers_per_block,
        attention_head_dim=arch.decoder_head_dim,
        cross_attention_dim=arch.decoder_cross_dim,
        norm_num_groups=16,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=embedding_dim,
    )


def build_autoencoder(arch: UnclipArchitecture):
    """A small `AutoencoderKL`: 64 px RGB to a (latent_channels, 64 / 2^(levels-1)) latent grid."""
    from diffusers import AutoencoderKL

    levels = len(arch.autoencoder_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=arch.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(arch.autoencoder_channels),
        layers_per_block=1,
        norm_num_groups=arch.autoencoder_norm_groups,
    )


def latent_means(vae, images, batch_size: int = 128):
    """Unscaled latent means (N, C, h, w), on the CPU, of uint8 images (N, 3, H, W), encoded on the autoencoder's
    device and in its dtype, in batches."""
    import torch

    with torch.no_grad():
        out = [
            vae.encode(images[i : i + batch_size].to(vae.device, vae.dtype) / 127.5 - 1).latent_dist.mean.cpu()
            for i in range(0, len(images), batch_size)
        ]
    return torch.cat(out)
