"""Darknet's classifier augmentation (`classifier train`): every training image is cropped at a
random scale, aspect, angle and offset, mirrored on a coin flip, and its hue, saturation and
exposure jittered, each draw fresh per image.

The draws (kern's seeded generator; Darknet's glibc rand()), per image, from the [net]
options min_crop, max_crop, aspect, angle, hue, saturation, exposure:
- aspect a: u in [1, aspect], then u or 1/u on a coin flip (Darknet's rand_scale);
- short side r, an integer in [min_crop, max_crop]; scale s = r / min(h, w * a) (that min an
  integer, as C's int);
- angle: uniform in [-angle, angle] degrees; offsets dx, dy uniform within half the slack,
  (w s / a - width) / 2 and (h s - height) / 2;
- the crop: output pixel (x, y) reads the image bilinearly at
  R(angle) * ((x - width/2 + dx) a / s, (y - height/2 + dy) / s) + the image's centre, zero
  outside it (Darknet's rotate_crop_image);
- flip on a coin; hue shift uniform in [-hue, hue], saturation and exposure factors drawn as
  the aspect is; in HSV: h + shift (wrapped), s * saturation, v * exposure; back to RGB,
  clamped to [0, 1] (Darknet's random_distort_image).
Darknet takes the y slack from the width too (a bug for non-square networks): kern uses the
height. With `center=1` Darknet takes the centre crop instead of the random one.

The kernel runs without the GIL, so the loader thread (nets/loader.py) overlaps the kernels of
the batch being trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from nets.cfg import Section
from nets.image import center_crop

F32 = np.float32


@dataclass(frozen=True)
class Augmentation:
    """The [net] options of `classifier train`'s augmentation."""

    width: int
    height: int
    min_crop: int
    max_crop: int
    angle: float = 0.0
    aspect: float = 1.0
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    center: bool = False

    def draws(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """Per image: aspect, short side, angle (radians), x and y offsets in [-1, 1] of the
        slack, flip, hue shift, saturation, exposure: (count, 9) float64."""
        aspect = _rand_scale(rng, self.aspect, count)
        side = rng.integers(min(self.min_crop, self.max_crop), max(self.min_crop, self.max_crop) + 1, count)
        angle = rng.uniform(-self.angle, self.angle, count) * (2 * math.pi / 360)
        offsets = rng.uniform(-1.0, 1.0, (count, 2))
        flip = rng.integers(0, 2, count)
        hue = rng.uniform(-self.hue, self.hue, count)
        saturation = _rand_scale(rng, self.saturation, count)
        exposure = _rand_scale(rng, self.exposure, count)
        return np.column_stack([aspect, side, angle, offsets, flip, hue, saturation, exposure])

    def apply(self, image: np.ndarray, draw: np.ndarray, out: np.ndarray) -> None:
        """One image, (H, W, 3) uint8, into out (3, height, width) float32, with its draws."""
        aspect, side, angle, ox, oy, flip, hue, saturation, exposure = draw
        if self.center:
            out[...] = center_crop(image.transpose(2, 0, 1) / F32(255), self.width, self.height)
            _flip_distort(out, bool(flip), hue, saturation, exposure)
            return
        augment_drawn(image, draw, out)

    def apply_many(self, images: list[np.ndarray], draws: np.ndarray, out: np.ndarray) -> None:
        """apply to each image and its draws, into out (len(images), 3, height, width): the
        same values, the images in parallel on Numba's threads (the caller's)."""
        if self.center or not images:
            for image, draw, target in zip(images, draws, out):
                self.apply(image, draw, target)
            return
        shapes = np.array([image.shape[:2] for image in images], dtype=np.int64)
        sizes = np.array([image.size for image in images])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        pixels = np.concatenate([image.reshape(-1) for image in images])
        augment_many(pixels, starts, shapes, np.ascontiguousarray(draws, dtype=np.float64), out)


def _rand_scale(rng: np.random.Generator, s: float, count: int) -> np.ndarray:
    """Darknet's rand_scale: u uniform between 1 and s, then u or 1/u on a coin flip."""
    u = rng.uniform(min(1.0, s), max(1.0, s), count)
    return np.where(rng.integers(0, 2, count) == 1, u, 1.0 / u)


def read_augmentation(net: Section, width: int, height: int) -> Augmentation:
    """The augmentation options of a [net] section, with Darknet's defaults (max_crop twice
    the width, min_crop the width; ratios in float32 as Darknet computes them)."""
    max_crop = net.integer("max_crop", width * 2)
    min_crop = net.integer("min_crop", width)
    max_ratio = net.number("max_ratio", float(F32(max_crop) / F32(width)))
    min_ratio = net.number("min_ratio", float(F32(min_crop) / F32(width)))
    low, high = int(F32(min_ratio) * F32(width)), int(F32(max_ratio) * F32(width))  # args.min, args.max
    if low < 1 or high < 1:
        raise net.error(f"min_crop and max_crop give a crop of {low}..{high} pixels: expected positive sizes")
    return Augmentation(
        width, height, low, high,
        angle=net.number("angle", 0.0), aspect=net.number("aspect", 1.0), hue=net.number("hue", 0.0),
        saturation=net.number("saturation", 1.0), exposure=net.number("exposure", 1.0),
        center=bool(net.integer("center", 0)),
    )


@njit(nogil=True, cache=True)
def augment(image, angle, scale, aspect, dx, dy, flip, hue, saturation, exposure, out):
    """Darknet's rotate_crop_image of the uint8 image (H, W, 3), then flip and distortion,
    into out (3, height, width)."""
    in_h, in_w, _ = image.shape
    _, height, width = out.shape
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    cx, cy = in_w / 2.0, in_h / 2.0
    # u depends on x only and v on y only: each worked out once (the same expressions, the
    # same values), not per pixel (four divisions each).
    us = np.empty(width)
    for x in range(width):
        us[x] = (x - width / 2.0) / scale * aspect + dx / scale * aspect
    # A byte's value / 255 (Darknet's), divided once per byte value rather than 12 times per
    # output pixel; interior pixels read without bounds checks. The same values: 2.2 -> 1.4 ms
    # per 128 CIFAR crops (AMD EPYC Zen 4).
    values = np.empty(256, dtype=np.float32)
    for b in range(256):
        values[b] = np.float32(b / 255.0)
    one = np.float32(1)
    for y in range(height):
        v = (y - height / 2.0) / scale + dy / scale
        for x in range(width):
            u = us[x]
            rx = np.float32(cos_a * u - sin_a * v + cx)
            ry = np.float32(sin_a * u + cos_a * v + cy)
            ix, iy = int(math.floor(rx)), int(math.floor(ry))
            fx, fy = rx - np.float32(ix), ry - np.float32(iy)
            w00, w01, w10, w11 = (one - fy) * (one - fx), fy * (one - fx), (one - fy) * fx, fy * fx
            if 0 <= ix and ix + 1 < in_w and 0 <= iy and iy + 1 < in_h:
                for c in range(3):
                    out[c, y, x] = (
                        w00 * values[image[iy, ix, c]] + w01 * values[image[iy + 1, ix, c]]
                        + w10 * values[image[iy, ix + 1, c]] + w11 * values[image[iy + 1, ix + 1, c]]
                    )
            else:  # an edge: the pixels outside the image are zeros
                for c in range(3):
                    out[c, y, x] = (
                        w00 * _pixel(image, values, ix, iy, c)
                        + w01 * _pixel(image, values, ix, iy + 1, c)
                        + w10 * _pixel(image, values, ix + 1, iy, c)
                        + w11 * _pixel(image, values, ix + 1, iy + 1, c)
                    )
    _flip_distort(out, flip, hue, saturation, exposure)


@njit(nogil=True, cache=True)
def augment_drawn(image, draw, out):
    """augment with one image's draws (Augmentation.draws' row): the crop's scale and offsets
    from them and the image's size, in C's int and float32 where Darknet has them."""
    in_h, in_w, _ = image.shape
    _, height, width = out.shape
    aspect, side, angle, ox, oy, flip, hue, saturation, exposure = (
        draw[0], draw[1], draw[2], draw[3], draw[4], draw[5], draw[6], draw[7], draw[8]
    )
    shorter = int(min(float(in_h), in_w * aspect))
    scale = np.float64(np.float32(side) / np.float32(max(shorter, 1)))
    dx = ox * abs(in_w * scale / aspect - width) / 2
    dy = oy * abs(in_h * scale - height) / 2
    augment(image, angle, scale, aspect, dx, dy, flip != 0, hue, saturation, exposure, out)


@njit(parallel=True, cache=True)
def augment_many(pixels, starts, shapes, draws, out):
    """augment_drawn for each image i, (shapes[i], 3) uint8 at pixels[starts[i]:], with
    draws[i], into out[i]: one image a job."""
    for i in prange(out.shape[0]):
        height, width = shapes[i, 0], shapes[i, 1]
        image = pixels[starts[i] : starts[i] + height * width * 3].reshape((height, width, 3))
        augment_drawn(image, draws[i], out[i])


@njit(inline="always", cache=True)
def _pixel(image, values, x, y, c):
    """The pixel as a float in [0, 1] (the value / 255, as Darknet), zero outside the image."""
    if x < 0 or y < 0 or x >= image.shape[1] or y >= image.shape[0]:
        return np.float32(0)
    return values[image[y, x, c]]


@njit(nogil=True, cache=True)
def _flip_distort(out, flip, hue, saturation, exposure):
    """Mirror left-right where `flip`, then shift the hue and scale saturation and value."""
    _, height, width = out.shape
    if flip:
        for c in range(3):
            for y in range(height):
                row = out[c, y]
                for x in range(width // 2):
                    row[x], row[width - 1 - x] = row[width - 1 - x], row[x]
    for y in range(height):
        for x in range(width):
            h, s, v = _hsv(out[0, y, x], out[1, y, x], out[2, y, x])
            s, v = s * np.float32(saturation), v * np.float32(exposure)
            h = h + np.float32(hue)
            if h > 1:
                h -= 1
            if h < 0:
                h += 1
            r, g, b = _rgb(h, s, v)
            out[0, y, x] = min(max(r, np.float32(0)), np.float32(1))
            out[1, y, x] = min(max(g, np.float32(0)), np.float32(1))
            out[2, y, x] = min(max(b, np.float32(0)), np.float32(1))


@njit(inline="always", cache=True)
def _hsv(r, g, b):
    """Darknet's rgb_to_hsv (a grey pixel gets hue 0, where its C divides 0 by 0)."""
    top, bottom = max(r, g, b), min(r, g, b)
    delta = top - bottom
    if top == 0 or delta == 0:
        return np.float32(0), np.float32(0) if top == 0 else delta / top, top
    if r == top:
        h = (g - b) / delta
    elif g == top:
        h = 2 + (b - r) / delta
    else:
        h = 4 + (r - g) / delta
    if h < 0:
        h += 6
    return np.float32(h / 6), delta / top, top


@njit(inline="always", cache=True)
def _rgb(h, s, v):
    """Darknet's hsv_to_rgb."""
    if s == 0:
        return v, v, v
    h6 = 6 * h
    index = int(math.floor(h6))
    f = h6 - index
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    if index == 0:
        return v, t, p
    if index == 1:
        return q, v, p
    if index == 2:
        return p, v, t
    if index == 3:
        return p, q, v
    if index == 4:
        return t, p, v
    return v, p, q
