"""Darknet's image pipeline, reproduced in float32 step for step.

Images are planar (C, H, W) float32 RGB in [0, 1]. Not Pillow's resize: Darknet's own
separable bilinear `resize_image` (corners aligned), `letterbox_image` (aspect kept, 0.5 fill)
and `center_crop_image` (the square centre, then resize), so predictions match Darknet's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from kern.errors import KernError

F32 = np.float32
# Darknet divides each 8-bit value by 255. in double, then stores float: one table lookup.
_UNIT_RANGE = (np.arange(256) / 255.0).astype(F32)


def load_image(path: str | Path) -> np.ndarray:
    """8-bit RGB (grey and RGBA converted) -> (3, H, W) float32 in [0, 1], as stb_image + Darknet."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise KernError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise KernError(f"{path}: cannot read image: {error}") from None
    return np.ascontiguousarray(_UNIT_RANGE[pixels].transpose(2, 0, 1))


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
    top, left = (height - new_h) // 2, (width - new_w) // 2
    boxed[:, top : top + new_h, left : left + new_w] = resize_image(image, new_w, new_h)
    return boxed


def center_crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Darknet's center_crop_image: the centred square of side min(w, h), resized."""
    _, in_h, in_w = image.shape
    side = min(in_w, in_h)
    top, left = (in_h - side) // 2, (in_w - side) // 2
    return resize_image(image[:, top : top + side, left : left + side], width, height)


PREPROCESS = {
    "letterbox": letterbox,
    "crop": center_crop,
    "resize": resize_image,
}
