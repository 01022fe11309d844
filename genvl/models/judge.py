"""The text-to-image judge's network: a small grid detector of the world's objects, trained only on real renders
(never on generated images). `genvl.evaluation.judge` compares its detections with a prompt's scene graph.

The detector splits a 64x64 image into an 8x8 grid. Every cell predicts whether an object's centre lies in
it, which object and which colour it is, and where in the cell the centre is. The colours are the judge's
`colour_names` (its config lists them): the world's colour words and, for judges of the wide world, `ORIGINAL`,
the class of objects drawn in OpenMoji's original colours (colour None in a scene graph).

Cells whose objectness is above a threshold are candidates; non-maximum suppression keeps the detections
among them. With `nms_distance` None (the first judges) a candidate is kept where it is the maximum of its 3x3
neighbourhood. That drops one of two objects whose centres fall in neighbouring cells, which the wide world
allows (centres only 12 px apart), so with `nms_distance` set, candidates are kept from the highest score
down unless a kept one's centre lies within `nms_distance` px of theirs. A judge with `predict_size` also
predicts each object's size (the longer side of its box), and a kept detection then suppresses the candidates
within `SIZE_SUPPRESSION` of its size as well: a large object covers several cells that each see its centre
nearby, while two objects of the world are never closer than 0.85 of the smaller one's size.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
    )


def grid_body(channels) -> nn.Sequential:
    """The judge's convolutional body: (B, 3, H, W) -> (B, channels[-1], H/8, W/8), three stages of `channels`,
    each halving the grid. The captioner's grid encoder (`genvl.models.grid_encoder`) has the same one."""
    c1, c2, c3 = channels
    return nn.Sequential(
        _conv(3, c1, stride=2),
        _conv(c1, c1),
        _conv(c1, c2, stride=2),
        _conv(c2, c2),
        _conv(c2, c3, stride=2),
        _conv(c3, c3),
        _conv(c3, c3, dilation=2),
    )


ORIGINAL = "original"  # the colour class of objects in OpenMoji's original colours (colour None in a scene graph)
SIZE_SUPPRESSION = 0.45  # of a kept detection's size: the radius within which it suppresses others
REFERENCE_SIZE = 32.0  # predicted sizes are log(size / REFERENCE_SIZE)


def colour_class(colour: str | None) -> str:
    """The judge's colour class of a scene graph's colour: the colour word itself, `ORIGINAL` for None."""
    return ORIGINAL if colour is None else colour


@dataclass
class Detection:
    name: str
    colour: str  # one of the judge's colour names: a colour word, or ORIGINAL
    x: float  # centre, in the world's 64-unit coordinates
    y: float
    score: float
    size: float | None = None  # the longer side of its box, in 64-unit pixels (judges with predict_size)


