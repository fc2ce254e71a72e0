"""Darknet's image pipeline: our vectorized resize against a line-by-line port of its C."""

import numpy as np
import pytest

from nets.image import center_crop, letterbox, load_image, resize_image

F = np.float32


def darknet_resize(im, w, h):
    """resize_image from Darknet's image.c, scalar by scalar in float32."""
    c_count, im_h, im_w = im.shape
    part = np.zeros((c_count, im_h, w), F)
    resized = np.zeros((c_count, h, w), F)
    w_scale = F(im_w - 1) / F(w - 1)
    h_scale = F(im_h - 1) / F(h - 1)
    for k in range(c_count):
        for r in range(im_h):
            for c in range(w):
                if c == w - 1 or im_w == 1:
                    val = im[k, r, im_w - 1]
                else:
                    sx = F(c) * w_scale
                    ix = int(sx)
                    dx = sx - F(ix)
                    val = (F(1) - dx) * im[k, r, ix] + dx * im[k, r, ix + 1]
                part[k, r, c] = val
    for k in range(c_count):
        for r in range(h):
            sy = F(r) * h_scale
            iy = int(sy)
            dy = sy - F(iy)
            for c in range(w):
                resized[k, r, c] = (F(1) - dy) * part[k, iy, c]
            if r == h - 1 or im_h == 1:
                continue
            for c in range(w):
                resized[k, r, c] += dy * part[k, iy + 1, c]
    return resized


@pytest.mark.parametrize("size", [(13, 9, 7, 5), (10, 17, 23, 31), (5, 5, 5, 5), (29, 19, 11, 23), (6, 8, 5, 448)])
def test_resize_matches_darknet_exactly(rng, size):
    in_w, in_h, w, h = size
    image = rng.random((3, in_h, in_w), dtype=F)
    assert np.array_equal(resize_image(image, w, h), darknet_resize(image, w, h))


def test_resize_keeps_darknets_dim_last_row(rng):
    # 8 -> 448 rows: sy = 447 * (7/447) rounds to 6.9999995 in float32, and Darknet's last row
    # is then (1 - dy) * row 6, nearly zero, not row 7 (docs/darknet.md, "Images").
    image = rng.random((3, 8, 6), dtype=F) + F(0.5)
    assert resize_image(image, 5, 448)[:, -1].max() < 1e-5


def test_letterbox_keeps_aspect_and_fills_grey(rng):
    image = rng.random((3, 30, 60), dtype=F)
    boxed = letterbox(image, 20, 20)
    assert boxed.shape == (3, 20, 20)
    assert (boxed[:, :5] == 0.5).all() and (boxed[:, 15:] == 0.5).all()
    assert np.array_equal(boxed[:, 5:15], resize_image(image, 20, 10))


def test_center_crop_takes_the_middle_square(rng):
    image = rng.random((3, 10, 16), dtype=F)
    assert np.array_equal(center_crop(image, 4, 4), resize_image(image[:, :, 3:13], 4, 4))


def test_load_image_is_planar_rgb_in_unit_range(tmp_path):
    from PIL import Image

    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    Image.fromarray(pixels).save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.shape == (3, 2, 3) and loaded.dtype == F
    assert np.array_equal(loaded, (pixels.transpose(2, 0, 1) / 255.0).astype(F))


def test_letterbox_of_a_sliver_is_darknets_grey_canvas(rng):
    # 2 x 1000 into 224 x 224: new width (2 * 224) // 1000 = 0; Darknet pastes nothing.
    boxed = letterbox(rng.random((3, 1000, 2), dtype=F), 224, 224)
    assert boxed.shape == (3, 224, 224) and (boxed == 0.5).all()


def test_load_image_keeps_the_high_byte_of_16_bit_grey(tmp_path):
    from PIL import Image

    values = np.array([[0, 255, 256, 65535], [4660, 32768, 511, 1]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    loaded = load_image(tmp_path / "g16.png")
    expected = ((values >> 8).astype(np.uint8) / 255.0).astype(F)
    assert np.array_equal(loaded, np.stack([expected] * 3))


@pytest.mark.parametrize("kind", ["truncated", "text", "empty", "animated", "cmyk", "rgba", "one-pixel"])
def test_load_image_reads_or_refuses_in_one_error(tmp_path, rng, kind):
    from PIL import Image

    from kern.errors import KernError

    pixels = (rng.random((9, 11, 3)) * 255).astype(np.uint8)
    path = tmp_path / "image"
    if kind == "truncated":
        Image.fromarray(pixels).save(path.with_suffix(".png"))
        data = path.with_suffix(".png").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("not an image")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "animated":
        frames = [Image.fromarray(pixels), Image.fromarray(255 - pixels)]
        frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:])
    elif kind == "cmyk":
        Image.fromarray(pixels).convert("CMYK").save(path, format="JPEG")
    elif kind == "rgba":
        Image.fromarray(np.dstack([pixels, pixels[:, :, :1]])).save(path, format="PNG")
    else:
        Image.fromarray(pixels[:1, :1]).save(path, format="PNG")
    if kind in ("truncated", "text", "empty"):
        with pytest.raises(KernError, match="cannot read image"):
            load_image(path)
    else:
        image = load_image(path)
        assert image.shape[0] == 3 and image.dtype == F and 0 <= image.min() <= image.max() <= 1
