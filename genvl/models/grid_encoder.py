"""A convolutional image encoder for the captioner: the judge's body (`genvl.models.judge.grid_body`), whose 8x8
output grid, with a learnt embedding per cell, is the sequence of image tokens the decoder attends to.

Why a second encoder beside ViT and Swin: the judge, a small CNN trained on the world's renders, finds objects at
every size, place and background of the wide world (held-out families included), which the ViT captioners learn
only after far more training than these machines give. `GridEncoder.from_judge` starts from a trained judge's
body, so that a question-answering model can read the wide world with the judge's eyes.

Both classes are transformers ones, registered with `AutoConfig`/`AutoModel` when this module is imported (as
`genvl.pipelines.caption` does), so that `VisionEncoderDecoderModel` builds, saves and loads a grid encoder as it
does a ViT: `config.json` names it by `model_type`, and nothing is imported from a model folder.

Picture positions (`picture_positions` in the config): a wide or tall picture padded to a square fills only a band
of it, so the cells' learnt positions say where an object lies in the square, not in the picture, and a padded
picture's top third sits near the square's middle. With picture positions, the pixel values carry a fourth
channel, the picture's mask (1 where the picture is, 0 on the padding; `genvl.io.images.preprocess_each`), and
each cell's position embedding is the learnt grid read at the cell's place within the picture's box (bilinear,
the edge cells' embeddings beyond it), so that the picture's thirds are the grid's thirds. A square picture, or
pixel values of three channels, read the learnt grid as it is.
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .judge import grid_body

MODEL_TYPE = "genvl-grid-encoder"


class GridEncoderConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, image_size: int = 64, channels=(64, 128, 256), picture_positions: bool = False, **kwargs):
        kwargs.pop("hidden_size", None)  # always the last stage's width
        super().__init__(**kwargs)
        if len(channels) != 3 or image_size % 8:
            raise ValueError(
                f"a grid encoder needs three channel widths and an image size divisible by 8, got "
                f"{list(channels)} and {image_size}"
            )
        if not isinstance(picture_positions, bool):
            raise ValueError(f"picture_positions must be true or false, got {picture_positions!r}")
        self.image_size = image_size
        self.channels = list(channels)
        self.picture_positions = picture_positions
        self.hidden_size = self.channels[-1]


class GridEncoder(PreTrainedModel):
    """(B, 3, S, S) pixel values in [-1, 1] -> (B, (S/8)^2, channels[-1]) states, one per grid cell, row by row.
    With `picture_positions`, (B, 4, S, S) pixel values whose last channel is the picture's mask."""

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
        channels = pixel_values.shape[1]
        if channels != 3 and not (channels == 4 and self.config.picture_positions):
            with_mask = " (4 with the picture mask)" if self.config.picture_positions else ""
            raise ValueError(f"the grid encoder reads 3 channels{with_mask}, got {channels}")
        grid = self.body(pixel_values[:, :3].to(self.position.dtype))
        position = self.position if channels == 3 else self.picture_position(pixel_values[:, 3])
        states = rearrange(grid, "b c h w -> b (h w) c") + position
        return BaseModelOutput(last_hidden_state=states)

    def picture_position(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, cells, C) position embeddings of pictures whose (B, S, S) `mask` marks where each lies in the
        square: the learnt grid read at each cell centre's place within its picture's box."""
        size, cells = self.config.image_size, self.config.image_size // 8
        inside = mask > 0.5
        centres = (torch.arange(cells, device=mask.device, dtype=torch.float32) + 0.5) * 8  # in pixels

        def within(lines: torch.Tensor) -> torch.Tensor:  # (B, S) bool -> (B, cells) places in [-1, 1]
            index = torch.arange(size, device=mask.device)
            start = torch.where(lines, index, size).amin(1, keepdim=True).clamp(max=size - 1)
            stop = torch.where(lines, index + 1, 0).amax(1, keepdim=True).clamp(min=start + 1)
            place = (centres - start) / (stop - start) * 2 - 1  # 0 and 1 at the box's edges
            edge = 1 - 1 / cells  # the outer cells' centres: beyond them, the edge cells' embeddings
            return place.clamp(-edge, edge)

        across, down = within(inside.any(1)), within(inside.any(2))
        where = torch.stack(torch.broadcast_tensors(across[:, None, :], down[:, :, None]), dim=-1)  # (B, h, w, 2)
        learnt = rearrange(self.position, "1 (h w) c -> 1 c h w", h=cells).expand(len(mask), -1, -1, -1)
        read = F.grid_sample(learnt, where.to(learnt.dtype), mode="bilinear", align_corners=False)
        return rearrange(read, "b c h w -> b (h w) c")


AutoConfig.register(MODEL_TYPE, GridEncoderConfig, exist_ok=True)
AutoModel.register(GridEncoderConfig, GridEncoder, exist_ok=True)
