"""Darknet's image pipeline, reproduced in float32 step for step.

Images are planar (C, H, W) float32 RGB in [0, 1]. Not Pillow's resize: Darknet's own
separable bilinear `resize_image` (corners aligned), `letterbox_image` (aspect kept, 0.5 fill)
and `center_crop_image` (the square centre, then resize), so predictions match Darknet's.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from kern.errors import KernError
from nets.files import regular_file_size

F32 = np.float32
# Darknet divides each 8-bit value by 255. in double, then stores float: one table lookup.
_UNIT_RANGE = (np.arange(256) / 255.0).astype(F32)
# Pillow's own warning threshold (a decompression bomb): 0.27 GB as RGB floats, far more than
# any photograph; larger images are refused before decoding.
MAX_PIXELS = 89_478_485


def load_image(path: str | Path) -> np.ndarray:
    """8-bit RGB (grey, palette, RGBA, CMYK, 16-bit converted; an animation's first frame) ->
    (3, H, W) float32 in [0, 1], as stb_image + Darknet (decode_rgb8, then / 255)."""
    return np.ascontiguousarray(_UNIT_RANGE[decode_rgb8(path)].transpose(2, 0, 1))


def decode_rgb8(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (what load_image scales; training caches this).

    Any failure to decode is one KernError: image files come from anywhere, and Pillow's
    plugins raise many kinds of exceptions on corrupt ones. Images over MAX_PIXELS are refused
    before they are decoded, and Pillow's warnings (corrupt EXIF, ...) are not shown."""
    if str(path).startswith(("http://", "https://", "ftp://")):
        raise KernError(f"{path}: kern reads image files and fetches no URLs: download it first")
    if not os.path.lexists(path):
        raise KernError(f"{path}: no such image file")
    regular_file_size(path, "image")  # a directory or a FIFO is not opened
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise KernError(
                        f"{path}: {width} x {height} pixels, more than the {MAX_PIXELS:,} pixels kern decodes"
                    )
                pixels = _rgb8(image)
    except KernError:
        raise
    except Image.DecompressionBombError:
        raise KernError(f"{path}: more than the {MAX_PIXELS:,} pixels kern decodes") from None
    except Exception as error:  # noqa: BLE001 - corrupt files raise anything; MemoryError too
        reason = str(error).splitlines()[0][:100] if str(error) else type(error).__name__
        raise KernError(f"{path}: cannot read image: {reason}") from None
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.size == 0:
        raise KernError(f"{path}: cannot read image: decoded to shape {pixels.shape}")
    return pixels


def _rgb8(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8. 16-bit grey keeps its high byte, as stb_image's 16-to-8 conversion
    (Pillow's own conversion would clip it at 255)."""
    if image.mode.startswith("I;16") or image.mode == "I":
        grey = np.clip(np.asarray(image, dtype=np.int64) >> 8, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def resize_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Darknet's resize_image: bilinear along x, then along y, scale = (in - 1)/(out - 1).

    The last output column takes the last input column. The last output ROW is
    (1 - dy) * row[int(sy)] with sy = (h-1) * scale computed in float32: Darknet skips the
    second term there, so when float rounding makes sy fall just below in_h - 1 that row is
    dimmed (e.g. 576 -> 224 rows). Matched exactly, quirk included.
    """
    _, in_h, in_w = image.shape
    # Along x.
    if in_w == 1 or width == 1:
        part = np.repeat(image[:, :, in_w - 1 : in_w], width, axis=2)
    else:
        w_scale = F32(in_w - 1) / F32(width - 1)
        sx = np.arange(width - 1, dtype=F32) * w_scale
        ix = sx.astype(np.int64)
        dx = sx - ix.astype(F32)
        left, right = image[:, :, ix], image[:, :, np.minimum(ix + 1, in_w - 1)]
        part = np.empty((image.shape[0], in_h, width), dtype=F32)
        part[:, :, :-1] = (F32(1) - dx) * left + dx * right
        part[:, :, -1] = image[:, :, in_w - 1]
    # Along y.
    h_scale = F32(in_h - 1) / F32(height - 1) if height > 1 else F32(0)
    sy = np.arange(height, dtype=F32) * h_scale
    iy = sy.astype(np.int64)
    dy = (sy - iy.astype(F32))[:, None]
    resized = (F32(1) - dy) * part[:, iy, :]
    if in_h > 1:
        below = np.minimum(iy[:-1] + 1, in_h - 1)
        resized[:, :-1, :] += dy[:-1] * part[:, below, :]
    return resized


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Fit inside width x height keeping the aspect ratio, centred on a 0.5 grey canvas."""
    _, in_h, in_w = image.shape
    if F32(width) / F32(in_w) < F32(height) / F32(in_h):
        new_w, new_h = width, (in_h * width) // in_w
    else:
        new_w, new_h = (in_w * height) // in_h, height
    boxed = np.full((image.shape[0], height, width), 0.5, dtype=F32)
    if new_w == 0 or new_h == 0:  # a sliver (2 x 1000 into 224 x 224): Darknet's grey canvas
        return boxed
    top, left = (height - new_h) // 2, (width - new_w) // 2
    boxed[:, top : top + new_h, left : left + new_w] = resize_image(image, new_w, new_h)
    return boxed


def center_crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Darknet's center_crop_image: the centred square of side min(w, h), resized."""
    _, in_h, in_w = image.shape
    side = min(in_w, in_h)
    top, left = (in_h - side) // 2, (in_w - side) // 2
    return resize_image(image[:, top : top + side, left : left + side], width, height)


IMAGENET_MEAN_BGR = (104.0, 117.0, 123.0)  # BVLC's ilsvrc_2012_mean, per channel
CAFFE_RESIZE = 256


def caffe_input(
    image: np.ndarray, width: int, height: int, mean: tuple[float, float, float] = IMAGENET_MEAN_BGR,
    scale: float = 1.0, resize: int = CAFFE_RESIZE,
) -> np.ndarray:
    """An RGB image in [0, 1], (3, H, W) -> Caffe's input (3, height, width): resized to
    resize x resize (bilinear), the centre cropped, BGR, (255 * value - mean[c]) * scale."""
    side_w, side_h = max(resize, width), max(resize, height)
    resized = resize_image(image, side_w, side_h)
    top, left = (side_h - height) // 2, (side_w - width) // 2
    crop = resized[::-1, top : top + height, left : left + width]
    means = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    return ((crop * np.float32(255) - means) * np.float32(scale)).astype(np.float32)


PREPROCESS = {
    "letterbox": letterbox,
    "crop": center_crop,
    "resize": resize_image,
    "caffe": caffe_input,  # Caffe models (docs/caffe.md): BGR, 0-255 minus ImageNet's mean
}


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def images_under(folder: Path) -> list[str]:
    """Image files below a folder, sorted; symlinked folders followed, each real folder once
    (a link back up the tree does not loop)."""
    found, seen = [], set()
    for root, folders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            folders.clear()
            continue
        seen.add(real)
        found += [os.path.join(root, name) for name in files if Path(name).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)
