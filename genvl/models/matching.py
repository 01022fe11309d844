"""Image-text matching (ITM) on a captioner: whether a caption describes an image, read from the captioner's
decoder run over the caption with the image's encoder states (the decoder's cross-attention is the fusion of
image and text, as in BLIP's decoder-side matching).

`MatchingHead` reads, for each caption, the decoder's last-layer state at the caption's last position and its
mean over the caption, with the log-probability the captioner gives each of the caption's tokens (their sum,
least and mean), and gives a logit. The captioner stays as it is: the head is a small component of its pipeline
folder (`matcher/`), trained by `genvl train matching` on captions, their twins and in-batch hard negatives.
"""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .captioner import tokenize_captions

LOGPROB_FEATURES = 3  # sum, least, mean of the caption tokens' log-probabilities


class MatchingHead(ModelMixin, ConfigMixin):
    """Decoder states and token log-probabilities of a caption -> a logit that it describes the image."""

    @register_to_config
    def __init__(self, hidden_size: int, width: int = 256):
        super().__init__()
        features = 2 * hidden_size + LOGPROB_FEATURES
        self.norm = nn.LayerNorm(features)
        self.mlp = nn.Sequential(nn.Linear(features, width), nn.GELU(), nn.Linear(width, 1))

    def forward(self, states: torch.Tensor, token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,) logits of captions: `states` (B, T, H) at the positions that predict the caption's tokens and EOS,
        `token_logprobs` (B, T) of those tokens, `mask` (B, T) 1 on them."""
        mask = mask.to(states.dtype)
        count = mask.sum(1).clamp(min=1)
        last = states[torch.arange(len(states)), mask.sum(1).long().clamp(min=1) - 1]
        mean = (states * mask[..., None]).sum(1) / count[:, None]
        logprobs = token_logprobs * mask
        least = torch.where(mask > 0, token_logprobs, torch.zeros_like(token_logprobs)).amin(1)
        stats = torch.stack([logprobs.sum(1), least, logprobs.sum(1) / count], dim=1)
        features = torch.cat([last, mean, stats], dim=1).to(self.norm.weight.dtype)  # the head's own dtype
        return self.mlp(self.norm(features)).squeeze(-1).float()


def caption_features(model, tokenizer, encoder_states: torch.Tensor, captions: list[str]):
    """(states, token log-probabilities, mask) that `MatchingHead` reads, of caption i with image states
    `encoder_states[i]` (B, N, C), from the captioner `model`'s decoder (a VisionEncoderDecoder's)."""
    length = model.config.decoder.max_position_embeddings
    inputs, labels = tokenize_captions(tokenizer, captions, length)
    if model.config.decoder_start_token_id is not None:
        inputs[:, 0] = model.config.decoder_start_token_id
    longest = int((labels != -100).sum(1).max())
    inputs, labels = inputs[:, :longest].to(encoder_states.device), labels[:, :longest].to(encoder_states.device)
    mask = (labels != -100).long()
    out = model.decoder(
        input_ids=inputs, attention_mask=mask, encoder_hidden_states=encoder_states, output_hidden_states=True
    )
    logprobs = out.logits.float().log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return out.hidden_states[-1], logprobs * mask, mask
