"""Image augmentation for captioner training that keeps every caption true.

Six kinds, each chosen per image and per step from the run's seed:
- flip: the image mirrored left to right, trained on the caption of the mirrored scene graph
  (`genvl.world.scenes.mirror_scene`), whose left/right words are swapped.
- shift: the image moved by whole pixels, no further than keeps every object inside the frame and a single
  object's place word (its third of the frame) unchanged; the uncovered border repeats the edge pixels.
- squash: half the images narrowed along one axis to 45-95% of the frame, as a wide or tall picture is when an image
  processor resizes it to a square; the narrowed image is placed where every object keeps its caption (a single
  object its third of the frame) and the uncovered border repeats the edge pixels. A squashed image is not shifted.
- letterbox: 30% of the other images cut to a band of 40-90% of the frame along one axis, holding every object (a
  single object in its third of the band), and padded back to a square, centred, with `pad_colour(..., "contrast")`
  of the band's border (or the run's letterbox fill): a wide or tall picture as a captioner with that `pad_fill`
  sees it, whose place words are the picture's thirds, not the square's. Applied after jpeg, as the pipeline pads a
  picture it has read. A letterboxed image is not shifted. With a picture mask, the model is also told where the
  band lies (`genvl.models.grid_encoder`: picture positions).
- light: brightness and contrast scaled by up to 10%, too little to change a colour word.
- jpeg: half the images saved and read back as JPEG, at a quality drawn from 30 to 95 and with the colour planes
  at full or half resolution (PIL's default), as people's pictures often reach a model; applied after the other
  kinds but letterbox, to the image as it would be saved.

Colours are never shifted in hue, and images are never scaled as a whole: hue would falsify colour words, scale
the size words and the size bands that training holds out (squash keeps the other axis, the one the size words
read on a narrowed object).
"""

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..io.images import pad_colour, pixels_to_uint8
from ..io.images import picture_mask as picture_mask_of
from ..world.scenes import mirror_scene, place_word

AUGMENTATIONS = ("flip", "shift", "squash", "letterbox", "light", "jpeg")
NEED_SCENES = ("flip", "shift", "squash", "letterbox")  # kinds that read the scene graph to keep the caption true
LIGHT = 0.1
JPEG_SHARE, JPEG_QUALITIES = 0.5, (30, 95)
SQUASH_SHARE, SQUASH_FACTORS = 0.5, (0.45, 0.95)
LETTERBOX_SHARE, LETTERBOX_LENGTHS = 0.3, (0.4, 0.9)
THIRD = 64 / 3


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


def _reach(scene: dict) -> list[tuple[float, float, float, float]]:
    """The objects' boxes, widened where a turned sprite reaches out of its box."""
    boxes = []
    for obj in scene["objects"]:
        x0, y0, x1, y1 = obj["bbox"]
        margin = 0.12 * (x1 - x0) if obj.get("angle") else 0.0
        boxes.append((x0 - margin, y0 - margin, x1 + margin, y1 + margin))
    return boxes


def _single_centre(scene: dict) -> tuple[float, float] | None:
    """The centre of a scene's single object; None for other layouts."""
    if scene["layout"] != "single":
        return None
    x0, y0, x1, y1 = scene["objects"][0]["bbox"]
    return (x0 + x1) / 2, (y0 + y1) / 2


def _movable(scene: dict) -> bool:
    """False for a single object whose place word is not its third of the frame's (the classic world's): neither
    shift nor squash may move it."""
    centre = _single_centre(scene)
    return centre is None or place_word(*centre) == scene["objects"][0].get("position")