class SceneJudge(ModelMixin, ConfigMixin):
    """Grid detector of the world's objects: (B, 3, 64, 64) images in [-1, 1] -> per-cell predictions."""

    @register_to_config
    def __init__(
        self,
        object_names: list,
        colour_names: list,
        channels: tuple = (32, 64, 128),
        image_size: int = 64,
        threshold: float = 0.5,
        nms_distance: float | None = None,
        predict_size: bool = False,
    ):
        super().__init__()
        self.body = grid_body(channels)
        self.head = nn.Conv2d(channels[-1], 1 + len(object_names) + len(colour_names) + 2 + int(predict_size), 1)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        from ..io.folders import check_diffusers_weights, check_model_folder, check_weight_values, loading_errors

        path = Path(pretrained_model_name_or_path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such judge folder")
        check_model_folder(path)
        stored = check_diffusers_weights(cls, path)
        with loading_errors(path):
            model = super().from_pretrained(path, **{"use_safetensors": True, **kwargs})
        check_weight_values(path, model, stored)
        return model

    @property
    def cell(self) -> float:
        return 64 / (self.config.image_size // 8)

    def forward(self, images: torch.Tensor) -> dict:
        out = rearrange(self.head(self.body(images)), "b k h w -> b h w k")  # K scores per grid cell
        n, c = len(self.config.object_names), len(self.config.colour_names)
        return {
            "objectness": out[..., 0],
            "objects": out[..., 1 : 1 + n],
            "colours": out[..., 1 + n : 1 + n + c],
            "offsets": out[..., 1 + n + c : 3 + n + c],
            "sizes": out[..., 3 + n + c] if self.config.predict_size else None,
        }

    def targets(self, scenes: list[dict]) -> dict:
        """Per-cell training targets of scene graphs (their boxes are in 64-unit coordinates).

        An object's colour None is the class `ORIGINAL`; a judge without that class (the first judges, of colour
        words only) leaves such an object's colour out of the loss (target -100) and learns only what and where
        it is. Any other colour must be one of the judge's."""
        grid = self.config.image_size // 8
        objectness = torch.zeros(len(scenes), grid, grid)
        objects = torch.full((len(scenes), grid, grid), -100, dtype=torch.long)  # -100: ignored by the losses
        colours = torch.full_like(objects, -100)
        offsets = torch.zeros(len(scenes), grid, grid, 2)
        sizes = torch.zeros(len(scenes), grid, grid)
        names = {name: i for i, name in enumerate(self.config.object_names)}
        colour_ids = {colour: i for i, colour in enumerate(self.config.colour_names)}
        for b, scene in enumerate(scenes):
            for obj in scene["objects"]:
                x0, y0, x1, y1 = obj["bbox"]
                cx, cy = (x0 + x1) / 2 / self.cell, (y0 + y1) / 2 / self.cell
                i, j = min(grid - 1, int(cy)), min(grid - 1, int(cx))
                objectness[b, i, j] = 1.0
                objects[b, i, j] = names[obj["name"]]
                colour = colour_class(obj["colour"])
                if colour in colour_ids:
                    colours[b, i, j] = colour_ids[colour]
                elif colour != ORIGINAL:
                    raise ValueError(f"colour {colour!r} is not one of the judge's: {', '.join(colour_ids)}")
                offsets[b, i, j] = torch.tensor([cx - j, cy - i])
                sizes[b, i, j] = math.log(max(x1 - x0, y1 - y0) / REFERENCE_SIZE)
        targets = {"objectness": objectness, "objects": objects, "colours": colours, "offsets": offsets}
        return {**targets, "sizes": sizes} if self.config.predict_size else targets

    def loss(self, outputs: dict, targets: dict) -> torch.Tensor:
        positive = targets["objectness"] > 0
        loss = F.binary_cross_entropy_with_logits(
            outputs["objectness"], targets["objectness"], pos_weight=torch.tensor(4.0, device=positive.device)
        )
        loss = loss + F.cross_entropy(outputs["objects"][positive], targets["objects"][positive])
        colours = targets["colours"][positive]  # -100 where an object's colour is not learnt
        colour_loss = F.cross_entropy(outputs["colours"][positive], colours, ignore_index=-100, reduction="sum")
        loss = loss + colour_loss / (colours >= 0).sum().clamp(min=1)
        loss = loss + F.l1_loss(outputs["offsets"][positive].sigmoid(), targets["offsets"][positive])
        if self.config.predict_size:
            loss = loss + F.l1_loss(outputs["sizes"][positive], targets["sizes"][positive])
        return loss

    @torch.no_grad()
    def detect(self, images: torch.Tensor, threshold: float | None = None) -> list[list[Detection]]:
        """Detections in (B, 3, H, W) images in [-1, 1] (resized to the judge's size when needed); objectness
        above `threshold` (default: the one in the config, chosen on real validation renders) counts, and the
        config's `nms_distance` chooses the suppression (see the module's docstring). The detections at a
        threshold are exactly those at a lower one that score above it."""
        threshold = self.config.threshold if threshold is None else threshold
        size = self.config.image_size
        if images.shape[-1] != size or images.shape[-2] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        outputs = self(images.to(device=self.device, dtype=self.dtype))
        score = outputs["objectness"].float().sigmoid()
        if self.config.nms_distance is None:
            keep = score == F.max_pool2d(score[:, None], 3, stride=1, padding=1)[:, 0]
        else:
            keep = torch.ones_like(score, dtype=torch.bool)
        found = (keep & (score.double() > threshold)).nonzero().tolist()  # as Python compares Detection.score
        detections = [[] for _ in range(images.shape[0])]
        names, colours = self.config.object_names, self.config.colour_names
        for b, i, j in found:
            dx, dy = outputs["offsets"][b, i, j].float().sigmoid().tolist()
            sizes = outputs.get("sizes")
            detections[b].append(
                Detection(
                    name=names[int(outputs["objects"][b, i, j].argmax())],
                    colour=colours[int(outputs["colours"][b, i, j].argmax())],
                    x=(j + dx) * self.cell,
                    y=(i + dy) * self.cell,
                    score=float(score[b, i, j]),
                    size=None if sizes is None else REFERENCE_SIZE * math.exp(float(sizes[b, i, j])),
                )
            )
        if self.config.nms_distance is not None:
            detections = [suppress_near(found, self.config.nms_distance) for found in detections]
        return detections


def suppress_near(detections: list[Detection], distance: float) -> list[Detection]:
    """Greedy non-maximum suppression by centre distance: from the highest score down (the earlier one first on a
    tie), a detection is kept unless a kept one's centre lies within `distance` px of its own, or within
    `SIZE_SUPPRESSION` of the kept one's predicted size. The kept ones are returned in their given order."""

    def radius(d: Detection) -> float:
        return distance if d.size is None else max(distance, SIZE_SUPPRESSION * d.size)

    kept = []
    for index in sorted(range(len(detections)), key=lambda k: -detections[k].score):
        d = detections[index]
        if all(math.dist((d.x, d.y), (detections[k].x, detections[k].y)) >= radius(detections[k]) for k in kept):
            kept.append(index)
    return [detections[k] for k in sorted(kept)]
