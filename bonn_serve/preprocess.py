"""Image preprocessing as a `.bonn` header's `input` spec prescribes (docs/format.md §2).

A raw image is resized so its shorter side is `resize` (bilinear), center-cropped to `crop` x `crop`,
scaled by `scale` and normalised per channel with `mean` / `std`. Accepts PIL images, encoded image bytes
and uint8 arrays (gray HxW, RGB HxWx3, RGBA HxWx4; alpha is dropped).
"""

from __future__ import annotations

import io
from typing import Any, Iterable, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

ImageLike = Union[Image.Image, np.ndarray, bytes, bytearray]
# Above this the whole image is not resized, only the crop's source region: a 4:1 photo at resize 256 is 0.26 MP
MAX_RESIZED_PIXELS = 4 << 20


def to_pil(image: ImageLike, mode: str = "RGB") -> Image.Image:
    """Convert one image to a PIL image in `mode` ("RGB" or "L"), with a clear ValueError for bad input."""
    if isinstance(image, (bytes, bytearray)):
        try:
            img = Image.open(io.BytesIO(bytes(image)))
            img.load()
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise ValueError(f"cannot decode image bytes: {e}") from None
    elif isinstance(image, Image.Image):
        img = image
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8, got {image.dtype}")
        if image.ndim == 2:
            img = Image.fromarray(image, "L")
        elif image.ndim == 3 and image.shape[2] in (1, 3, 4):
            if image.shape[2] == 1:
                img = Image.fromarray(image[:, :, 0], "L")
            else:
                img = Image.fromarray(np.ascontiguousarray(image), "RGB" if image.shape[2] == 3 else "RGBA")
        else:
            raise ValueError(f"image array must be HxW, HxWx3 or HxWx4 uint8, got shape {image.shape}")
    else:
        raise ValueError(f"unsupported image type {type(image).__name__}; use a PIL image, bytes or a uint8 array")
    if img.width < 1 or img.height < 1:
        raise ValueError("image is empty")
    if img.mode != mode:
        img = img.convert(mode)
    return img


def resize_center_crop(img: Image.Image, resize: int, crop: int) -> Image.Image:
    """Shorter side -> `resize` (bilinear), then the central `crop` x `crop` square.

    An extreme aspect ratio would make the resized whole huge (a 1 x 1,000,000 upload becomes 32 x 32,000,000,
    4 GB, on its way to a 32 x 32 input). Past MAX_RESIZED_PIXELS only the crop's source region is resized
    (Pillow's `box`): the same sampling, within 2 grey levels of the full resize (fixed-point rounding)."""
    w, h = img.size
    if w <= h:
        nw, nh = resize, max(1, int(resize * h / w))
    else:
        nw, nh = max(1, int(resize * w / h)), resize
    if crop > min(nw, nh):
        raise ValueError(f"crop {crop} is larger than the resized image {nw}x{nh}")
    left, top = int(round((nw - crop) / 2.0)), int(round((nh - crop) / 2.0))
    if nw * nh > MAX_RESIZED_PIXELS:
        sx, sy = w / nw, h / nh  # source pixels per resized pixel
        box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
        return img.resize((crop, crop), Image.BILINEAR, box=box)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    return img.crop((left, top, left + crop, top + crop))


def preprocess(images: ImageLike | Iterable[ImageLike], spec: dict[str, Any]) -> np.ndarray:
    """One image or a list of images -> float32 [N, channels, crop, crop] network input."""
    if isinstance(images, (Image.Image, np.ndarray, bytes, bytearray)):
        images = [images]
    images = list(images)
    if not images:
        raise ValueError("no images given")
    channels = int(spec["channels"])
    mode = "L" if channels == 1 else "RGB"
    if channels not in (1, 3):
        raise ValueError(f"model input has {channels} channels; only 1 (gray) or 3 (RGB) images are supported")
    scale = float(spec.get("scale", 1.0 / 255.0))
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(channels, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(channels, 1, 1)
    out = np.empty((len(images), channels, spec["crop"], spec["crop"]), dtype=np.float32)
    for i, image in enumerate(images):
        img = resize_center_crop(to_pil(image, mode), int(spec["resize"]), int(spec["crop"]))
        arr = np.asarray(img, dtype=np.float32)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        out[i] = (arr * np.float32(scale) - mean) / std
    return out
