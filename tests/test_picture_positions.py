"""Picture positions: a grid encoder told where a padded picture lies reads its cells' positions within the
picture, so that a wide picture's thirds are the grid's thirds; the mask that tells it comes from the pipeline's
padding at inference and from the letterbox augmentation in training, and a square picture reads as before."""

import random

import numpy as np
import pytest
import torch
from einops import rearrange
from PIL import Image

from genvl.cache import EmbeddingCache
from genvl.io.images import pad_colour, pad_to_square, picture_mask, pixels_to_uint8
from genvl.models.grid_encoder import GridEncoder, GridEncoderConfig
from genvl.pipelines.caption import CaptionPipeline
from genvl.pipelines.defaults import DEFAULT_CAPTIONER, shipped_pipeline
from genvl.training.augment import augment_batch, scene_room
from genvl.world import render_scene, sample_scene


@pytest.mark.parametrize("width,height", [(128, 64), (160, 90), (90, 160), (64, 64), (301, 17)])
def test_picture_mask_marks_the_pixels_the_picture_covers_once_padded_and_resized(width, height):
    """On a white picture padded with a black fill, the pixels a nearest-neighbour resize takes from the picture
    (each reads the source pixel under its centre) are exactly the mask's."""
    white = Image.new("RGB", (width, height), (255, 255, 255))
    square = pad_to_square(white, "contrast")  # white's contrast fill is 159 grey, never white
    resized = np.asarray(square.resize((64, 64), resample=Image.NEAREST))
    expected = torch.from_numpy((resized == 255).all(-1).astype(np.float32))
    assert torch.equal(picture_mask(width, height, (64, 64)), expected)


def learnt_rows(encoder: GridEncoder) -> torch.Tensor:
    return rearrange(encoder.position[0], "(h w) c -> h w c", h=8)


def test_picture_positions_read_the_learnt_grid_within_the_picture():
    torch.manual_seed(0)
    encoder = GridEncoder(GridEncoderConfig(picture_positions=True)).eval()
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        plain = encoder(pixels).last_hidden_state
        square = encoder(torch.cat([pixels, torch.ones(2, 1, 64, 64)], 1)).last_hidden_state
        assert torch.allclose(plain, square, atol=1e-6)  # a square picture reads the grid as it is
        band = torch.zeros(1, 64, 64)
        band[:, 16:48] = 1  # a 2:1 picture padded to a square: rows 2-5 of the 8 cells
        read = rearrange(encoder.picture_position(band)[0], "(h w) c -> h w c", h=8)
    learnt = learnt_rows(encoder).detach()
    for row in range(4):  # the picture's 4 rows of cells read the 8 learnt rows two by two
        expected = (learnt[2 * row] + learnt[2 * row + 1]) / 2
        assert torch.allclose(read[2 + row], expected, atol=1e-6), row
    assert torch.allclose(read[0], learnt[0], atol=1e-6) and torch.allclose(read[1], learnt[0], atol=1e-6)
    assert torch.allclose(read[7], learnt[7], atol=1e-6)  # beyond the picture: its edge rows
    with pytest.raises(ValueError, match="reads 3 channels \\(4 with the picture mask\\), got 5"):
        encoder(torch.zeros(1, 5, 64, 64))
    with pytest.raises(ValueError, match="reads 3 channels, got 4"):
        GridEncoder(GridEncoderConfig())(torch.zeros(1, 4, 64, 64))


def test_a_captioner_with_picture_positions_tells_a_wide_picture_from_its_padded_square():
    """Padded with the border's colour, a wide picture on a plain ground and the square it pads to are the same
    pixels; only the picture mask tells them apart, through the pipeline and its embedding cache alike."""
    pipe = CaptionPipeline.from_pretrained(shipped_pipeline(DEFAULT_CAPTIONER))
    assert pipe.config.pad_to_square and pipe.config.pad_fill == "border"
    assert pipe.model.encoder.config.picture_positions  # the default captioner reads them
    pipe.model.encoder.config.picture_positions = False
    wide = Image.new("RGB", (128, 64), (250, 250, 250))
    wide.paste((200, 30, 30), (10, 5, 40, 30))  # a red block at the top left
    square = pad_to_square(wide, "border")
    assert pipe.preprocess([wide]).shape == (1, 3, 64, 64)
    assert torch.equal(pipe.preprocess([wide]), pipe.preprocess([square]))  # no picture positions: one image
    before = pipe._encode_rows(list(pipe.preprocess([wide, square])))

    pipe.model.encoder.config.picture_positions = True
    pixels = pipe.preprocess([wide, square])
    assert pixels.shape == (2, 4, 64, 64) and torch.equal(pixels[0, :3], pixels[1, :3])
    assert torch.equal(pixels[0, 3], picture_mask(128, 64, (64, 64))) and bool(pixels[1, 3].all())
    states = pipe._encode_rows(list(pixels))
    assert torch.allclose(states[1], before[1], atol=1e-5)  # a square picture: as without picture positions
    assert not torch.allclose(states[0], states[1], atol=1e-3)
    pipe.set_embedding_cache(EmbeddingCache())
    cached = pipe.cached_encode(pipe.model, list(pixels), pipe._encode_rows, pipe.image_processor.size)
    assert torch.allclose(cached, states, atol=1e-5)
    assert isinstance(pipe([wide], max_new_tokens=8).captions[0][0], str)


