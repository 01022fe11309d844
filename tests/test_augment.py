"""Captioner augmentation keeps every caption true: flips train on the mirrored scene's caption, shifts and squashes
keep every object in the frame and a single object in its third, letterboxes keep every object in the band and a
single object in the band's third, light changes are small, JPEG round trips are PIL's."""

import io
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from genvl.io.images import pad_colour, pad_to_square, pixels_to_uint8
from genvl.training.augment import (
    augment_batch,
    jpeg_image,
    letterbox_offsets,
    parse_augmentations,
    scene_room,
    shift_images,
    squash_image,
    squash_offsets,
)
from genvl.world import parse_caption, render_scene, sample_scene, scene_captions, scene_facts
from genvl.world.scenes import mirror_scene, place_word


def pixels_of(scenes):
    arrays = [np.asarray(render_scene(scene), dtype=np.float32) for scene in scenes]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1


def ink(image: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """The (H, W) mask of the pixels that differ from a plain background."""
    return (image - background.view(3, 1, 1)).abs().amax(0) > 0.1


def box(mask: torch.Tensor):
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1


def test_parse_augmentations():
    assert parse_augmentations("") == ()
    assert parse_augmentations("flip, shift,light") == ("flip", "shift", "light")
    assert parse_augmentations("jpeg") == ("jpeg",)
    with pytest.raises(ValueError, match="unknown augmentation 'zoom'"):
        parse_augmentations("flip,zoom")


def test_flipped_images_are_the_mirrored_scenes():
    scenes = [sample_scene(random.Random(i), style={"background": "white"}) for i in range(16)]
    images = pixels_of(scenes)
    out, flipped, _ = augment_batch(images, None, ("flip",), torch.Generator().manual_seed(0))
    assert 0 < int(flipped.sum()) < 16
    for i, scene in enumerate(scenes):
        if flipped[i]:
            mirrored = pixels_of([mirror_scene(scene)])[0]
            assert (out[i] - mirrored).abs().mean() < 0.1  # the same picture up to sub-pixel placement
            caption = scene_captions(mirror_scene(scene))[0]
            assert parse_caption(caption) == scene_facts(mirror_scene(scene))
        else:
            assert torch.equal(out[i], images[i])


def test_shifts_keep_objects_in_frame_and_single_objects_in_their_third():
    scenes = [sample_scene(random.Random(f"s{i}"), style={"background": "white"}) for i in range(24)]
    images = pixels_of(scenes)
    rooms = torch.tensor([scene_room(scene) for scene in scenes])
    moved = 0
    for seed in range(4):
        out, flipped, shifts = augment_batch(images, rooms, ("flip", "shift"), torch.Generator().manual_seed(seed))
        for i, scene in enumerate(scenes):
            truth = mirror_scene(scene) if flipped[i] else scene
            background = pixels_of([truth])[0]
            before, after = ink(background, background[:, 0, 0]), ink(out[i], background[:, 0, 0])
            assert abs(int(after.sum()) - int(before.sum())) <= 0.03 * int(before.sum())  # nothing pushed out
            x0, y0, x1, y1 = box(after)
            dx, dy = shifts[i].tolist()
            bx0, by0, bx1, by1 = box(before)
            assert (x0, y0, x1, y1) == (bx0 + dx, by0 + dy, bx1 + dx, by1 + dy)  # moved by the shift it reports
            if truth["layout"] == "single":
                assert place_word((x0 + x1) / 2, (y0 + y1) / 2) == truth["objects"][0]["position"]
            moved += (bx0, by0, bx1, by1) != (x0, y0, x1, y1)
    assert moved > 20


def test_squashes_narrow_one_axis_and_keep_objects_in_frame_and_single_objects_in_their_third():
    """A squashed image is a wide or tall picture as an image processor squares it: the ink of every object is
    narrowed along one axis and keeps its extent along the other, nothing leaves the frame, and a single object's
    centre stays in the third of the frame its caption names."""
    scenes = [sample_scene(random.Random(f"q{i}"), style={"background": "white"}) for i in range(48)]
    scenes = [scene for scene in scenes if not any(obj.get("angle") for obj in scene["objects"])]  # ink = box
    images = pixels_of(scenes)
    rooms = torch.tensor([scene_room(scene) for scene in scenes])
    squashed = 0
    for seed in range(4):
        kinds = ("flip", "squash", "shift")
        out, flipped, shifts = augment_batch(images, rooms, kinds, torch.Generator().manual_seed(seed))
        for i, scene in enumerate(scenes):
            truth = mirror_scene(scene) if flipped[i] else scene
            white = torch.ones(3)
            x0, y0, x1, y1 = box(ink(out[i], white))
            bx0, by0, bx1, by1 = box(ink(pixels_of([truth])[0], white))
            narrowed = (x1 - x0 < bx1 - bx0 - 1, y1 - y0 < by1 - by0 - 1)
            if not any(narrowed) and not shifts[i].any():
                continue
            if any(narrowed):
                squashed += 1
                assert not shifts[i].any() and not all(narrowed)
                assert (y0, y1) == (by0, by1) if narrowed[0] else (x0, x1) == (bx0, bx1)  # the other axis kept
                mass = lambda image: (image - 1).abs().sum()  # noqa: E731  an antialiased resize keeps the mean
                assert mass(out[i]) < 0.97 * mass(images[i])
            if truth["layout"] == "single":
                assert place_word((x0 + x1) / 2, (y0 + y1) / 2) == truth["objects"][0]["position"]
    assert squashed > 30


def test_letterboxes_keep_every_object_in_the_band_and_single_objects_in_the_bands_third():
    """A letterboxed image is a wide or tall picture as `pad_to_square(..., "contrast")` squares it: a band of the
    render, unscaled, centred between two strips of one colour set apart from the band's border. Every object's ink
    lies in the band at its own size, and a single object's centre is in the third of the band its caption names."""
    scenes = [sample_scene(random.Random(f"b{i}"), style={"background": "white"}) for i in range(48)]
    scenes = [scene for scene in scenes if not any(obj.get("angle") for obj in scene["objects"])]  # ink = box
    images = pixels_of(scenes)
    rooms = torch.tensor([scene_room(scene) for scene in scenes])
    boxed = {"across": 0, "upright": 0}
    for seed in range(8):
        kinds = ("flip", "shift", "letterbox")
        out, flipped, shifts = augment_batch(images, rooms, kinds, torch.Generator().manual_seed(seed))
        for i, scene in enumerate(scenes):
            corner = out[i][:, 0, 0]
            if (corner - images[i][:, 0, 0]).abs().max() < 0.5:  # the ground's colour: not letterboxed
                continue
            padded = (out[i] - corner.view(3, 1, 1)).abs().amax(0) < 0.01  # (H, W): the strips
            rows, cols = padded.all(1), padded.all(0)
            ground = pixels_to_uint8(images[i][:, 0, 0]).tolist()
            assert pixels_to_uint8(corner).tolist() == list(pad_colour([ground], "contrast"))
            assert not shifts[i].any() and not (rows.any() and cols.any())
            truth = mirror_scene(scene) if flipped[i] else scene
            along = rows if rows.any() else cols
            band = (~along).nonzero().flatten()
            start, size = band[0].item(), len(band)
            assert start == (64 - size) // 2 and along[start + size :].all()  # centred, as pad_to_square pads
            assert 0.4 * 64 - 1 <= size <= 0.9 * 64 + 1
            x0, y0, x1, y1 = box(ink(out[i], torch.ones(3)) & ~padded)
            bx0, by0, bx1, by1 = box(ink(pixels_of([truth])[0], torch.ones(3)))
            assert (x1 - x0, y1 - y0) == (bx1 - bx0, by1 - by0)  # unscaled, and no object cut
            boxed["upright" if rows.any() else "across"] += 1
            if truth["layout"] == "single":
                x, y = (x0 + x1) / 2, (y0 + y1) / 2
                x, y = (x, (y - start) * 64 / size) if rows.any() else ((x - start) * 64 / size, y)
                assert place_word(x, y) == truth["objects"][0]["position"]
    assert min(boxed.values()) > 8


def test_letterbox_offsets_hold_the_objects_and_keep_thirds():
    assert letterbox_offsets(10, 50, -1, 40) == (10.0, 10.0)  # the band must hold 10..50
    assert letterbox_offsets(20, 30, -1, 32) == (0.0, 20.0)
    assert letterbox_offsets(-2, 30, -1, 32) == (0.0, 0.0)  # an object the frame cuts: the band starts there too
    assert letterbox_offsets(40, 66, -1, 32) == (32.0, 32.0)
    assert letterbox_offsets(5, 60, -1, 32) is None  # too far apart for the band
    assert letterbox_offsets(float("nan"), 0, 0, 32) is None  # a scene that must not move
    first, last = letterbox_offsets(4, 16, 10, 32)  # a single object at the top stays in the band's top third
    assert place_word(32, (10 - first) * 2) == place_word(32, (10 - last) * 2) == "top"
    first, last = letterbox_offsets(26, 38, 32, 32)  # and one in the centre in the band's centre
    assert place_word((32 - first) * 2, 32) == place_word((32 - last) * 2, 32) == "centre"
    assert first == pytest.approx(32 - 64 / 3 + 0.5) and last == pytest.approx(32 - 32 / 3 - 0.5)


def test_a_letterboxed_render_is_what_the_pipeline_feeds_the_model_for_a_wide_picture():
    """Cutting the band out of a render and padding it as `pad_to_square(..., "contrast")` does gives the image
    letterboxing made."""
    from genvl.training.augment import letterbox_image

    scene = sample_scene(random.Random("wide"), style={"background": "gradient"})
    image = pixels_of([scene])[0]
    framed = letterbox_image(image, vertical=True, size=30, offset=20)
    wide = Image.fromarray(np.asarray(render_scene(scene))[20:50])
    expected = torch.from_numpy(np.asarray(pad_to_square(wide, "contrast"))[:, :]).permute(2, 0, 1) / 127.5 - 1
    assert expected.shape == (3, 64, 64) and torch.allclose(framed, expected.float(), atol=1e-6)


def test_squash_offsets_keep_edges_and_thirds():
    assert squash_offsets(10, 50, -1, 0.5) == (0.0, 32.0)  # room anywhere
    assert squash_offsets(0.5, 50, -1, 0.5) == (0.0, 0.0)  # an object on the left edge stays on it
    assert squash_offsets(10, 63.5, -1, 0.5) == (32.0, 32.0)
    assert squash_offsets(0.5, 63.5, -1, 0.5) is None  # objects on both edges: no squash
    assert squash_offsets(float("nan"), 0, 0, 0.5) is None  # a scene that must not move
    first, last = squash_offsets(40, 60, 50, 0.5)  # a single object in the right third stays there
    assert place_word(0.5 * 50 + first, 32) == place_word(0.5 * 50 + last, 32) == "right"
    assert 64 / 3 * 2 < 0.5 * 50 + first and 0.5 * 60 + last <= 64


def test_squash_image_is_an_antialiased_resize_with_repeated_edges():
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    narrow = F.interpolate(image[None], size=(64, 40), mode="bilinear", antialias=True)[0]
    expected = F.pad(narrow[None], (10, 14, 0, 0), mode="replicate")[0]
    assert torch.allclose(squash_image(image, vertical=False, size=40, offset=10), expected)
    tall = squash_image(image, vertical=True, size=32, offset=0)
    assert torch.equal(tall[:, 32:], tall[:, 31:32].expand(3, 32, 64))


def test_shift_repeats_the_edge_pixels_as_replicate_padding_does():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 64, 64, generator=generator)
    dx, dy = torch.randint(-9, 10, (8,), generator=generator), torch.randint(-9, 10, (8,), generator=generator)
    padded = F.pad(images, (10, 10, 10, 10), mode="replicate")
    crops = [padded[i, :, 10 - dy[i] : 74 - dy[i], 10 - dx[i] : 74 - dx[i]] for i in range(8)]
    assert torch.equal(shift_images(images, dx, dy), torch.stack(crops))


