"""A convolutional image encoder for the captioner: the judge's body (`genvl.models.judge.grid_body`), whose 8x8
output grid, with a learnt embedding per cell, is the sequence of image tokens the decoder attends to.

Why a second encoder beside ViT and Swin: the judge, a small CNN trained on the world's renders, finds objects at
every size, place and background of the wide world (held-out families included), which the ViT captioners learn
only after far more training than these machines give. `GridEncoder.from_judge` starts from a trained judge's
body, so that a question-answering model can read the wide world with the judge's eyes.

Both classes are transformers ones, registered with `AutoConfig`/`AutoModel` when this module is imported (as
`genvl.pipelines.caption` does), so that `VisionEncoderDecoderModel` builds, saves and loads a grid encoder as it
does a ViT: `config.json` names it by `model_type`, and nothing is imported from a model folder.
"""

import torch
from einops import rearrange
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .judge import grid_body

MODEL_TYPE = "genvl-grid-encoder"


class GridEncoderConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, image_size: int = 64, channels=(64, 128, 256), **kwargs):
        kwargs.pop("hidden_size", None)  # always the last stage's width
        super().__init__(**kwargs)
        if len(channels) != 3 or image_size % 8:
            raise ValueError(
                f"a grid encoder needs three channel widths and an image size divisible by 8, got "
                f"{list(channels)} and {image_size}"
            )
        self.image_size = image_size
        self.channels = list(channels)
        self.hidden_size = self.channels[-1]


class GridEncoder(PreTrainedModel):
    """(B, 3, S, S) pixel values in [-1, 1] -> (B, (S/8)^2, channels[-1]) states, one per grid cell, row by row."""

    config_class = GridEncoderConfig
    base_model_prefix = "grid_encoder"
    main_input_name = "pixel_values"

    def __init__(self, config: GridEncoderConfig):
        super().__init__(config)
        self.body = grid_body(config.channels)
        cells = (config.image_size // 8) ** 2
        self.position = nn.Parameter(torch.zeros(1, cells, config.hidden_size))
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, GridEncoder):
            nn.init.normal_(module.position, std=0.02)

    @classmethod
    def from_judge(cls, judge) -> "GridEncoder":
        """A grid encoder holding a `SceneJudge`'s body (its weights copied), with fresh cell embeddings."""
        encoder = cls(GridEncoderConfig(image_size=judge.config.image_size, channels=judge.config.channels))
        encoder.body.load_state_dict(judge.body.state_dict())
        return encoder

    def forward(self, pixel_values: torch.Tensor, return_dict=None, **kwargs) -> BaseModelOutput:
        size = self.config.image_size
        if pixel_values.shape[-2:] != (size, size):
            raise ValueError(f"the grid encoder reads {size}x{size} images, got {tuple(pixel_values.shape[-2:])}")
        grid = self.body(pixel_values.to(self.position.dtype))
        states = rearrange(grid, "b c h w -> b (h w) c") + self.position
        return BaseModelOutput(last_hidden_state=states)


AutoConfig.register(MODEL_TYPE, GridEncoderConfig, exist_ok=True)
AutoModel.register(GridEncoderConfig, GridEncoder, exist_ok=True)