def test_letterboxes_with_a_picture_mask_mark_the_band_and_pad_with_the_chosen_fill():
    scenes = [sample_scene(random.Random(f"m{i}"), style={"background": "white"}) for i in range(32)]
    images = torch.from_numpy(np.stack([np.asarray(render_scene(s), dtype=np.float32) for s in scenes]))
    images = images.permute(0, 3, 1, 2) / 127.5 - 1
    rooms = torch.tensor([scene_room(scene) for scene in scenes])
    boxed = 0
    for seed in range(4):
        generator = torch.Generator().manual_seed(seed)
        out, _, _ = augment_batch(images, rooms, ("letterbox",), generator, "border", picture_mask=True)
        plain, _, _ = augment_batch(images, rooms, ("letterbox",), torch.Generator().manual_seed(seed))
        assert out.shape == (32, 4, 64, 64) and plain.shape == (32, 3, 64, 64)
        for i in range(32):
            mask = out[i, 3]
            if bool(mask.all()):
                assert torch.equal(out[i, :3], images[i])  # not letterboxed: the render as it was
                continue
            boxed += 1
            ground = pixels_to_uint8(images[i][:, 0, 0]).tolist()
            strips = pixels_to_uint8(out[i, :3])[:, mask == 0]
            assert (strips == torch.tensor(pad_colour([ground], "border"))[:, None]).all()  # the border's fill
            assert not torch.equal(plain[i], out[i, :3])  # the same band, padded with the contrast fill
            assert torch.equal(plain[i][:, mask == 1], out[i, :3][:, mask == 1])
            rows, cols = mask.any(1), mask.any(0)
            assert bool(rows.all()) != bool(cols.all())  # a band along one axis
            band = (rows if not rows.all() else cols).nonzero().flatten()
            assert band[0] == (64 - len(band)) // 2 and len(band) == band[-1] - band[0] + 1  # centred, unbroken
    assert boxed > 10


def test_an_attention_figure_of_a_padded_picture_shows_the_map_over_the_picture_alone(tmp_path, capsys):
    """The maps of a pipeline that pads pictures cover the padded square: its figure keeps the picture's shape and
    shows the part of each map over the picture. A 3:1 picture covers grid rows 3 and 4 of the square's 8."""
    from genvl.cli import main
    from genvl.pipelines.caption import attention_figure

    def panel_red(figure, words):  # the word panel's red: 0.6 * 255 * the map, on a grey picture
        pixels = np.asarray(figure).astype(int)
        width = pixels.shape[1] // (1 + len(words))
        panel = pixels[:-16, width:]
        return panel[..., 0] - panel[..., 1]

    picture = Image.new("RGB", (192, 64), (120, 120, 120))
    padding = torch.zeros(8, 8)
    padding[0] = 1.0  # hot above the picture only
    assert np.asarray(attention_figure(picture, [("apple", padding)], padded=True)).shape == (42 + 16, 256, 3)
    assert panel_red(attention_figure(picture, [("apple", padding)], padded=True), ["apple"]).max() <= 1
    assert panel_red(attention_figure(picture, [("apple", padding)]), ["apple"]).max() > 100  # squashed: drawn
    corner = torch.zeros(8, 8)
    corner[3, 0] = 1.0  # the picture's top left cell
    red = panel_red(attention_figure(picture, [("apple", corner)], padded=True), ["apple"])
    rows, columns = np.nonzero(red > 0.5 * red.max())
    assert rows.max() < 21 and columns.max() < 43  # its top half and left third
    thin = attention_figure(Image.new("RGB", (1000, 3)), [("apple", corner)], padded=True)  # no pixel centre
    assert thin.size == (2 * 128, 1 + 16)

    image = tmp_path / "wide.png"
    picture.save(image)
    assert main(["caption", str(image), "--attention-map", str(tmp_path / "map.png"), "--quiet"]) == 0
    capsys.readouterr()
    assert Image.open(tmp_path / "map.png").size[1] == 42 + 16  # the default captioner pads
