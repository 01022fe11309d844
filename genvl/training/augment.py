"""Image augmentation for captioner training that keeps every caption true.

Four kinds, each chosen per image and per step from the run's seed:
- flip: the image mirrored left to right, trained on the caption of the mirrored scene graph
  (`genvl.world.scenes.mirror_scene`), whose left/right words are swapped.
- shift: the image moved by whole pixels, no further than keeps every object inside the frame and a single
  object's place word (its third of the frame) unchanged; the uncovered border repeats the edge pixels.
- light: brightness and contrast scaled by up to 10%, too little to change a colour word.
- jpeg: half the images saved and read back as JPEG, at a quality drawn from 30 to 95 and with the colour planes
  at full or half resolution (PIL's default), as people's pictures often reach a model; applied last, to the image
  as it would be saved.

Colours are never shifted in hue, and images are never rescaled: hue would falsify colour words, scale the size
words and the size bands that training holds out.
"""

import io

import numpy as np
import torch
from PIL import Image

from ..io.images import pixels_to_uint8
from ..world.scenes import mirror_scene, place_word

AUGMENTATIONS = ("flip", "shift", "light", "jpeg")
NEED_SCENES = ("flip", "shift")  # kinds that read the scene graph to keep the caption true
LIGHT = 0.1
JPEG_SHARE, JPEG_QUALITIES = 0.5, (30, 95)


def parse_augmentations(text: str) -> tuple[str, ...]:
    """ "flip,shift" -> ("flip", "shift"); "" -> ()."""
    kinds = tuple(kind.strip() for kind in text.split(",") if kind.strip())
    unknown = [kind for kind in kinds if kind not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}; kinds: {', '.join(AUGMENTATIONS)}")
    return kinds


def mirrored_captions(scenes: list[dict], caption_of) -> list[str]:
    """The caption of each scene mirrored left to right, by `caption_of(scene)`."""
    return [caption_of(mirror_scene(scene)) for scene in scenes]


def shift_range(scene: dict) -> tuple[float, float, float, float]:
    """(left, right, up, down): how far, in 64-unit pixels, the scene can move each way with its caption still
    true: every object stays inside the frame, a single object in its third of the frame, and no object that
    touches an edge moves away from it (the repeated edge pixels would smear it)."""
    boxes = []
    for obj in scene["objects"]:
        x0, y0, x1, y1 = obj["bbox"]
        margin = 0.12 * (x1 - x0) if obj.get("angle") else 0.0  # a turned sprite reaches out of its box
        boxes.append((x0 - margin, y0 - margin, x1 + margin, y1 + margin))
    gaps = [
        min(box[0] for box in boxes),
        64 - max(box[2] for box in boxes),
        min(box[1] for box in boxes),
        64 - max(box[3] for box in boxes),
    ]
    left, right, up, down = gaps
    left, right = (0.0 if gaps[1] < 1 else left), (0.0 if gaps[0] < 1 else right)
    up, down = (0.0 if gaps[3] < 1 else up), (0.0 if gaps[2] < 1 else down)
    if scene["layout"] == "single":
        x0, y0, x1, y1 = scene["objects"][0]["bbox"]
        x, y = (x0 + x1) / 2, (y0 + y1) / 2
        if place_word(x, y) != scene["objects"][0].get("position"):
            return 0.0, 0.0, 0.0, 0.0  # a scene whose place word is not its third's (the classic world's)
        third = 64 / 3
        lo_x, lo_y = (x // third) * third, (y // third) * third
        left, right = min(left, x - lo_x - 1), min(right, lo_x + third - x - 1)
        up, down = min(up, y - lo_y - 1), min(down, lo_y + third - y - 1)
    return tuple(max(0.0, value) for value in (left, right, up, down))


def augment_batch(pixels: torch.Tensor, ranges: torch.Tensor | None, kinds, generator: torch.Generator):
    """Augment (B, 3, H, W) images in [-1, 1], on their device. `ranges` (B, 4) are the scenes' `shift_range`s
    (needed for "shift"). The draws come from `generator` on the CPU, so a seed gives the same batch on any device.
    Returns (pixels, flipped, shifts), on the CPU: `flipped` (B,) bool marks the images to train on mirrored
    captions, and `shifts` (B, 2) how many pixels each image moved right and down (after its flip)."""
    b, _, h, w = pixels.shape
    draw = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    flipped = torch.zeros(b, dtype=torch.bool)
    shifts = torch.zeros(b, 2, dtype=torch.long)
    if "flip" in kinds:
        flipped = draw(b) < 0.5
        pixels = torch.where(flipped.to(pixels.device).view(b, 1, 1, 1), pixels.flip(-1), pixels)
    if "shift" in kinds:
        scale = w / 64
        left, right, up, down = (ranges * scale).floor().long().unbind(1)
        left, right = torch.where(flipped, right, left), torch.where(flipped, left, right)  # ranges of the flip
        dx = (draw(b) * (left + right + 1)).long() - left  # uniform in [-left, right]
        dy = (draw(b) * (up + down + 1)).long() - up
        pixels = shift_images(pixels, dx.to(pixels.device), dy.to(pixels.device))
        shifts = torch.stack([dx, dy], 1)
    if "light" in kinds:
        gain, contrast = ((1 + (draw(b, 1, 1, 1) * 2 - 1) * LIGHT).to(pixels.device) for _ in range(2))
        pixels = (pixels + 1) * gain - 1
        mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
        pixels = ((pixels - mean) * contrast + mean).clamp(-1, 1)
    if "jpeg" in kinds:
        chosen = draw(b) < JPEG_SHARE
        low, high = JPEG_QUALITIES
        qualities = (low + draw(b) * (high - low + 1)).long().clamp(max=high)
        halved = draw(b) < 0.5
        pixels = pixels.clone()
        for i in chosen.nonzero().flatten().tolist():
            pixels[i] = jpeg_image(pixels[i], int(qualities[i]), bool(halved[i]))
    return pixels, flipped, shifts


def jpeg_image(pixels: torch.Tensor, quality: int, halve_colour: bool) -> torch.Tensor:
    """A (3, H, W) image in [-1, 1] saved as JPEG at `quality` (colour planes at half resolution when
    `halve_colour`, else full) and read back, on its device and in its dtype."""
    buffer = io.BytesIO()
    Image.fromarray(pixels_to_uint8(pixels.detach()).permute(1, 2, 0).numpy()).save(
        buffer, format="JPEG", quality=quality, subsampling=2 if halve_colour else 0
    )
    decoded = np.asarray(Image.open(buffer).convert("RGB"))
    back = torch.from_numpy(decoded.copy()).permute(2, 0, 1).float() / 127.5 - 1
    return back.to(pixels.device, pixels.dtype)


def shift_images(pixels: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Move image i of (B, C, H, W) `pixels` right by dx[i] and down by dy[i] whole pixels; the uncovered border
    repeats the edge pixels (each output pixel reads the nearest input pixel inside the frame)."""
    b, c, h, w = pixels.shape
    rows = (torch.arange(h, device=pixels.device) - dy[:, None]).clamp(0, h - 1)  # (B, H)
    cols = (torch.arange(w, device=pixels.device) - dx[:, None]).clamp(0, w - 1)  # (B, W)
    pixels = pixels.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    return pixels.gather(3, cols[:, None, None, :].expand(b, c, h, w))