def test_light_changes_are_small_and_stay_in_range():
    scenes = [sample_scene(random.Random(f"l{i}")) for i in range(8)]
    images = pixels_of(scenes)
    out, _, _ = augment_batch(images, None, ("light",), torch.Generator().manual_seed(1))
    assert out.min() >= -1 and out.max() <= 1
    assert 0 < (out - images).abs().mean() < 0.15


def test_jpeg_is_pils_round_trip_on_about_half_the_images():
    scenes = [sample_scene(random.Random(f"j{i}")) for i in range(32)]
    images = pixels_of(scenes)
    out, _, _ = augment_batch(images, None, ("jpeg",), torch.Generator().manual_seed(2))
    again, _, _ = augment_batch(images, None, ("jpeg",), torch.Generator().manual_seed(2))
    assert torch.equal(out, again)  # the seed decides which images and at what quality
    changed = [i for i in range(32) if not torch.equal(out[i], images[i])]
    assert 8 <= len(changed) <= 24
    assert out.min() >= -1 and out.max() <= 1
    for i in changed:
        assert 0 < (out[i] - images[i]).abs().mean() < 0.1  # compressed, still the same picture

    array = np.asarray(render_scene(scenes[0]))
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=40)  # PIL's default: colour at half resolution
    expected = torch.from_numpy(np.asarray(Image.open(buffer)).copy()).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(jpeg_image(images[0], 40, halve_colour=True), expected)
    assert not torch.equal(jpeg_image(images[0], 40, halve_colour=False), expected)