def third_start(p: float) -> float:
    """Where the third of the 64-unit frame holding `p` begins (a place word's column or row)."""
    return (p // THIRD) * THIRD


def shift_range(scene: dict) -> tuple[float, float, float, float]:
    """(left, right, up, down): how far, in 64-unit pixels, the scene can move each way with its caption still
    true: every object stays inside the frame, a single object in its third of the frame, and no object that
    touches an edge moves away from it (the repeated edge pixels would smear it)."""
    if not _movable(scene):
        return 0.0, 0.0, 0.0, 0.0
    boxes = _reach(scene)
    gaps = [
        min(box[0] for box in boxes),
        64 - max(box[2] for box in boxes),
        min(box[1] for box in boxes),
        64 - max(box[3] for box in boxes),
    ]
    left, right, up, down = gaps
    left, right = (0.0 if gaps[1] < 1 else left), (0.0 if gaps[0] < 1 else right)
    up, down = (0.0 if gaps[3] < 1 else up), (0.0 if gaps[2] < 1 else down)
    centre = _single_centre(scene)
    if centre is not None:
        x, y = centre
        lo_x, lo_y = third_start(x), third_start(y)
        left, right = min(left, x - lo_x - 1), min(right, lo_x + THIRD - x - 1)
        up, down = min(up, y - lo_y - 1), min(down, lo_y + THIRD - y - 1)
    return tuple(max(0.0, value) for value in (left, right, up, down))


def squash_room(scene: dict) -> tuple[float, float, float, float, float, float]:
    """What `squash` needs to keep the caption true, in 64-unit pixels: (low, high, centre) along x, then along y:
    where the objects begin and end on that axis, and a single object's centre (-1 for other scenes). All NaN for a
    scene that must not be squashed (a single object whose place word is not its third's)."""
    if not _movable(scene):
        return (math.nan,) * 6
    boxes = _reach(scene)
    centre = _single_centre(scene) or (-1.0, -1.0)
    return tuple(
        value
        for axis in (0, 1)
        for value in (min(box[axis] for box in boxes), max(box[axis + 2] for box in boxes), centre[axis])
    )


def squash_offsets(low: float, high: float, centre: float, factor: float) -> tuple[float, float] | None:
    """The offsets c (64-unit pixels) at which a frame narrowed by `factor` (a point p goes to factor * p + c) keeps
    the caption true: an object touching an edge stays on it (the repeated edge pixels would smear it), and a single
    object centred at `centre` stays in its third, a pixel from its edges. None where no offset does."""
    first, last = 0.0, 64 * (1 - factor)
    if math.isnan(low) or (low < 1 and high > 63):
        return None
    if low < 1:
        last = 0.0
    if high > 63:
        first = 64 * (1 - factor)
    if centre >= 0:
        lo = third_start(centre)
        first, last = max(first, lo + 1 - factor * centre), min(last, lo + THIRD - 1 - factor * centre)
    return (first, last) if first <= last else None


def letterbox_offsets(low: float, high: float, centre: float, length: float) -> tuple[float, float] | None:
    """The starts t (64-unit pixels) of a band [t, t + length] of the frame that holds every object lying from `low`
    to `high` (an object the frame cuts stays cut by the band's end) and keeps a single object centred at `centre`
    in the same third of the band as of the frame, a pixel from its edges. None where no start does."""
    if math.isnan(low):
        return None
    first, last = max(0.0, min(high, 64.0) - length), min(max(low, 0.0), 64 - length)
    if centre >= 0:
        third, margin = centre // THIRD, length / 64
        first = max(first, centre - (third + 1) * length / 3 + margin)
        last = min(last, centre - third * length / 3 - margin)
    return (first, last) if first <= last else None


def letterbox_image(pixels: torch.Tensor, vertical: bool, size: int, offset: int, fill: str = "contrast"):
    """The band of `size` pixels from `offset` along one axis of a (3, H, W) image in [-1, 1], centred on a frame
    of the image's size filled with `pad_colour(..., fill)` of the band's border, as `pad_to_square` pads."""
    band = pixels[:, offset : offset + size] if vertical else pixels[:, :, offset : offset + size]
    edges = torch.cat([band[:, 0], band[:, -1], band[:, :, 0], band[:, :, -1]], dim=1)  # (3, N)
    fill = torch.tensor(pad_colour(pixels_to_uint8(edges).T.numpy(), fill), dtype=torch.float32) / 127.5 - 1
    framed = fill.to(pixels.device, pixels.dtype).view(3, 1, 1).expand_as(pixels).clone()
    start = ((pixels.shape[1] if vertical else pixels.shape[2]) - size) // 2
    if vertical:
        framed[:, start : start + size] = band
    else:
        framed[:, :, start : start + size] = band
    return framed


def squash_image(pixels: torch.Tensor, vertical: bool, size: int, offset: int) -> torch.Tensor:
    """A (C, H, W) image narrowed to `size` pixels along one axis (bilinear, antialiased, as image processors
    resize) and placed `offset` pixels from the frame's start; the uncovered border repeats the edge pixels."""
    _, h, w = pixels.shape
    length = h if vertical else w
    target = (size, w) if vertical else (h, size)
    narrow = F.interpolate(pixels[None], size=target, mode="bilinear", antialias=True, align_corners=False)[0]
    index = (torch.arange(length, device=pixels.device) - offset).clamp(0, size - 1)
    return narrow.index_select(1 if vertical else 2, index)


def scene_room(scene: dict) -> tuple[float, ...]:
    """The room a scene leaves shift, squash and letterbox: its `shift_range` then its `squash_room` (10 numbers)."""
    return shift_range(scene) + squash_room(scene)


def scene_rooms(scenes, kinds) -> torch.Tensor | None:
    """The (B, 10) `scene_room`s of `scenes` (an iterable, read only when needed) for `augment_batch`; None when
    `kinds` neither shifts, squashes nor letterboxes."""
    if not {"shift", "squash", "letterbox"} & set(kinds):
        return None
    return torch.tensor([scene_room(scene) for scene in scenes])


def pad_fill_of(kinds, start=None, chosen: str | None = None, letterbox_fill: str = "contrast") -> str:
    """The `pad_fill` (see `CaptionPipeline`) of a captioner trained with augmentation `kinds`, from a pipeline
    whose config is `start` (None: a fresh captioner): the run's `chosen` one (`--pad_fill`) if any, else
    `letterbox_fill` after letterbox, which trains the model to see that fill, else the start's own ("border" for
    a fresh one)."""
    if chosen:
        return chosen
    return letterbox_fill if "letterbox" in kinds else (start or {}).get("pad_fill", "border")


def _axis_room(room: torch.Tensor, vertical: bool, flipped: bool) -> tuple[float, float, float]:
    """(low, high, centre) of a `scene_room` along one axis, of the mirrored scene when `flipped`."""
    low, high, centre = room[7:].tolist() if vertical else room[4:7].tolist()
    if flipped and not vertical:
        low, high, centre = 64 - high, 64 - low, (64 - centre if centre >= 0 else centre)
    return low, high, centre


def _pixel_offset(offsets: tuple[float, float] | None, length: int, place: float) -> int | None:
    """A whole-pixel offset in the 64-unit range `offsets` of a `length`-pixel axis, at `place` in [0, 1) along
    the range's pixels; None where the range holds no whole pixel."""
    if offsets is None:
        return None
    first, last = math.ceil(offsets[0] * length / 64), math.floor(offsets[1] * length / 64)
    return None if first > last else first + min(int(place * (last - first + 1)), last - first)


def augment_batch(
    pixels: torch.Tensor,
    rooms: torch.Tensor | None,
    kinds,
    generator: torch.Generator,
    letterbox_fill: str = "contrast",
    picture_mask: bool = False,
):
    """Augment (B, 3, H, W) images in [-1, 1], on their device. `rooms` (B, 10) are the scenes' `scene_room`s
    (needed for "shift", "squash" and "letterbox"). The draws come from `generator` on the CPU, so a seed gives the
    same batch on any device. Letterboxed images are padded with `pad_colour(..., letterbox_fill)`; with
    `picture_mask`, the pixels gain a fourth channel, the mask of where each picture lies (1 but on a letterbox's
    padding), as `genvl.io.images.preprocess_each` gives an encoder with picture positions. Returns (pixels, flipped,
    shifts), on the CPU: `flipped` (B,) bool marks the images to train on mirrored captions, and `shifts` (B, 2) how
    many pixels each image moved right and down (after its flip)."""
    b, _, h, w = pixels.shape
    draw = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    flipped = torch.zeros(b, dtype=torch.bool)
    unshifted = torch.zeros(b, dtype=torch.bool)  # squashed or letterboxed
    shifts = torch.zeros(b, 2, dtype=torch.long)
    if "flip" in kinds:
        flipped = draw(b) < 0.5
        pixels = torch.where(flipped.to(pixels.device).view(b, 1, 1, 1), pixels.flip(-1), pixels)
    if "squash" in kinds:
        chosen, vertical, places = draw(b) < SQUASH_SHARE, draw(b) < 0.5, draw(b)
        low, high = SQUASH_FACTORS
        factors = low + draw(b) * (high - low)
        pixels = pixels.clone()
        for i in chosen.nonzero().flatten().tolist():
            length = h if vertical[i] else w
            size = max(1, round(float(factors[i]) * length))
            low, high, centre = _axis_room(rooms[i], bool(vertical[i]), bool(flipped[i]))
            offset = _pixel_offset(squash_offsets(low, high, centre, size / length), length, float(places[i]))
            if offset is None:
                continue
            pixels[i] = squash_image(pixels[i], bool(vertical[i]), size, offset)
            unshifted[i] = True
    letterboxes = {}  # image -> (vertical, size, offset), cut after jpeg
    if "letterbox" in kinds:
        chosen, vertical, places = draw(b) < LETTERBOX_SHARE, draw(b) < 0.5, draw(b)
        low, high = LETTERBOX_LENGTHS
        fractions = low + draw(b) * (high - low)
        for i in (chosen & ~unshifted).nonzero().flatten().tolist():
            length = h if vertical[i] else w
            size = max(1, round(float(fractions[i]) * length))
            room = _axis_room(rooms[i], bool(vertical[i]), bool(flipped[i]))
            offset = _pixel_offset(letterbox_offsets(*room, size * 64 / length), length, float(places[i]))
            if offset is not None:
                letterboxes[i] = (bool(vertical[i]), size, offset)
                unshifted[i] = True
    if "shift" in kinds:
        scale = w / 64
        left, right, up, down = (rooms[:, :4] * scale).floor().long().unbind(1)
        left, right = torch.where(flipped, right, left), torch.where(flipped, left, right)  # ranges of the flip
        dx = (draw(b) * (left + right + 1)).long() - left  # uniform in [-left, right]
        dy = (draw(b) * (up + down + 1)).long() - up
        dx, dy = dx.masked_fill(unshifted, 0), dy.masked_fill(unshifted, 0)
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
    if letterboxes:
        pixels = pixels.clone()
        for i, (vertical, size, offset) in letterboxes.items():
            pixels[i] = letterbox_image(pixels[i], vertical, size, offset, letterbox_fill)
    if picture_mask:  # where each picture lies, as the pipeline marks a padded one
        mask = torch.ones(b, 1, h, w)
        for i, (vertical, size, _) in letterboxes.items():
            mask[i, 0] = picture_mask_of(w if vertical else size, size if vertical else h, (h, w))
        pixels = torch.cat([pixels, mask.to(pixels.device, pixels.dtype)], dim=1)
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
